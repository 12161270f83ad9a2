//! The spool's record format: one envelope as checksummed bytes.
//!
//! A record is `[u32 length][u32 crc32 of payload][payload]`, little-endian. The payload holds
//! the envelope's routing fields and the event body exactly as received, so a spooled event is
//! written later exactly as it would have been written at once, with the same idempotency key.

use bytes::Bytes;

use crate::envelope::{BodyFormat, Envelope, EventId, IdempotencyKey, Source, StreamTarget};

/// Bytes before the payload.
pub(crate) const HEADER_LEN: usize = 8;
/// The largest payload accepted back from disk (an event is at most 16 MiB plus its fields).
pub(crate) const MAX_PAYLOAD: usize = 17 << 20;
/// Version 2: the source-neutral envelope (any stream key, string or numeric ids). Version 1
/// records (ESL events and its two streams, before the general envelope) are still read.
const VERSION: u8 = 2;

/// Flag bits of a version 2 record.
const HAS_TIMESTAMP: u8 = 1;
const MAYBE_WRITTEN: u8 = 2;
const STRING_ID: u8 = 4;

/// Why bytes on disk are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record length {0} is over the limit")]
    TooLong(usize),
    #[error("checksum mismatch")]
    Checksum,
    #[error("malformed payload: {0}")]
    Malformed(&'static str),
}

