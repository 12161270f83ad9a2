//! The FreeSWITCH event socket source: the inbound client ([`client`]), which stream each
//! event goes to ([`routes`]), how long it may hold the socket ([`lag`]), and the hot-standby
//! pair it may be one half of ([`pair`]). The format itself (framing, decoding, encoding) is
//! [`crate::esl`]'s, shared with the writer and the simulator.

pub mod client;
pub mod lag;
pub mod pair;
pub mod routes;
