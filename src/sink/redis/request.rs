//! One entry ready to be written, its `XADD` (the event's JSON made straight into the
//! request), and where its idempotency key is recorded ([`DedupMark`], [`DedupGroups`]).

use std::borrow::Borrow;

use crate::config::EntryFormat;
use crate::envelope::{EventId, IdempotencyKey};
use crate::esl::event::EventError;
use crate::sink::entry::EventField;
use crate::sink::resp::Resp;

use super::keys::{dedup_key, dedup_keys_key, DEDUP_GENERATION_BITS};
use super::WriteError;

/// One entry ready to be written.
#[derive(Debug, Clone)]
pub struct Entry {
    pub stream_key: String,
    /// `MAXLEN ~` cap, 0 for none.
    pub max_len: u64,
    /// The idempotency key: its producer ...
    pub producer: String,
    /// ... and its id within the producer.
    pub id: EventId,
    /// The first field's value (`event`).
    pub event: EventField,
    /// The index fields after it, in order (none in the reference format).
    pub index: Vec<(&'static str, Vec<u8>)>,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            stream_key: String::new(),
            max_len: 0,
            producer: String::new(),
            id: EventId::Seq(0),
            event: EventField::Json(Vec::new()),
            index: Vec::new(),
        }
    }
}

/// An entry's event could not be turned into its JSON: it can never be written.
#[derive(Debug)]
pub(super) struct Undecodable {
    /// The entry's place in the batch being encoded.
    pub(super) index: usize,
    pub(super) error: EventError,
}

/// Why encoding or sending one request failed.
pub(super) enum Failure {
    Write(WriteError),
    Undecodable(Undecodable),
}

impl From<WriteError> for Failure {
    fn from(e: WriteError) -> Failure {
        Failure::Write(e)
    }
}

impl From<Undecodable> for Failure {
    fn from(u: Undecodable) -> Failure {
        Failure::Undecodable(u)
    }
}

impl Entry {
    /// An entry for an event (see [`Entry::refill`]).
    pub fn new(
        format: EntryFormat,
        stream: (&str, u64),
        name: &str,
        ordering_key: &str,
        key: &IdempotencyKey,
        event: impl Into<EventField>,
    ) -> Entry {
        let mut entry = Entry::default();
        entry.refill(format, stream, name, ordering_key, key, event.into());
        entry
    }

    /// Makes this (used) entry the one for a new event, reusing its buffers: the contract's
    /// fields, `event` then the index fields (`event_name`, `unique_id` = the ordering key,
    /// `core_uuid` = the producer, `event_sequence` = the id), or `event` alone.
    pub(crate) fn refill(
        &mut self,
        format: EntryFormat,
        stream: (&str, u64),
        name: &str,
        ordering_key: &str,
        key: &IdempotencyKey,
        event: EventField,
    ) {
        self.stream_key.clear();
        self.stream_key.push_str(stream.0);
        self.max_len = stream.1;
        self.producer.clear();
        self.producer.push_str(&key.producer);
        self.id.clone_from(&key.id);
        self.event = event;
        let index: &[&'static str] = match format {
            EntryFormat::Full => &["event_name", "unique_id", "core_uuid", "event_sequence"],
            EntryFormat::Reference => &[],
        };
        self.index.truncate(index.len());
        for (i, field) in index.iter().enumerate() {
            if self.index.len() <= i {
                self.index.push((field, Vec::new()));
            }
            let slot = &mut self.index[i];
            slot.0 = field;
            slot.1.clear();
            match i {
                0 => slot.1.extend_from_slice(name.as_bytes()),
                1 => slot.1.extend_from_slice(ordering_key.as_bytes()),
                2 => slot.1.extend_from_slice(key.producer.as_bytes()),
                _ => key.id.write_text(&mut slot.1),
            }
        }
    }

    /// The entry's fields as written, the event's JSON made on the way.
    pub fn fields(&self) -> Result<Vec<(&'static str, Vec<u8>)>, EventError> {
        let mut fields = vec![("event", self.event.to_json()?)];
        fields.extend(self.index.iter().cloned());
        Ok(fields)
    }

    /// Whether deduplicating this entry needs the checking path (a string id).
    pub(super) fn has_string_id(&self) -> bool {
        matches!(self.id, EventId::Key(_))
    }
}

/// Where an entry's idempotency key is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DedupMark {
    /// This bit of the bitmap of that generation (numeric ids).
    Bit { generation: u64, bit: u64 },
    /// A member of the producer's keyed set (string ids; the member is the id).
    Member,
}

impl Entry {
    pub(super) fn dedup_mark(&self) -> DedupMark {
        match &self.id {
            EventId::Seq(n) => {
                DedupMark::Bit { generation: n >> DEDUP_GENERATION_BITS, bit: n & ((1 << DEDUP_GENERATION_BITS) - 1) }
            }
            EventId::Key(_) => DedupMark::Member,
        }
    }

