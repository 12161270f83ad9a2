//! The pipeline between sources and writers: one lane per writer, chosen by call, so each
//! call's events keep the order the switch sent them in and no source ever waits.
//!
//! A lane is a bounded crossbeam channel backed by a bounded memory overflow. [`Pipeline::submit`]
//! never blocks: when the channel is full the event waits in the overflow (counted), and once
//! the overflow is non-empty every newer event of that lane goes there too, so order holds.
//! When the overflow is full as well, the event is handed back to the caller
//! ([`Submitted::Full`]), whose job it is to spool or count it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;

use crate::envelope::Envelope;

/// What happened to a submitted event.
#[derive(Debug)]
pub enum Submitted {
    /// In the lane's channel.
    Queued,
    /// In the lane's memory overflow (the channel was full).
    Overflowed,
    /// Both were full: the event is handed back.
    Full(Box<Envelope>),
}

/// One writer's queue: channel first, overflow behind it.
pub struct Lane {
    index: usize,
    tx: Sender<Envelope>,
    rx: Receiver<Envelope>,
    overflow: Mutex<VecDeque<Envelope>>,
    overflow_capacity: usize,
    closed: AtomicBool,
}

impl Lane {
    fn new(index: usize, channel_capacity: usize, overflow_capacity: usize) -> Lane {
        let (tx, rx) = bounded(channel_capacity);
        Lane { index, tx, rx, overflow: Mutex::new(VecDeque::new()), overflow_capacity, closed: AtomicBool::new(false) }
    }

    pub fn index(&self) -> usize {
        self.index
    }

    fn submit(&self, envelope: Envelope) -> Submitted {
        let mut overflow = self.overflow.lock();
        let envelope = if overflow.is_empty() {
            match self.tx.try_send(envelope) {
                Ok(()) => return Submitted::Queued,
                Err(TrySendError::Full(e) | TrySendError::Disconnected(e)) => e,
            }
        } else {
            envelope
        };
        if overflow.len() < self.overflow_capacity {
            overflow.push_back(envelope);
            Submitted::Overflowed
        } else {
            Submitted::Full(Box::new(envelope))
        }
    }

    /// Events waiting in this lane.
    pub fn depth(&self) -> usize {
        self.rx.len() + self.overflow.lock().len()
    }

    pub fn overflow_depth(&self) -> usize {
        self.overflow.lock().len()
    }

