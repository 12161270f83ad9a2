//! The event socket's format, shared by every side that speaks it: the reader
//! ([`crate::source::esl`]) frames and scans what the switch sends, the writer
//! ([`crate::sink`]) turns events into their entry's JSON, and the simulator and the tests
//! encode events as FreeSWITCH does. Neither side imports the other: both import this.
//!
//! - [`frame`]: one message off the socket (headers, `Content-Length` body), bounded;
//! - [`event`]: an event's headers in either format (plain, JSON), decoded or only scanned for
//!   the fields the agent routes on;
//! - [`json`]: an event as the JSON of a stream entry's `event` field (the writer's hot path);
//! - [`json_scan`]: the switch's own JSON checked in one pass, so that it can be written as it
//!   came (the reader's hot path in `ESL_EVENT_FORMAT=json`);
//! - [`encode`]: events and replies as FreeSWITCH writes them (`switch_url_encode` for plain).

pub mod encode;
pub mod event;
pub mod frame;
pub mod json;
pub mod json_scan;
mod names;

#[cfg(test)]
mod props;