    /// The Redis key that records this entry's idempotency key.
    pub(super) fn dedup_key(&self) -> String {
        match self.dedup_mark() {
            DedupMark::Bit { generation, .. } => dedup_key(&self.stream_key, &self.producer, generation),
            DedupMark::Member => dedup_keys_key(&self.stream_key, &self.producer),
        }
    }

    /// This entry's `XADD` command, its event's JSON written straight into the request.
    pub fn encode_xadd(&self, resp: &mut Resp) -> Result<(), EventError> {
        resp.command(1 + self.xadd_arg_count()).arg(b"XADD");
        self.encode_xadd_args(resp)
    }

    /// Arguments of this entry's `XADD` after the command name: key, `MAXLEN ~ n` when capped,
    /// `*`, fields. On error (the event cannot be decoded) the request is left unfinished:
    /// the caller encodes it again without the entry.
    pub(super) fn encode_xadd_args(&self, resp: &mut Resp) -> Result<(), EventError> {
        resp.arg(self.stream_key.as_bytes());
        if self.max_len > 0 {
            resp.arg(b"MAXLEN").arg(b"~").int(self.max_len as i64);
        }
        resp.arg(b"*");
        self.encode_fields(resp)
    }

    /// The field/value pairs, `event` first.
    pub(super) fn encode_fields(&self, resp: &mut Resp) -> Result<(), EventError> {
        resp.arg(b"event");
        resp.arg_with(self.event.size_hint(), |out| self.event.write_json(out))?;
        for (name, value) in &self.index {
            resp.arg(name.as_bytes()).arg(value);
        }
        Ok(())
    }

    pub(super) fn xadd_arg_count(&self) -> usize {
        2 + if self.max_len > 0 { 3 } else { 0 } + (1 + self.index.len()) * 2
    }
}

/// The distinct dedup keys of a batch (bitmaps and keyed sets), and which one each entry
/// uses.
pub(super) struct DedupGroups {
    /// `(key, index of its first entry, its mark)` of each dedup key.
    pub(super) keys: Vec<(String, usize, DedupMark)>,
    /// Per entry: index into `keys`.
    pub(super) of_entry: Vec<usize>,
}

impl DedupGroups {
    pub(super) fn new<E: Borrow<Entry>>(entries: &[E]) -> DedupGroups {
        let mut keys: Vec<(String, usize, DedupMark)> = Vec::new();
        let of_entry = entries
            .iter()
            .map(Borrow::borrow)
            .enumerate()
            .map(|(i, e)| {
                let mark = e.dedup_mark();
                let same_key = |(_, j, m): &(String, usize, DedupMark)| {
                    let other: &Entry = entries[*j].borrow();
                    let same_generation = match (m, mark) {
                        (DedupMark::Bit { generation: a, .. }, DedupMark::Bit { generation: b, .. }) => *a == b,
                        (DedupMark::Member, DedupMark::Member) => true,
                        _ => false,
                    };
                    same_generation && other.stream_key == e.stream_key && other.producer == e.producer
                };
                match keys.iter().position(same_key) {
                    Some(g) => g,
                    None => {
                        keys.push((e.dedup_key(), i, mark));
                        keys.len() - 1
                    }
                }
            })
            .collect();
        DedupGroups { keys, of_entry }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::BodyFormat;

    #[test]
    fn a_refilled_entry_equals_a_new_one() {
        let full = |name: &str, seq: &str| -> Vec<(&'static str, Vec<u8>)> {
            vec![
                ("event", b"{}".to_vec()),
                ("event_name", name.into()),
                ("unique_id", b"uid".to_vec()),
                ("core_uuid", b"core".to_vec()),
                ("event_sequence", seq.into()),
            ]
        };
        let mut entry = Entry::default();
        let key = |id| IdempotencyKey { producer: "core".into(), id };
        for (format, name, id, expected) in [
            (EntryFormat::Full, "CHANNEL_CREATE", EventId::Seq(12), full("CHANNEL_CREATE", "12")),
            (EntryFormat::Reference, "DTMF", EventId::Seq(13), vec![("event", b"{}".to_vec())]),
            (EntryFormat::Full, "order.paid", EventId::Key("k-9".into()), full("order.paid", "k-9")),
            (EntryFormat::Full, "HEARTBEAT", EventId::Seq(1234567), full("HEARTBEAT", "1234567")),
        ] {
            let event = EventField::event(BodyFormat::Json, "{}".into());
            entry.refill(format, ("stream", 7), name, "uid", &key(id.clone()), event);
            assert_eq!(entry.fields().unwrap(), expected);
            let fresh = Entry::new(format, ("stream", 7), name, "uid", &key(id.clone()), b"{}".to_vec());
            assert_eq!(entry.fields().unwrap(), fresh.fields().unwrap());
            assert_eq!((entry.stream_key.as_str(), entry.max_len), ("stream", 7));
            assert_eq!((entry.producer.as_str(), &entry.id), ("core", &id));
        }
    }
}