    /// Fills `out` with the next batch, oldest first: whatever is waiting, up to `max`, taken
    /// as soon as the lane is momentarily empty or `window` has passed since the first event.
    /// Waits up to `wait` for a first event. Returns `false` once the lane is closed and empty.
    pub fn next_batch(&self, max: usize, wait: Duration, window: Duration, out: &mut Vec<Envelope>) -> bool {
        let started = Instant::now();
        loop {
            while out.len() < max {
                match self.rx.try_recv() {
                    Ok(e) => out.push(e),
                    Err(_) => {
                        // The channel is empty: anything older is in the overflow.
                        let mut overflow = self.overflow.lock();
                        let take = (max - out.len()).min(overflow.len());
                        out.extend(overflow.drain(..take));
                        break;
                    }
                }
                if out.len().is_multiple_of(64) && started.elapsed() >= window {
                    break;
                }
            }
            if !out.is_empty() {
                return true;
            }
            if self.closed.load(Ordering::Acquire) && self.depth() == 0 {
                return false;
            }
            match self.rx.recv_timeout(wait) {
                Ok(e) => out.push(e),
                Err(RecvTimeoutError::Timeout) => {
                    if self.closed.load(Ordering::Acquire) && self.depth() == 0 {
                        return false;
                    }
                    return true;
                }
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }
}

/// All lanes, and the choice of lane by call.
pub struct Pipeline {
    lanes: Vec<Arc<Lane>>,
}

/// Size of each lane: the channel, and the overflow behind it.
#[derive(Debug, Clone, Copy)]
pub struct PipelineShape {
    pub lanes: usize,
    pub channel_capacity: usize,
    pub overflow_capacity: usize,
}

impl PipelineShape {
    /// Splits `buffer_size` events of memory over `lanes`: a channel of up to 4096 each, the
    /// rest as overflow.
    pub fn from_buffer(lanes: usize, buffer_size: usize) -> PipelineShape {
        let per_lane = (buffer_size / lanes.max(1)).max(2);
        let channel_capacity = (per_lane / 2).clamp(1, 4096);
        PipelineShape { lanes: lanes.max(1), channel_capacity, overflow_capacity: per_lane - channel_capacity }
    }
}

impl Pipeline {
    pub fn new(shape: PipelineShape) -> Arc<Pipeline> {
        let lanes =
            (0..shape.lanes).map(|i| Arc::new(Lane::new(i, shape.channel_capacity, shape.overflow_capacity))).collect();
        Arc::new(Pipeline { lanes })
    }

    pub fn lanes(&self) -> &[Arc<Lane>] {
        &self.lanes
    }

    /// The lane an ordering key (`Unique-ID`, else `Job-UUID`) maps to.
    pub fn lane_for(&self, key: &str) -> usize {
        lane_for(key, self.lanes.len())
    }

    /// Puts an event on its lane without ever blocking.
    pub fn submit(&self, envelope: Envelope) -> Submitted {
        let lane = self.lane_for(&envelope.meta.unique_id);
        self.lanes[lane].submit(envelope)
    }

    /// No more events will be submitted: writers drain their lanes and stop.
    pub fn close(&self) {
        for lane in &self.lanes {
            lane.closed.store(true, Ordering::Release);
        }
    }

    /// Events waiting in memory across all lanes.
    pub fn depth(&self) -> usize {
        self.lanes.iter().map(|l| l.depth()).sum()
    }
}

/// FNV-1a over the key, reduced to a lane. Events without a key share lane 0, which keeps
/// their relative order too.
pub fn lane_for(key: &str, lanes: usize) -> usize {
    if key.is_empty() || lanes <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % lanes as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{EventMeta, StreamKind};
    use crate::esl::event::EventFormat;

    fn env(call: &str, seq: u64) -> Envelope {
        Envelope {
            stream: StreamKind::Events,
            format: EventFormat::Plain,
            body: bytes::Bytes::new(),
            meta: EventMeta { unique_id: call.into(), sequence: seq.to_string(), ..Default::default() },
            parsed_at_us: 0,
        }
    }

    #[test]
    fn overflow_keeps_order_and_full_hands_back() {
        let p = Pipeline::new(PipelineShape { lanes: 1, channel_capacity: 2, overflow_capacity: 3 });
        let outcomes: Vec<_> = (0..6).map(|i| p.submit(env("a", i))).collect();
        assert!(matches!(outcomes[0], Submitted::Queued));
        assert!(matches!(outcomes[2], Submitted::Overflowed));
        assert!(matches!(outcomes[5], Submitted::Full(_)));
        let mut got = Vec::new();
        let lane = &p.lanes()[0];
        // Drain the channel and part of the overflow, then submit more: new events must
        // queue behind what is left in the overflow.
        assert!(lane.next_batch(2, Duration::ZERO, Duration::from_secs(1), &mut got));
        assert!(lane.next_batch(4, Duration::ZERO, Duration::from_secs(1), &mut got));
        assert_eq!(got.len(), 4);
        assert!(matches!(p.submit(env("a", 6)), Submitted::Overflowed));
        while got.len() < 6 {
            let mut batch = Vec::new();
            lane.next_batch(10, Duration::from_millis(10), Duration::from_secs(1), &mut batch);
            got.extend(batch);
        }
        let seqs: Vec<_> = got.iter().map(|e| e.meta.sequence.clone()).collect();
        assert_eq!(seqs, ["0", "1", "2", "3", "4", "6"]);
    }

    #[test]
    fn closed_lane_drains_then_stops() {
        let p = Pipeline::new(PipelineShape::from_buffer(2, 100));
        for i in 0..10 {
            p.submit(env("x", i));
        }
        p.close();
        let lane = &p.lanes()[p.lane_for("x")];
        let mut batch = Vec::new();
        assert!(lane.next_batch(100, Duration::from_millis(1), Duration::from_secs(1), &mut batch));
        assert_eq!(batch.len(), 10);
        batch.clear();
        assert!(!lane.next_batch(100, Duration::from_millis(1), Duration::from_secs(1), &mut batch));
    }

    #[test]
    fn same_call_same_lane() {
        for lanes in 1..9 {
            assert_eq!(lane_for("abc", lanes), lane_for("abc", lanes));
            assert!(lane_for("abc", lanes) < lanes);
        }
    }
}
