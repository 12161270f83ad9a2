//! The FreeSWITCH event socket source: the inbound client ([`client`]), which stream each
//! event goes to ([`routes`]) and how long it may hold the socket ([`lag`]); a hot-standby
//! pair's gate may stand in front of its intake ([`crate::ha`]). The format itself (framing, decoding, encoding) is
//! [`crate::esl`]'s, shared with the writer and the simulator.

pub(crate) mod client;
pub(crate) mod lag;
pub(crate) mod routes;
