//! One fetched outbox row and the envelope it becomes: the `payload` (compacted) is the
//! entry's `event` field, `event_name` its `event_name`, `ordering_key` its `unique_id` and
//! lane, and the idempotency key is (producer, row id), shown as `core_uuid` /
//! `event_sequence`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::envelope::{now_us, BodyFormat, Envelope, EventId, IdempotencyKey, Source, StreamTarget, Text};

/// A row as the relay's query returns it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OutboxRow {
    pub id: i64,
    /// Empty: `OUTBOX_STREAM`.
    pub stream: String,
    pub event_name: String,
    /// Empty when null.
    pub ordering_key: String,
    /// `payload::text` (PostgreSQL's `jsonb` output: valid JSON, spaced).
    pub payload: String,
    /// `created_at`, µs since the epoch.
    pub created_at_us: i64,
    /// Seconds from `created_at` to the fetch, by the database's clock.
    pub age_at_fetch: f64,
}

/// The columns [`OutboxRow::from_row`] reads, in order (`{t}`: the table).
pub(crate) const SELECT_COLUMNS: &str =
    "id, coalesce(stream, ''), event_name, coalesce(ordering_key, ''), payload::text, \
     (extract(epoch from created_at) * 1000000)::int8, extract(epoch from clock_timestamp() - created_at)::float8";

impl OutboxRow {
    pub(crate) fn from_row(row: &tokio_postgres::Row) -> Result<OutboxRow, tokio_postgres::Error> {
        Ok(OutboxRow {
            id: row.try_get(0)?,
            stream: row.try_get(1)?,
            event_name: row.try_get(2)?,
            ordering_key: row.try_get(3)?,
            payload: row.try_get(4)?,
            created_at_us: row.try_get(5)?,
            age_at_fetch: row.try_get(6)?,
        })
    }
}

/// Turns rows into envelopes, reusing one [`StreamTarget`] per stream name.
pub(crate) struct RowEncoder {
    producer: Text,
    default_stream: Arc<StreamTarget>,
    streams: HashMap<String, Arc<StreamTarget>>,
}

/// Distinct per-row stream names kept (a table naming more starts the map afresh).
const MAX_STREAMS: usize = 1024;

impl RowEncoder {
    pub(crate) fn new(producer: String, default_stream: Arc<StreamTarget>) -> RowEncoder {
        RowEncoder { producer: producer.into(), default_stream, streams: HashMap::new() }
    }

    pub(crate) fn producer(&self) -> &str {
        &self.producer
    }

    /// The row's envelope: always written through the checking path (an earlier relay, this
    /// one before a crash or another agent, may have written it).
    pub(crate) fn envelope(&mut self, row: &OutboxRow) -> Envelope {
        let stream = if row.stream.is_empty() || row.stream == self.default_stream.key {
            self.default_stream.clone()
        } else {
            if self.streams.len() >= MAX_STREAMS && !self.streams.contains_key(&row.stream) {
                self.streams.clear();
            }
            let max_len = self.default_stream.max_len;
            self.streams
                .entry(row.stream.clone())
                .or_insert_with(|| StreamTarget::new(&row.stream, max_len, "outbox"))
                .clone()
        };
        let key = IdempotencyKey { producer: self.producer.clone(), id: EventId::Seq(row.id as u64) };
        Envelope {
            name: row.event_name.as_str().into(),
            ordering_key: row.ordering_key.as_str().into(),
            timestamp_us: Some(row.created_at_us),
            parsed_at_us: now_us(),
            maybe_written: true,
            ..Envelope::new(Source::Outbox, stream, BodyFormat::Json, Bytes::from(compact_json(&row.payload)), key)
        }
    }
}