/// Appends `envelope` as one record to `out` (its acknowledgement is not part of it: a
/// spooled event has been acknowledged as spooled).
pub fn encode(envelope: &Envelope, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.push(VERSION);
    out.push(envelope.source.code());
    out.push(envelope.format.code());
    let string_id = matches!(envelope.key.id, EventId::Key(_));
    out.push(
        if envelope.timestamp_us.is_some() { HAS_TIMESTAMP } else { 0 }
            | if envelope.maybe_written { MAYBE_WRITTEN } else { 0 }
            | if string_id { STRING_ID } else { 0 },
    );
    out.extend_from_slice(&envelope.parsed_at_us.to_le_bytes());
    out.extend_from_slice(&envelope.timestamp_us.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&envelope.stream.max_len.to_le_bytes());
    for s in [envelope.stream.key.as_str(), envelope.stream.label, &envelope.name, &envelope.ordering_key] {
        put_bytes(out, s.as_bytes());
    }
    put_bytes(out, envelope.key.producer.as_bytes());
    match &envelope.key.id {
        EventId::Seq(n) => out.extend_from_slice(&n.to_le_bytes()),
        EventId::Key(k) => put_bytes(out, k.as_bytes()),
    }
    put_bytes(out, &envelope.body);
    let payload_len = (out.len() - start - HEADER_LEN) as u32;
    let crc = crc32fast::hash(&out[start + HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Bytes `envelope` takes as a record.
pub(crate) fn encoded_len(envelope: &Envelope) -> u64 {
    let strings = [envelope.stream.key.as_str(), envelope.stream.label, &envelope.name, &envelope.ordering_key];
    let id = match &envelope.key.id {
        EventId::Seq(_) => 8,
        EventId::Key(k) => 4 + k.len(),
    };
    let fields: usize = strings.iter().map(|s| 4 + s.len()).sum::<usize>() + 4 + envelope.key.producer.len();
    (HEADER_LEN + 4 + 3 * 8 + fields + id + 4 + envelope.body.len()) as u64
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Reads a record header: (payload length, crc).
pub fn header(bytes: &[u8; HEADER_LEN]) -> Result<(usize, u32), RecordError> {
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        return Err(RecordError::TooLong(len));
    }
    Ok((len, u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"))))
}

/// Checks `payload` against `crc` and decodes it. `v1_streams` are the events and jobs
/// streams a version 1 record names by number.
pub fn decode(payload: &[u8], crc: u32, v1_streams: &V1Streams) -> Result<Envelope, RecordError> {
    if crc32fast::hash(payload) != crc {
        return Err(RecordError::Checksum);
    }
    let mut r = Reader { buf: payload };
    match r.u8()? {
        1 => decode_v1(r, v1_streams),
        VERSION => decode_v2(r),
        _ => Err(RecordError::Malformed("unknown version")),
    }
}

fn decode_v2(mut r: Reader<'_>) -> Result<Envelope, RecordError> {
    let source = Source::from_code(r.u8()?).ok_or(RecordError::Malformed("source"))?;
    let format = BodyFormat::from_code(r.u8()?).ok_or(RecordError::Malformed("format"))?;
    let flags = r.u8()?;
    let parsed_at_us = r.i64()?;
    let ts = r.i64()?;
    let max_len = r.i64()? as u64;
    let key = r.string()?;
    let label = StreamTarget::known_label(&r.string()?);
    let name = r.string()?;
    let ordering_key = r.string()?;
    let producer = r.string()?;
    let id = if flags & STRING_ID != 0 { EventId::Key(r.string()?) } else { EventId::Seq(r.i64()? as u64) };
    let body = Bytes::copy_from_slice(r.bytes()?);
    if !r.buf.is_empty() {
        return Err(RecordError::Malformed("trailing bytes"));
    }
    Ok(Envelope {
        source,
        stream: StreamTarget::new(key, max_len, label),
        format,
        body,
        name: name.into(),
        ordering_key: ordering_key.into(),
        key: IdempotencyKey { producer: producer.into(), id },
        timestamp_us: (flags & HAS_TIMESTAMP != 0).then_some(ts),
        parsed_at_us,
        spool_pos: None,
        maybe_written: flags & MAYBE_WRITTEN != 0,
        ack: None,
    })
}

/// The two streams of version 1 records (which named them 0 = events, 1 = jobs).
#[derive(Debug, Clone)]
pub struct V1Streams {
    pub events: std::sync::Arc<StreamTarget>,
    pub jobs: std::sync::Arc<StreamTarget>,
}

impl Default for V1Streams {
    fn default() -> Self {
        V1Streams {
            events: StreamTarget::new("freeswitch:telephony:events", 0, "events"),
            jobs: StreamTarget::new("freeswitch:telephony:background-jobs", 0, "jobs"),
        }
    }
}

fn decode_v1(mut r: Reader<'_>, streams: &V1Streams) -> Result<Envelope, RecordError> {
    let stream = match r.u8()? {
        0 => streams.events.clone(),
        1 => streams.jobs.clone(),
        _ => return Err(RecordError::Malformed("stream")),
    };
    let format = match r.u8()? {
        0 => BodyFormat::EslPlain,
        1 => BodyFormat::EslJson,
        _ => return Err(RecordError::Malformed("format")),
    };
    let flags = r.u8()?;
    let parsed_at_us = r.i64()?;
    let ts = r.i64()?;
    let name = r.string()?;
    let _subclass = r.string()?;
    let ordering_key = r.string()?;
    let producer = r.string()?;
    let sequence = r.string()?;
    let _calling_function = r.string()?;
    let body = Bytes::copy_from_slice(r.bytes()?);
    if !r.buf.is_empty() {
        return Err(RecordError::Malformed("trailing bytes"));
    }
    let id = match sequence.parse::<u64>() {
        Ok(n) => EventId::Seq(n),
        Err(_) => EventId::Key(sequence),
    };
    Ok(Envelope {
        source: Source::Esl,
        stream,
        format,
        body,
        name: name.into(),
        ordering_key: ordering_key.into(),
        key: IdempotencyKey { producer: producer.into(), id },
        timestamp_us: (flags & 1 == 1).then_some(ts),
        parsed_at_us,
        spool_pos: None,
        // A version 1 record was written by the build before this one: it may have been
        // written to Redis under dedup keys of the old names, so check it.
        maybe_written: true,
        ack: None,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.buf.len() < n {
            return Err(RecordError::Malformed("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn i64(&mut self) -> Result<i64, RecordError> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> Result<&'a [u8], RecordError> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        self.take(len)
    }
    fn string(&mut self) -> Result<String, RecordError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| RecordError::Malformed("string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: EventId) -> Envelope {
        Envelope {
            source: Source::Http,
            stream: StreamTarget::new("s:http", 77, "http"),
            format: BodyFormat::Json,
            body: Bytes::from_static(br#"{"a":1}"#),
            name: "API".into(),
            ordering_key: "u-1".into(),
            key: IdempotencyKey { producer: "crm".into(), id },
            timestamp_us: Some(7),
            parsed_at_us: 9,
            spool_pos: None,
            maybe_written: true,
            ack: None,
        }
    }

    fn round(e: &Envelope) -> Envelope {
        let mut buf = Vec::new();
        encode(e, &mut buf);
        let (len, crc) = header(buf[..8].try_into().unwrap()).unwrap();
        assert_eq!(len, buf.len() - 8);
        decode(&buf[8..], crc, &V1Streams::default()).unwrap()
    }

    #[test]
    fn round_trip() {
        for id in [EventId::Seq(u64::MAX), EventId::Key("idem-1".into())] {
            let e = sample(id);
            let back = round(&e);
            assert_eq!((back.source, back.format, &back.stream, &back.body), (e.source, e.format, &e.stream, &e.body));
            assert_eq!((&back.name, &back.ordering_key, &back.key), (&e.name, &e.ordering_key, &e.key));
            assert_eq!((back.timestamp_us, back.parsed_at_us, back.maybe_written), (Some(7), 9, true));
        }
    }

    #[test]
    fn encoded_len_is_the_record_size() {
        for id in [EventId::Seq(3), EventId::Key("a-key".into())] {
            let e = sample(id);
            let mut buf = Vec::new();
            encode(&e, &mut buf);
            assert_eq!(encoded_len(&e), buf.len() as u64);
        }
    }

    #[test]
    fn version_1_records_are_read_as_esl_events_to_check() {
        let mut payload = vec![1u8, 1, 0, 1];
        payload.extend_from_slice(&9i64.to_le_bytes());
        payload.extend_from_slice(&7i64.to_le_bytes());
        for s in ["API", "", "u-1", "core", "42", "api_exec"] {
            put_bytes(&mut payload, s.as_bytes());
        }
        put_bytes(&mut payload, b"Event-Name: API\n\n");
        let back = decode(&payload, crc32fast::hash(&payload), &V1Streams::default()).unwrap();
        assert_eq!(back.stream.label, "jobs");
        assert_eq!(back.key, IdempotencyKey { producer: "core".into(), id: EventId::Seq(42) });
        assert_eq!((back.format, back.source, back.maybe_written), (BodyFormat::EslPlain, Source::Esl, true));
        assert_eq!((back.name.as_str(), back.ordering_key.as_str(), back.timestamp_us), ("API", "u-1", Some(7)));
    }

    #[test]
    fn any_flipped_byte_is_caught() {
        let mut buf = Vec::new();
        encode(&sample(EventId::Key("k".into())), &mut buf);
        for i in 8..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            let (_, crc) = header(bad[..8].try_into().unwrap()).unwrap();
            assert!(decode(&bad[8..], crc, &V1Streams::default()).is_err(), "flip at {i} undetected");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = 0x1234_5678_u64;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    (rng % 7) as u8
                })
                .collect();
            let _ = decode(&bytes, crc32fast::hash(&bytes), &V1Streams::default());
        }
    }
}
