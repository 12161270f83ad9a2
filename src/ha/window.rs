//! The replay window: the switch events a standby keeps, so that at takeover it can fill the
//! gap between the last event the old active wrote and the first it writes itself.

use std::collections::VecDeque;
use std::time::Duration;

use crate::envelope::{now_us, Envelope};

/// The events a standby keeps, oldest first, bounded in age and bytes.
#[derive(Default)]
pub(crate) struct Window {
    events: VecDeque<Envelope>,
    bytes: u64,
}

impl Window {
    pub(crate) fn push(&mut self, envelope: Envelope, max_age: Duration, max_bytes: u64) {
        self.bytes += envelope.body.len() as u64;
        self.events.push_back(envelope);
        let oldest_kept = now_us() - max_age.as_micros() as i64;
        while let Some(front) = self.events.front() {
            if front.parsed_at_us >= oldest_kept && self.bytes <= max_bytes {
                break;
            }
            self.bytes -= front.body.len() as u64;
            self.events.pop_front();
        }
    }

    pub(crate) fn seconds(&self) -> f64 {
        match (self.events.front(), self.events.back()) {
            (Some(a), Some(b)) => (b.parsed_at_us - a.parsed_at_us) as f64 / 1e6,
            _ => 0.0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Everything kept, oldest first; the window starts empty again.
    pub(crate) fn take(&mut self) -> Vec<Envelope> {
        self.bytes = 0;
        self.events.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{BodyFormat, EventId, IdempotencyKey, Source, StreamTarget};

    fn event(seq: u64, at_us: i64, bytes: usize) -> Envelope {
        let key = IdempotencyKey { producer: "core".into(), id: EventId::Seq(seq) };
        let body = bytes::Bytes::from(vec![b'x'; bytes]);
        Envelope {
            parsed_at_us: at_us,
            ..Envelope::new(Source::Esl, StreamTarget::new("s", 0, "events"), BodyFormat::EslPlain, body, key)
        }
    }

    #[test]
    fn the_window_keeps_the_newest_events_within_its_age_and_bytes() {
        let mut w = Window::default();
        let now = now_us();
        for seq in 0..10 {
            w.push(event(seq, now - 20_000_000 + seq as i64 * 1_000_000, 100), Duration::from_millis(15_500), 1 << 20);
        }
        // Events of 20..11 s ago: those older than 15.5 s went.
        let seqs: Vec<u64> = w.events.iter().map(|e| e.key.id.seq().unwrap()).collect();
        assert_eq!(seqs, [5, 6, 7, 8, 9]);
        assert_eq!(w.bytes, 500);
        w.push(event(10, now, 450), Duration::from_millis(15_500), 1000);
        let seqs: Vec<u64> = w.events.iter().map(|e| e.key.id.seq().unwrap()).collect();
        assert_eq!(seqs, [5, 6, 7, 8, 9, 10], "950 bytes fit in 1000");
        w.push(event(11, now, 450), Duration::from_millis(15_500), 1000);
        assert!(w.bytes <= 1000);
        assert_eq!(w.events.back().unwrap().key.id.seq(), Some(11));
        assert!(w.seconds() >= 0.0);
    }
}
