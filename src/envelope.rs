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
    /// It may already be in Redis (an attempt failed ambiguously, or it was replayed from the
    /// spool after a restart): it must be written through the checking path.
    pub maybe_written: bool,
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

/// Gives events that arrive without `(Core-UUID, Event-Sequence)` an idempotency key of the
/// agent's own: a producer name unique to this process and a counter. The key is assigned
/// before the event enters the pipeline, so every retry (and the spool) carries the same one.
pub struct KeyAssigner {
    producer: String,
    next: std::sync::atomic::AtomicU64,
}

impl Default for KeyAssigner {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyAssigner {
    pub fn new() -> KeyAssigner {
        KeyAssigner {
            producer: format!("eslstream-{}-{:x}", std::process::id(), now_us()),
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// Fills in a key when the event has none (or an `Event-Sequence` that is not a decimal
    /// number, which the dedup bitmaps cannot index); returns whether it did.
    pub fn fill(&self, meta: &mut EventMeta) -> bool {
        if !meta.core_uuid.is_empty() && meta.sequence.parse::<u64>().is_ok() {
            return false;
        }
        meta.core_uuid = self.producer.clone();
        meta.sequence = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_string();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kept_or_assigned_uniquely() {
        let keys = KeyAssigner::new();
        let mut with = EventMeta { core_uuid: "c".into(), sequence: "5".into(), ..Default::default() };
        assert!(!keys.fill(&mut with));
        assert_eq!((with.core_uuid.as_str(), with.sequence.as_str()), ("c", "5"));
        let (mut a, mut b) = (EventMeta::default(), EventMeta { core_uuid: "c".into(), ..Default::default() });
        assert!(keys.fill(&mut a) && keys.fill(&mut b));
        assert_eq!(a.core_uuid, b.core_uuid);
        assert_ne!(a.sequence, b.sequence);
        let mut odd = EventMeta { core_uuid: "c".into(), sequence: "12a".into(), ..Default::default() };
        assert!(keys.fill(&mut odd), "a sequence that is not a number is replaced");
        assert_ne!(odd.core_uuid, "c");
    }
}
