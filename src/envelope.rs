//! The unit that flows through the pipeline: one event, still in the bytes it arrived in,
//! plus the few fields needed to route, deduplicate and time it.

use bytes::Bytes;

use crate::esl::event::EventFormat;

/// Which stream an event is written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// `STREAM_EVENTS` (events named in `EVENTS_TO_PUSH`).
    Events,
    /// `STREAM_JOBS` (events named in `EVENTS_TO_PUBLISH`).
    Jobs,
}

/// The fields of an event the pipeline needs without decoding the whole body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventMeta {
    /// `Event-Name`, percent-decoded (`CUSTOM` for custom events).
    pub name: String,
    /// `Event-Subclass` for CUSTOM events, else empty.
    pub subclass: String,
    /// `Unique-ID`, else `Job-UUID`, else empty: the per-call ordering key.
    pub unique_id: String,
    /// `Core-UUID` of the FreeSWITCH process.
    pub core_uuid: String,
    /// `Event-Sequence` as sent (decimal digits), empty when absent.
    pub sequence: String,
    /// `Event-Date-Timestamp`: microseconds since the Unix epoch, when present.
    pub timestamp_us: Option<i64>,
    /// `Event-Calling-Function` (decides whether a BACKGROUND_JOB is a job).
    pub calling_function: String,
}

/// One event on its way to a stream.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub stream: StreamKind,
    pub format: EventFormat,
    /// The event body exactly as received (the payload of a `text/event-*` frame).
    pub body: Bytes,
    pub meta: EventMeta,
    /// Wall-clock microseconds since the epoch when the frame was parsed.
    pub parsed_at_us: i64,
    /// Where this event sits in its lane's spool, when it was read back from there (the
    /// spool's read cursor may pass it once Redis has acknowledged it).
    pub spool_pos: Option<SpoolPos>,
}

/// A position in a lane's spool: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct SpoolPos {
    pub segment: u64,
    pub offset: u64,
}

/// Microseconds since the Unix epoch, by the wall clock.
pub fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}
