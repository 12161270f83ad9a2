//! The FreeSWITCH event socket: framing ([`frame`]), event decoding ([`event`]), encoding for
//! the simulator and tests ([`encode`]), and the inbound client ([`client`]).

pub mod client;
pub mod encode;
pub mod event;
pub mod frame;
