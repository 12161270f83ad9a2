//! The unit that flows through the pipeline, whatever its source: one event, still in the
//! bytes it arrived in, with where it goes ([`StreamTarget`]), how it is ordered (its ordering
//! key), how it is deduplicated ([`IdempotencyKey`]), and optionally who wants to hear what
//! became of it ([`AckToken`]).

use std::sync::Arc;

use bytes::Bytes;

use crate::ack::AckToken;

/// Which source an event came from (the `source` label of metrics and `/health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Esl,
    Http,
    Outbox,
}

impl Source {
    pub const ALL: [Source; 3] = [Source::Esl, Source::Http, Source::Outbox];

    pub fn label(self) -> &'static str {
        match self {
            Source::Esl => "esl",
            Source::Http => "http",
            Source::Outbox => "outbox",
        }
    }

    /// Whether the source keeps each event until it is written (an outbox row stays in its
    /// table): the pipeline never spools such an event; where it would, it hands it back
    /// ([`crate::ack::AckStatus::Deferred`]).
    pub(crate) fn keeps_its_events(self) -> bool {
        self == Source::Outbox
    }

    /// The byte that stands for the source in spool records.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_code(code: u8) -> Option<Source> {
        Source::ALL.get(code as usize).copied()
    }
}

/// How the body turns into the entry's `event` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// An ESL `text/event-plain` body: headers percent-decoded into a JSON object.
    EslPlain,
    /// An ESL `text/event-json` body: re-written as the contract's JSON object.
    EslJson,
    /// A JSON document that is already the `event` field, compact (HTTP, outbox).
    Json,
}

impl BodyFormat {
    pub fn code(self) -> u8 {
        match self {
            BodyFormat::EslPlain => 0,
            BodyFormat::EslJson => 1,
            BodyFormat::Json => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<BodyFormat> {
        [BodyFormat::EslPlain, BodyFormat::EslJson, BodyFormat::Json].get(code as usize).copied()
    }
}

/// A stream an event is written to: its key, its `MAXLEN ~` cap (0 for none), and a short
/// bounded name for metric labels (`events`, `jobs`, `http`, `outbox`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTarget {
    pub key: String,
    pub max_len: u64,
    pub label: &'static str,
}

impl StreamTarget {
    pub fn new(key: impl Into<String>, max_len: u64, label: &'static str) -> Arc<StreamTarget> {
        Arc::new(StreamTarget { key: key.into(), max_len, label })
    }

    /// The label for a name read back from disk: one of the known ones, else `other` (labels
    /// must stay a bounded set).
    pub(crate) fn known_label(name: &str) -> &'static str {
        ["events", "jobs", "http", "outbox"].into_iter().find(|l| *l == name).unwrap_or("other")
    }
}

/// The id half of an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventId {
    /// A number (ESL `Event-Sequence`, an outbox row id): deduplicated with bitmaps.
    Seq(u64),
    /// A string (an HTTP `Idempotency-Key` or event id): deduplicated with a keyed set.
    Key(String),
}

impl EventId {
    /// The id as the entry's `event_sequence` field shows it.
    pub(crate) fn write_text(&self, out: &mut Vec<u8>) {
        match self {
            EventId::Seq(n) => out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes()),
            EventId::Key(s) => out.extend_from_slice(s.as_bytes()),
        }
    }

    /// The number, for a numeric id.
    pub fn seq(&self) -> Option<u64> {
        match self {
            EventId::Seq(n) => Some(*n),
            EventId::Key(_) => None,
        }
    }

    pub fn text(&self) -> String {
        match self {
            EventId::Seq(n) => n.to_string(),
            EventId::Key(s) => s.clone(),
        }
    }
}

/// A short text of an event (its name, its ordering key, its producer), held in place up to 40
/// bytes: the switch's names and UUIDs (36 bytes) fit, so the ESL reader allocates nothing for
/// them and the writers, on other threads, free nothing. (Before, these were heap strings: a
/// block freed on another thread is a cache miss when the reader takes it again, and that one
/// load was 8% of the agent's CPU at saturation.) Longer texts go to the heap.
pub type Text = smallstr::SmallString<[u8; 40]>;

/// `(producer, id)`: an event with the same key as one already written is not written again.
/// For ESL the producer is the switch's `Core-UUID` and the id its `Event-Sequence`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    pub producer: Text,
    pub id: EventId,
}

/// One event on its way to a stream.
#[derive(Debug)]
pub struct Envelope {
    pub source: Source,
    pub stream: Arc<StreamTarget>,
    pub format: BodyFormat,
    /// The event exactly as received (an ESL frame's payload, a JSON document).
    pub body: Bytes,
    /// The entry's `event_name` field.
    pub name: Text,
    /// Events sharing an ordering key keep their order (`Unique-ID`/`Job-UUID` for ESL); the
    /// entry's `unique_id` field.
    pub ordering_key: Text,
    pub key: IdempotencyKey,
    /// When the event happened, microseconds since the epoch, when the source knows.
    pub timestamp_us: Option<i64>,
    /// Wall-clock microseconds since the epoch when the source took it in.
    pub parsed_at_us: i64,
    /// Where this event sits in its lane's spool, when it was read back from there (the
    /// spool's read cursor may pass it once Redis has acknowledged it).
    pub spool_pos: Option<SpoolPos>,
    /// It may already be in Redis (an attempt failed ambiguously, it was replayed from the
    /// spool after a restart, or its producer may have sent it before): it must be written
    /// through the checking path.
    pub maybe_written: bool,
    /// Who is waiting to hear what became of this event (an HTTP request, an outbox batch).
    pub ack: Option<AckToken>,
}

impl Envelope {
    /// An event of `source` for `stream`, taken in now; name, ordering key and timestamp are
    /// empty until the source sets them.
    pub fn new(
        source: Source,
        stream: Arc<StreamTarget>,
        format: BodyFormat,
        body: Bytes,
        key: IdempotencyKey,
    ) -> Envelope {
        Envelope {
            source,
            stream,
            format,
            body,
            name: Text::new(),
            ordering_key: Text::new(),
            key,
            timestamp_us: None,
            parsed_at_us: now_us(),
            spool_pos: None,
            maybe_written: false,
            ack: None,
        }
    }
}

/// A position in a lane's spool: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct SpoolPos {
    pub segment: u64,
    pub offset: u64,
}

pub use crate::telemetry::clock::now_us;
