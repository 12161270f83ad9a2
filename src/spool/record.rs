//! The spool's record format: one envelope as checksummed bytes.
//!
//! A record is `[u32 length][u32 crc32 of payload][payload]`, little-endian. The payload holds
//! the envelope's routing fields and the event body exactly as received, so a spooled event is
//! written later exactly as it would have been written at once, with the same idempotency key.

use bytes::Bytes;

use crate::envelope::{Envelope, EventMeta, StreamKind};
use crate::esl::event::EventFormat;

/// Bytes before the payload.
pub const HEADER_LEN: usize = 8;
/// The largest payload accepted back from disk (an event is at most 16 MiB plus its fields).
pub const MAX_PAYLOAD: usize = 17 << 20;
const VERSION: u8 = 1;

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

/// Appends `envelope` as one record to `out`.
pub fn encode(envelope: &Envelope, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let m = &envelope.meta;
    out.push(VERSION);
    out.push(match envelope.stream {
        StreamKind::Events => 0,
        StreamKind::Jobs => 1,
    });
    out.push(match envelope.format {
        EventFormat::Plain => 0,
        EventFormat::Json => 1,
    });
    out.push(m.timestamp_us.is_some() as u8 | (envelope.maybe_written as u8) << 1);
    out.extend_from_slice(&envelope.parsed_at_us.to_le_bytes());
    out.extend_from_slice(&m.timestamp_us.unwrap_or(0).to_le_bytes());
    for s in [&m.name, &m.subclass, &m.unique_id, &m.core_uuid, &m.sequence, &m.calling_function] {
        put_bytes(out, s.as_bytes());
    }
    put_bytes(out, &envelope.body);
    let payload_len = (out.len() - start - HEADER_LEN) as u32;
    let crc = crc32fast::hash(&out[start + HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
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

/// Checks `payload` against `crc` and decodes it.
pub fn decode(payload: &[u8], crc: u32) -> Result<Envelope, RecordError> {
    if crc32fast::hash(payload) != crc {
        return Err(RecordError::Checksum);
    }
    let mut r = Reader { buf: payload };
    if r.u8()? != VERSION {
        return Err(RecordError::Malformed("unknown version"));
    }
    let stream = match r.u8()? {
        0 => StreamKind::Events,
        1 => StreamKind::Jobs,
        _ => return Err(RecordError::Malformed("stream")),
    };
    let format = match r.u8()? {
        0 => EventFormat::Plain,
        1 => EventFormat::Json,
        _ => return Err(RecordError::Malformed("format")),
    };
    let flags = r.u8()?;
    let has_ts = flags & 1 == 1;
    let parsed_at_us = r.i64()?;
    let ts = r.i64()?;
    let meta = EventMeta {
        name: r.string()?,
        subclass: r.string()?,
        unique_id: r.string()?,
        core_uuid: r.string()?,
        sequence: r.string()?,
        calling_function: r.string()?,
        timestamp_us: has_ts.then_some(ts),
    };
    let body = Bytes::copy_from_slice(r.bytes()?);
    if !r.buf.is_empty() {
        return Err(RecordError::Malformed("trailing bytes"));
    }
    Ok(Envelope { stream, format, body, meta, parsed_at_us, spool_pos: None, maybe_written: flags & 2 == 2 })
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

    fn sample() -> Envelope {
        Envelope {
            stream: StreamKind::Jobs,
            format: EventFormat::Plain,
            body: Bytes::from_static(b"Event-Name: API\n\n"),
            meta: EventMeta {
                name: "API".into(),
                unique_id: "u-1".into(),
                core_uuid: "c".into(),
                sequence: "42".into(),
                timestamp_us: Some(7),
                ..Default::default()
            },
            parsed_at_us: 9,
            spool_pos: None,
            maybe_written: true,
        }
    }

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf);
        let (len, crc) = header(buf[..8].try_into().unwrap()).unwrap();
        assert_eq!(len, buf.len() - 8);
        let back = decode(&buf[8..], crc).unwrap();
        assert_eq!(back.meta, sample().meta);
        assert_eq!(back.body, sample().body);
        assert_eq!(
            (back.stream, back.format, back.parsed_at_us, back.maybe_written),
            (StreamKind::Jobs, EventFormat::Plain, 9, true)
        );
    }

    #[test]
    fn any_flipped_byte_is_caught() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf);
        for i in 8..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            let (_, crc) = header(bad[..8].try_into().unwrap()).unwrap();
            assert!(decode(&bad[8..], crc).is_err(), "flip at {i} undetected");
        }
    }
}
