//! A stream entry's `event` field as the writer holds it: the JSON itself, or the event as
//! received, turned into JSON ([`crate::esl::json`]) where the write request is encoded.

use std::cell::Cell;

use bytes::Bytes;

use crate::envelope::BodyFormat;
use crate::esl::event::EventError;
use crate::esl::json::event_json;

/// A stream entry's `event` field: its JSON, or the event it is made from. An event is turned
/// into JSON where the write request is encoded, straight into the request's buffer
/// ([`crate::sink::resp::Resp::arg_with`]), so its bytes are copied once on the way from the
/// socket's read buffer to the socket Redis is written on (a retry converts it again).
#[derive(Debug, Clone)]
pub enum EventField {
    /// The JSON itself (a dead letter written again, tests).
    Json(Vec<u8>),
    /// An event as received, in its format.
    Event {
        format: BodyFormat,
        body: Bytes,
        /// Set once its JSON has been written with bytes that were not UTF-8 replaced by
        /// U+FFFD, for the writer to count and report.
        lossy: Cell<bool>,
    },
}

impl EventField {
    pub fn event(format: BodyFormat, body: Bytes) -> EventField {
        EventField::Event { format, body, lossy: Cell::new(false) }
    }

    /// About how long the JSON is, so its length header is reserved with the right number of
    /// digits: a plain event's JSON is ~6% longer than the event (quotes and commas outweigh
    /// percent-decoding; with this hint none of the 1,009 captured events is moved, with the
    /// bare length 34 would be), a JSON event's about as long.
    pub(crate) fn size_hint(&self) -> usize {
        match self {
            EventField::Json(json) => json.len(),
            EventField::Event { format: BodyFormat::EslPlain, body, .. } => body.len() + body.len() / 16,
            EventField::Event { body, .. } => body.len(),
        }
    }

    /// Appends the JSON to `out`; on error `out` is left as it was.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EventError> {
        match self {
            EventField::Json(json) => out.extend_from_slice(json),
            EventField::Event { format, body, lossy } => {
                if event_json(*format, body, out)? {
                    lossy.set(true);
                }
            }
        }
        Ok(())
    }

    /// The JSON, as its own buffer (a dead letter, a test).
    pub(crate) fn to_json(&self) -> Result<Vec<u8>, EventError> {
        let mut out = Vec::with_capacity(self.size_hint() + 256);
        self.write_json(&mut out)?;
        Ok(out)
    }

    /// Whether writing the JSON replaced bytes that were not UTF-8.
    pub(crate) fn was_lossy(&self) -> bool {
        matches!(self, EventField::Event { lossy, .. } if lossy.get())
    }
}

impl From<Vec<u8>> for EventField {
    fn from(json: Vec<u8>) -> EventField {
        EventField::Json(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_field_writes_the_same_json_and_remembers_a_lossy_decode() {
        let clean = EventField::event(BodyFormat::EslPlain, "Event-Name: DTMF\nDTMF-Digit: %23\n".into());
        assert_eq!(clean.to_json().unwrap(), br##"{"Event-Name":"DTMF","DTMF-Digit":"#"}"##);
        assert!(!clean.was_lossy());
        let lossy = EventField::event(BodyFormat::EslPlain, "Event-Name: DTMF\nCaller: %FFx\n".into());
        assert!(!lossy.was_lossy(), "not before its JSON is made");
        let json = lossy.to_json().unwrap();
        assert_eq!(std::str::from_utf8(&json).unwrap(), "{\"Event-Name\":\"DTMF\",\"Caller\":\"\u{FFFD}x\"}");
        assert!(lossy.was_lossy());
        let mut out = b"keep".to_vec();
        let bad = EventField::event(BodyFormat::EslPlain, "Event-Name: DTMF\nbad\n".into());
        assert!(bad.write_json(&mut out).is_err());
        assert_eq!(out, b"keep");
        let json = EventField::event(BodyFormat::Json, r#"{"a":1}"#.into());
        assert_eq!(json.to_json().unwrap(), br#"{"a":1}"#);
        assert_eq!(EventField::from(b"{}".to_vec()).to_json().unwrap(), b"{}");
    }
}