/// Valid JSON without the whitespace between tokens (PostgreSQL's `jsonb` output puts a space
/// after every `:` and `,`); strings are copied byte for byte.
pub(crate) fn compact_json(json: &str) -> Vec<u8> {
    let bytes = json.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'"' => {
                // A string: up to the closing quote that no backslash escapes.
                let start = i;
                i += 1;
                while i < bytes.len() {
                    match memchr::memchr2(b'"', b'\\', &bytes[i..]) {
                        None => i = bytes.len(),
                        Some(at) if bytes[i + at] == b'\\' => i += at + 2,
                        Some(at) => {
                            i += at + 1;
                            break;
                        }
                    }
                }
                out.extend_from_slice(&bytes[start..i.min(bytes.len())]);
            }
            _ => {
                let start = i;
                while i < bytes.len() && !matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r' | b'"') {
                    i += 1;
                }
                out.extend_from_slice(&bytes[start..i]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn jsonb_output_is_compacted_and_strings_kept() {
        let text = r#"{"a": 1, "b": [true, null, "x y"], "c": {"d": "q\" , :"}, "e": "\\"}"#;
        let compact = compact_json(text);
        assert_eq!(
            String::from_utf8(compact.clone()).unwrap(),
            r#"{"a":1,"b":[true,null,"x y"],"c":{"d":"q\" , :"},"e":"\\"}"#
        );
        let a: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(a, serde_json::from_slice::<serde_json::Value>(&compact).unwrap());
    }

    #[test]
    fn a_row_becomes_an_outbox_envelope() {
        let mut enc =
            RowEncoder::new("app.public.eslstream_outbox".into(), StreamTarget::new("s:outbox", 10, "outbox"));
        let row = OutboxRow {
            id: 42,
            stream: String::new(),
            event_name: "order.paid".into(),
            ordering_key: "order-7".into(),
            payload: r#"{"total": 12.5}"#.into(),
            created_at_us: 1,
            age_at_fetch: 0.002,
        };
        let e = enc.envelope(&row);
        assert_eq!((e.source, e.format, e.stream.key.as_str()), (Source::Outbox, BodyFormat::Json, "s:outbox"));
        assert_eq!(
            (e.name.as_str(), e.ordering_key.as_str(), &e.body[..]),
            ("order.paid", "order-7", &br#"{"total":12.5}"#[..])
        );
        assert_eq!(e.key, IdempotencyKey { producer: "app.public.eslstream_outbox".into(), id: EventId::Seq(42) });
        assert!(e.maybe_written);
        let other = enc.envelope(&OutboxRow { stream: "s:other".into(), ..row.clone() });
        assert_eq!((other.stream.key.as_str(), other.stream.label), ("s:other", "outbox"));
        assert!(Arc::ptr_eq(&enc.envelope(&OutboxRow { stream: "s:other".into(), ..row }).stream, &other.stream));
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            "\\PC{0,12}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("\\PC{0,8}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn compacting_keeps_the_value(v in json_value()) {
            let pretty = serde_json::to_string_pretty(&v).unwrap();
            let compact = compact_json(&pretty);
            prop_assert_eq!(&compact, &serde_json::to_vec(&v).unwrap());
        }

        #[test]
        fn any_row_makes_an_envelope_of_its_own_fields(
            id in any::<i64>(),
            stream in "\\PC{0,40}",
            name in "\\PC{0,40}",
            key in "\\PC{0,40}",
            v in json_value(),
        ) {
            let mut enc = RowEncoder::new("p".into(), StreamTarget::new("default", 0, "outbox"));
            let payload = serde_json::to_string_pretty(&v).unwrap();
            let row = OutboxRow { id, stream: stream.clone(), event_name: name.clone(), ordering_key: key.clone(), payload, created_at_us: 0, age_at_fetch: 0.0 };
            let e = enc.envelope(&row);
            prop_assert_eq!(&e.stream.key, if stream.is_empty() { "default" } else { stream.as_str() });
            prop_assert_eq!((e.name.as_str(), e.ordering_key.as_str()), (name.as_str(), key.as_str()));
            prop_assert_eq!(e.key.id, EventId::Seq(id as u64));
            prop_assert_eq!(serde_json::from_slice::<serde_json::Value>(&e.body).unwrap(), v);
        }

        #[test]
        fn garbage_never_panics(text in "\\PC{0,64}") {
            let out = compact_json(&text);
            prop_assert!(out.len() <= text.len());
        }
    }
}
