//! Real traffic on a loop: the event frames of a capture (plain or JSON), sent over and over
//! as the traffic.
//!
//! Each pass is a FreeSWITCH "process" of its own: every frame of the pass gets the pass's
//! `Core-UUID` (a new UUID, same length as the recorded one), so the (Core-UUID,
//! `Event-Sequence`) key of every copy is new and idempotency keeps them all; and its
//! `Event-Date-Timestamp` is set to the moment it is sent, so lag and latency read as they
//! would live. Both values are patched in place at offsets found once, when the loop is made:
//! every other byte is the capture's.

use super::wire::Rng;
use super::{find, frame_event_name, RawFrame};

/// One frame of the loop, with where its two patched values sit.
struct LoopFrame {
    bytes: Vec<u8>,
    name: String,
    subclass: Option<String>,
    /// Offset of the 36-byte `Core-UUID` value, if the event has one.
    core_uuid: Option<usize>,
    /// Offset and length of the `Event-Date-Timestamp` value (microseconds), if present.
    timestamp: Option<(usize, usize)>,
}

/// The capture's frames and where the loop is.
pub(crate) struct CaptureLoop {
    frames: Vec<LoopFrame>,
    next: usize,
    pass_uuid: String,
    rng: Rng,
    passes: u64,
}

impl CaptureLoop {
    /// A loop over `frames` (complete `text/event-plain` frames, see [`super::event_frames`]);
    /// `None` when there are none.
    pub(crate) fn new(frames: &[Vec<u8>], seed: u64) -> Option<CaptureLoop> {
        if frames.is_empty() {
            return None;
        }
        let frames = frames
            .iter()
            .map(|bytes| {
                let (name, subclass) = frame_event_name(bytes);
                LoopFrame {
                    core_uuid: header_value(bytes, "Core-UUID").filter(|&(_, len)| len == 36).map(|(at, _)| at),
                    timestamp: header_value(bytes, "Event-Date-Timestamp"),
                    bytes: bytes.clone(),
                    name,
                    subclass,
                }
            })
            .collect();
        let mut rng = Rng::new(seed);
        let pass_uuid = rng.uuid_v4();
        Some(CaptureLoop { frames, next: 0, pass_uuid, rng, passes: 0 })
    }

    /// The next frame, patched for its pass and stamped `now_us`.
    pub(crate) fn next_frame(&mut self, now_us: i64) -> RawFrame {
        if self.next == self.frames.len() {
            self.next = 0;
            self.passes += 1;
            self.pass_uuid = self.rng.uuid_v4();
        }
        let frame = &self.frames[self.next];
        self.next += 1;
        let mut bytes = frame.bytes.clone();
        if let Some(at) = frame.core_uuid {
            bytes[at..at + 36].copy_from_slice(self.pass_uuid.as_bytes());
        }
        if let Some((at, len)) = frame.timestamp {
            let stamp = now_us.to_string();
            if stamp.len() == len {
                bytes[at..at + len].copy_from_slice(stamp.as_bytes());
            }
        }
        RawFrame { bytes, name: frame.name.clone(), subclass: frame.subclass.clone(), traffic: true }
    }

    /// Whole passes completed.
    #[cfg(test)]
    pub(crate) fn passes(&self) -> u64 {
        self.passes
    }
}

/// Offset and length of the first value of header `name`: a plain `Name: value` line (to the
/// end of its line) or a JSON `"Name":"value"` (to its closing quote; the values patched here
/// hold no escapes).
fn header_value(frame: &[u8], name: &str) -> Option<(usize, usize)> {
    let (prefix, end) = if find(frame, b"text/event-json").is_some() {
        (format!("\"{name}\":\""), b'"')
    } else {
        (format!("\n{name}: "), b'\n')
    };
    let at = find(frame, prefix.as_bytes())? + prefix.len();
    let len = frame[at..].iter().position(|&b| b == end)?;
    Some((at, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_frames;

    fn capture() -> Vec<Vec<u8>> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/esl-captures/plain.esl");
        event_frames(&std::fs::read(path).expect("the plain capture is in the repository"))
    }

    #[test]
    fn every_pass_is_the_capture_with_a_new_core_uuid_and_a_fresh_timestamp() {
        let frames = capture();
        assert_eq!(frames.len(), 1009);
        let mut lp = CaptureLoop::new(&frames, 7).unwrap();
        let now = 1_800_000_000_123_456;
        let mut uuids = std::collections::HashSet::new();
        for pass in 0..3 {
            let mut pass_uuid = None;
            for original in &frames {
                let sent = lp.next_frame(now);
                assert_eq!(sent.bytes.len(), original.len(), "patched in place");
                let text = String::from_utf8_lossy(&sent.bytes);
                let uuid = text.lines().find_map(|l| l.strip_prefix("Core-UUID: ")).unwrap().to_owned();
                assert_ne!(uuid, "c76fa84c-21b9-496c-ab66-57208cf171a5", "pass {pass}");
                assert_eq!(*pass_uuid.get_or_insert_with(|| uuid.clone()), uuid, "one Core-UUID per pass");
                let stamp = text.lines().find_map(|l| l.strip_prefix("Event-Date-Timestamp: ")).unwrap();
                assert_eq!(stamp, now.to_string());
                // Everything else is the capture's.
                let differing = sent.bytes.iter().zip(original).filter(|(a, b)| a != b).count();
                assert!(differing <= 36 + 16, "only the two values change ({differing} bytes)");
            }
            assert!(uuids.insert(pass_uuid.unwrap()), "a new Core-UUID every pass");
        }
        assert_eq!(lp.passes(), 2);
        assert!(CaptureLoop::new(&[], 1).is_none());
    }

    #[test]
    fn a_json_capture_loops_too() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/esl-captures/json.esl");
        let frames = event_frames(&std::fs::read(path).expect("the JSON capture is in the repository"));
        assert_eq!(frames.len(), 1012);
        let mut lp = CaptureLoop::new(&frames, 7).unwrap();
        let now = 1_800_000_000_123_456;
        let mut uuids = std::collections::HashSet::new();
        for _pass in 0..2 {
            for original in &frames {
                let sent = lp.next_frame(now);
                assert_eq!(sent.bytes.len(), original.len(), "patched in place");
                let body = &sent.bytes[find(&sent.bytes, b"\n\n").unwrap() + 2..];
                let v: serde_json::Value = serde_json::from_slice(body).expect("still JSON");
                let uuid = v["Core-UUID"].as_str().unwrap().to_owned();
                assert_ne!(uuid, "c76fa84c-21b9-496c-ab66-57208cf171a5");
                uuids.insert(uuid);
                assert_eq!(v["Event-Date-Timestamp"], now.to_string());
            }
        }
        assert_eq!(uuids.len(), 2, "one Core-UUID per pass");
    }
}
