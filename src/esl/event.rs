//! Decoding of `text/event-plain` and `text/event-json` bodies into headers and body.

/// The wire format of an event body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFormat {
    Plain,
    Json,
}
