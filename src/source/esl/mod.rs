//! The FreeSWITCH event socket source: framing ([`frame`]), event decoding ([`event`]),
//! encoding for the simulator and tests ([`encode`]), which stream each event goes to
//! ([`routes`]), the inbound client ([`client`]), how long it may hold the socket
//! ([`lag`]), and the hot-standby pair it may be one half of ([`pair`]).

pub mod client;
pub mod encode;
pub mod event;
pub mod frame;
pub mod lag;
pub mod pair;
pub mod routes;
