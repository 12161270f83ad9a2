//! The event socket's format, shared by every side that speaks it: the reader
//! ([`crate::source::esl`]) frames and scans what the switch sends, the writer
//! ([`crate::sink`]) turns events into their entry's JSON, and the simulator and the tests
//! encode events as FreeSWITCH does. Neither side imports the other: both import this.
//!
//! - [`frame`]: one message off the socket (headers, `Content-Length` body), bounded;
//! - [`event`]: an event's headers in either format (plain, JSON), decoded or only scanned for
//!   the fields the agent routes on;
//! - [`json`]: an event as the JSON of a stream entry's `event` field (the writer's hot path);
//! - [`encode`]: events and replies as FreeSWITCH writes them (`switch_url_encode` for plain).

pub mod encode;
pub mod event;
pub mod frame;
pub mod json;

#[cfg(test)]
mod props;
