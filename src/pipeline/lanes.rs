//! The pipeline between sources and writers: one lane per writer, chosen by call, so each
//! call's events keep the order the switch sent them in and no source ever waits.
//!
//! A lane is three tiers, oldest first: a bounded crossbeam channel, a bounded memory overflow,
//! and the lane's durable spool. An event goes to the first tier with room, and once a later
//! tier holds events every newer event of the lane goes there too, so order holds. The writer
//! reads the tiers in the same order. When memory is full, [`Pipeline::submit_by`] waits for
//! room until a deadline the source chooses (the reader: while the switch is less than 250 ms
//! behind, see `esl::lag`) and then spools; [`Pipeline::submit`] never waits. Only when the
//! spool is full (or disabled) is the event handed back ([`Submitted::Full`]) to be counted as
//! dropped.
//!
//! A source with nothing else to do may offer an event to its lane's writer first
//! ([`Pipeline::write_or_submit`]): when the lane is idle (nothing queued, nothing being
//! written) the writer writes it at once on the source's thread. At low rates that saves the
//! two thread wake-ups a hand-off costs, which are most of the CPU an event takes.

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use parking_lot::{Condvar, Mutex};

use crate::ack::{AckStatus, AckToken};
use crate::envelope::{Envelope, SpoolPos};
use crate::pipeline::routing::lane_for;
use crate::pipeline::spool::record::encoded_len;
use crate::pipeline::spool::{LaneSpool, SpoolError};
use crate::telemetry::logging::RateLimit;
use crate::telemetry::metrics::metrics;

static FLUSH_WARN: RateLimit = RateLimit::new(Duration::from_secs(5));
static READ_ERROR: RateLimit = RateLimit::new(Duration::from_secs(5));

/// What happened to a submitted event.
#[derive(Debug)]
pub enum Submitted {
    /// In the lane's channel.
    Queued,
    /// In the lane's memory overflow (the channel was full).
    Overflowed,
    /// In the lane's durable spool (memory was full, or the spool already held events).
    Spooled,
    /// Nowhere to put it (spool full or failing): the event is handed back with the reason.
    Full(Box<Envelope>, &'static str),
    /// Written (or settled) by the lane's writer on the caller's thread.
    Written,
}

/// A lane's writer, as a source sees it: it may write an event at once, on the caller's
/// thread, if its lane is idle.
pub(crate) trait WriteNow: Send + Sync {
    /// Writes `envelope` now and settles it, when nothing older of the lane is queued or being
    /// written and the writer is healthy; hands it back otherwise (it then goes on the lane).
    /// (Handed back by value: boxing it would cost an allocation each time a lane is busy.)
    #[allow(clippy::result_large_err)]
    fn write_now(&self, envelope: Envelope) -> Result<(), Envelope>;
}

/// The tiers behind the channel, under one lock shared with submitters.
struct Tiers {
    overflow: VecDeque<Envelope>,
    spool: Option<LaneSpool>,
    /// The spool holds events not yet read back: newer events must go there too.
    spooling: bool,
    /// Acknowledgements of events appended to the spool, resolved as spooled once it is
    /// synced ([`Lane::flush_spool`]).
    unsynced_acks: Vec<AckToken>,
    /// Events newer than the spool's unread ones that the spool could not take (it cannot
    /// write): kept in memory, and written after the spool is read out.
    after_spool: VecDeque<Envelope>,
    /// Why the spool refused the events in `after_spool` (the drop reason of those that do not
    /// fit behind them either).
    after_spool_reason: &'static str,
}

/// One writer's queue: channel first, overflow behind it.
pub(crate) struct Lane {
    index: usize,
    tx: Sender<Envelope>,
    rx: Receiver<Envelope>,
    tiers: Mutex<Tiers>,
    /// Signalled when the writer takes events out of memory (or they are spilled).
    room: Condvar,
    overflow_capacity: usize,
    /// Bytes of the events in the channel and the overflow ([`footprint`]), and their bound.
    bytes: AtomicUsize,
    max_bytes: usize,
    closed: AtomicBool,
    /// The writer's last attempt failed: new events go to the spool first.
    writes_failing: AtomicBool,
    /// Where the writer sleeps while the channel is empty ([`Lane::wait_for_events`]).
    doorbell: Doorbell,
}

/// A writer asleep on an empty channel, and the sources that wake it.
///
/// The channel's own blocking wait spins and calls `sched_yield` a few times before it parks
/// (four yields per wait, so several per event at a few thousand events a second): cheap under
/// load, but pure cost at the rates a switch runs at most of the day. The writer parks at once
/// here, and a source rings only when the writer is asleep: the writer says so before it looks
/// at the channel a last time, a source looks after it added its event, with a fence on each
/// side, so at least one of them sees the other and the event is never left waiting (the
/// timeout of the wait bounds it anyway).
#[derive(Default)]
struct Doorbell {
    asleep: AtomicBool,
    lock: Mutex<()>,
    ring: Condvar,
}

impl Doorbell {
    /// Sleeps up to `wait` unless `ready()` (checked after saying it sleeps).
    fn sleep_unless(&self, wait: Duration, ready: impl Fn() -> bool) {
        let mut guard = self.lock.lock();
        self.asleep.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !ready() {
            self.ring.wait_for(&mut guard, wait);
        }
        self.asleep.store(false, Ordering::SeqCst);
    }

    /// Wakes the sleeper, if there is one (after the caller made it ready).
    fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::SeqCst) {
            let _guard = self.lock.lock();
            self.ring.notify_one();
        }
    }
}

/// What an event costs in memory, near enough: its body and the envelope around it.
fn footprint(envelope: &Envelope) -> usize {
    envelope.body.len() + std::mem::size_of::<Envelope>() + 128
}

impl Lane {
    fn new(index: usize, shape: PipelineShape, spool: Option<LaneSpool>) -> Lane {
        let PipelineShape { channel_capacity, overflow_capacity, max_bytes, .. } = shape;
        let (tx, rx) = bounded(channel_capacity);
        let spooling = spool.as_ref().is_some_and(|s| s.has_unread());
        Lane {
            index,
            tx,
            rx,
            tiers: Mutex::new(Tiers {
                overflow: VecDeque::new(),
                spool,
                spooling,
                unsynced_acks: Vec::new(),
                after_spool: VecDeque::new(),
                after_spool_reason: "spool_full",
            }),
            room: Condvar::new(),
            overflow_capacity,
            bytes: AtomicUsize::new(0),
            max_bytes,
            closed: AtomicBool::new(false),
            writes_failing: AtomicBool::new(false),
            doorbell: Doorbell::default(),
        }
    }

    pub(crate) fn index(&self) -> usize {
        self.index
    }

    fn submit(&self, mut envelope: Envelope, wait_until: Option<Instant>) -> Submitted {
        let mut tiers = self.tiers.lock();
        // Disk first: while the lane's writes fail (Redis down), new events go to the spool,
        // where a SIGKILL of the agent cannot take them.
        let disk_first = self.writes_failing.load(Ordering::Acquire) && tiers.spool.is_some();
        // A source that keeps its events (outbox rows) keeps them while Redis is down: they
        // wait in memory only (the writer's next attempt is also the probe that sees Redis
        // back), and go back to their source where others would be spilled to disk.
        let kept_by_source = envelope.source.keeps_its_events();
        // Why the spool refused this event, when it did: then memory is the last place.
        let mut refused: Option<&'static str> = None;
        loop {
            if (tiers.spooling || disk_first) && !kept_by_source && tiers.after_spool.is_empty() && refused.is_none() {
                match tiers.spool_one(envelope) {
                    Submitted::Full(e, reason) if tiers.spool.is_some() => (envelope, refused) = (*e, Some(reason)),
                    done => return done,
                }
            }
            // Newer than what the spool holds: in memory only behind it.
            let behind_spool = tiers.spooling || !tiers.after_spool.is_empty();
            // Within the byte bound (an event alone in memory always fits).
            let size = footprint(&envelope);
            let held = self.bytes.load(Ordering::Acquire);
            let fits = held == 0 || held + size <= self.max_bytes;
            if behind_spool {
                if fits && tiers.after_spool.len() < self.overflow_capacity {
                    if let Some(reason) = refused {
                        tiers.after_spool_reason = reason;
                    }
                    tiers.after_spool.push_back(envelope);
                    self.bytes.fetch_add(size, Ordering::AcqRel);
                    return Submitted::Overflowed;
                }
            } else {
                if fits && tiers.overflow.is_empty() {
                    match self.tx.try_send(envelope) {
                        Ok(()) => {
                            self.bytes.fetch_add(size, Ordering::AcqRel);
                            // Rung after the tiers lock is released: the writer it wakes takes
                            // that lock at once (to look past the channel), and would otherwise
                            // spin and yield on it while this thread still holds it.
                            drop(tiers);
                            self.doorbell.ring();
                            return Submitted::Queued;
                        }
                        Err(TrySendError::Full(e) | TrySendError::Disconnected(e)) => envelope = e,
                    }
                }
                if fits && tiers.overflow.len() < self.overflow_capacity {
                    tiers.overflow.push_back(envelope);
                    self.bytes.fetch_add(size, Ordering::AcqRel);
                    return Submitted::Overflowed;
                }
            }
            match wait_until {
                Some(deadline) if !self.closed.load(Ordering::Acquire) && Instant::now() < deadline => {
                    let started = Instant::now();
                    let timed_out = self.room.wait_until(&mut tiers, deadline).timed_out();
                    metrics().esl.reader_wait.inc_by(started.elapsed().as_secs_f64());
                    if timed_out {
                        break;
                    }
                }
                _ => break,
            }
        }
        match refused {
            Some(reason) => Submitted::Full(Box::new(envelope), reason),
            // Behind events the spool could not take: it cannot go before them.
            None if !tiers.after_spool.is_empty() => Submitted::Full(Box::new(envelope), tiers.after_spool_reason),
            None if kept_by_source => Submitted::Full(Box::new(envelope), "memory_full"),
            None => tiers.spool_one(envelope),
        }
    }

    /// The lane's writes are failing (or succeed again): see "disk first" in [`Lane::submit`].
    pub(crate) fn set_writes_failing(&self, failing: bool) {
        if self.writes_failing.load(Ordering::Relaxed) != failing {
            self.writes_failing.store(failing, Ordering::Release);
        }
    }

    /// Events waiting in memory in this lane.
    pub(crate) fn depth(&self) -> usize {
        let tiers = self.tiers.lock();
        self.rx.len() + tiers.overflow.len() + tiers.after_spool.len()
    }

    pub(crate) fn overflow_depth(&self) -> usize {
        let tiers = self.tiers.lock();
        tiers.overflow.len() + tiers.after_spool.len()
    }

    /// Redis acknowledged everything up to this spool position.
    pub(crate) fn commit(&self, pos: SpoolPos) -> std::io::Result<()> {
        match self.tiers.lock().spool.as_mut() {
            Some(spool) => spool.commit(pos),
            None => Ok(()),
        }
    }

    /// Moves events the writer could not write (in order, oldest first) and everything queued
    /// in memory behind them into the spool, ahead of what the spool already holds. Events in
    /// `held` that came from the spool are still there and are simply read again.
    /// On failure (spool full or disabled) everything is left where it was and `held` is
    /// handed back.
    /// Events of a source that keeps its own ([`Source::keeps_its_events`]) never move to the
    /// spool: those held and those queued are handed back to their source first, whatever
    /// happens next.
    pub(crate) fn spill(&self, mut held: Vec<Envelope>) -> Result<usize, (Vec<Envelope>, SpoolError)> {
        let mut tiers = self.tiers.lock();
        hand_back(&mut held);
        {
            // The channel's events go back into the channel, in order (sources add to it only
            // under the tiers lock, held here): moved to the overflow, they would keep new
            // events out of the channel.
            let mut queued: Vec<Envelope> = self.rx.try_iter().collect();
            self.release(&hand_back(&mut queued));
            let mut queued = queued.into_iter();
            while let Some(envelope) = queued.next() {
                if let Err(TrySendError::Full(e) | TrySendError::Disconnected(e)) = self.tx.try_send(envelope) {
                    let mut front: VecDeque<Envelope> = std::iter::once(e).chain(queued).collect();
                    front.append(&mut tiers.overflow);
                    tiers.overflow = front;
                    break;
                }
            }
            let t = &mut *tiers;
            for tier in [&mut t.overflow, &mut t.after_spool] {
                let mut kept: Vec<Envelope> = tier.drain(..).collect();
                self.release(&hand_back(&mut kept));
                *tier = kept.into();
            }
        }
        let Tiers { overflow, spool, spooling, unsynced_acks, after_spool, .. } = &mut *tiers;
        let Some(spool) = spool.as_mut() else {
            return Err((held, SpoolError::Full { used: 0, max: 0 }));
        };
        if !after_spool.is_empty() {
            // Events wait behind the spool because it could not take them: it cannot take more.
            let kept = spool.failing().map(crate::pipeline::spool::same_error);
            return Err((held, kept.map_or(SpoolError::Full { used: 0, max: 0 }, SpoolError::Io)));
        }
        // What would move: the held events from memory, then the queue behind them.
        let mut queue: Vec<Envelope> = self.rx.try_iter().collect();
        queue.extend(overflow.drain(..));
        // A batch is memory events, then spool events, so the lane's order is: the held memory
        // events, the held spool events, the queue (it came into memory after the batch read
        // the spool), then the rest of the spool. The spool cannot take the queue between the
        // held spool events and the rest: then nothing moves, and the writer keeps its batch.
        if !queue.is_empty() && held.iter().any(|e| e.spool_pos.is_some()) {
            *overflow = queue.into();
            return Err((held, SpoolError::Behind));
        }
        let needed = held.iter().filter(|e| e.spool_pos.is_none()).chain(&queue).map(encoded_len).sum();
        if let Err(e) = spool.check_room(needed) {
            // Nothing moves: the queue stays in memory, in order, and the writer keeps `held`.
            *overflow = queue.into();
            return Err((held, e));
        }
        let rewound = spool.rewind();
        let from_spool = held.iter().filter(|e| e.spool_pos.is_some()).count() as u64;
        if rewound.records() != from_spool {
            // Some of the batch's spooled events were in files deleted (or cut short) under the
            // agent: they cannot be read again, so nothing leaves the writer.
            spool.undo_rewind(rewound);
            *overflow = queue.into();
            let gone = std::io::Error::new(std::io::ErrorKind::NotFound, "spool files were deleted under the agent");
            return Err((held, SpoolError::Io(gone)));
        }
        let (mut moving, in_flight): (Vec<Envelope>, Vec<Envelope>) =
            held.into_iter().partition(|e| e.spool_pos.is_none());
        let from_memory = moving.len();
        moving.extend(queue);
        let count = moving.len();
        // In front of everything unread: either the held spool events (the queue is empty
        // then), or a queue older than every unread spool event (it entered memory before the
        // lane spooled them).
        let result = spool.prepend(&moving);
        match result.and_then(|()| spool.flush().map_err(SpoolError::Io)) {
            Ok(()) => {
                self.release(&moving[from_memory..]);
                *spooling = spool.has_unread();
                unsynced_acks.extend(moving.iter_mut().filter_map(|e| e.ack.take()));
                if !unsynced_acks.is_empty() {
                    sync_and_ack(spool, unsynced_acks, self.index);
                }
                drop(tiers);
                self.room.notify_all();
                Ok(count)
            }
            Err(e) => {
                // Put everything back as it was: the queue in memory, the writer's events
                // (memory, then those read from the spool, in flight again) to the writer.
                spool.undo_rewind(rewound);
                *overflow = moving.split_off(from_memory).into();
                moving.extend(in_flight);
                Err((moving, e))
            }
        }
    }

    /// Writes the spool's buffered records out (they then survive a SIGKILL of the agent);
    /// when events waiting for an acknowledgement were spooled, syncs them to disk first and
    /// acknowledges them as spooled.
    fn flush_spool(&self) {
        let mut tiers = self.tiers.lock();
        let Tiers { spool, unsynced_acks, .. } = &mut *tiers;
        let Some(spool) = spool.as_mut() else { return };
        if !unsynced_acks.is_empty() {
            sync_and_ack(spool, unsynced_acks, self.index);
        } else {
            // A failure is the spool's state, logged by it once (it keeps the records readable).
            let _ = spool.flush();
            spool.probe_recovery();
        }
    }

    /// Syncs the spool to disk (shutdown).
    pub(crate) fn sync_spool(&self) -> std::io::Result<()> {
        match self.tiers.lock().spool.as_mut() {
            Some(spool) => spool.sync(),
            None => Ok(()),
        }
    }

    /// Nothing of this lane is waiting anywhere: not in the channel, the overflow or the spool.
    pub(crate) fn is_idle(&self) -> bool {
        let tiers = self.tiers.lock();
        self.rx.is_empty() && tiers.overflow.is_empty() && !tiers.spooling && tiers.after_spool.is_empty()
    }

    /// Fills `out` with the next batch, oldest first, waiting up to `wait` for a first event
    /// ([`Lane::take_batch`], then [`Lane::wait_for_events`]). Returns `false` once the lane is
    /// closed and empty.
    #[cfg(test)]
    pub(crate) fn next_batch(&self, max: usize, wait: Duration, window: Duration, out: &mut Vec<Envelope>) -> bool {
        let start = out.len();
        let open = self.take_batch(max, window, out);
        if out.len() > start || !open {
            return open;
        }
        self.wait_for_events(wait);
        self.take_batch(max, window, out)
    }

    /// Fills `out` with whatever is waiting, oldest first, up to `max`, without waiting: taken
    /// until the lane is momentarily empty or `window` has passed. Returns `false` once the
    /// lane is closed and empty.
    pub(crate) fn take_batch(&self, max: usize, window: Duration, out: &mut Vec<Envelope>) -> bool {
        let start = out.len();
        let started = Instant::now();
        while out.len() < max {
            match self.rx.try_recv() {
                Ok(e) => out.push(e),
                Err(_) => {
                    // The channel looked empty. Sources add to it only under the tiers lock, so
                    // take what reached it meanwhile first: it is older than the overflow.
                    let mut tiers = self.tiers.lock();
                    while out.len() < max {
                        match self.rx.try_recv() {
                            Ok(e) => out.push(e),
                            Err(_) => break,
                        }
                    }
                    if out.len() < max {
                        let read_spool = !self.closed.load(Ordering::Acquire);
                        tiers.take(max - out.len(), out, read_spool, &self.bytes);
                    }
                    break;
                }
            }
            if (out.len() - start).is_multiple_of(64) && started.elapsed() >= window {
                break;
            }
        }
        if out[start..].iter().any(|e| e.spool_pos.is_none()) {
            self.release(&out[start..]);
            self.room.notify_all();
        }
        out.len() > start || !self.closed.load(Ordering::Acquire) || self.depth() > 0
    }

    /// Waits up to `wait` for an event to arrive in the channel, without taking it (the
    /// writer takes events only while it holds its write lock, see `sink::writer`).
    pub(crate) fn wait_for_events(&self, wait: Duration) {
        if self.rx.is_empty() {
            self.doorbell.sleep_unless(wait, || !self.rx.is_empty());
        }
    }

    /// Memory events leaving the lane give their bytes back.
    fn release(&self, events: &[Envelope]) {
        let bytes: usize = events.iter().filter(|e| e.spool_pos.is_none()).map(footprint).sum();
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Takes the events of sources that keep their own out of `events` (in order, the rest keep
/// theirs) and tells each source it has its event back; returns them (for their memory bytes).
fn hand_back(events: &mut Vec<Envelope>) -> Vec<Envelope> {
    if !events.iter().any(|e| e.source.keeps_its_events()) {
        return Vec::new();
    }
    let (mut back, keep): (Vec<Envelope>, Vec<Envelope>) =
        std::mem::take(events).into_iter().partition(|e| e.source.keeps_its_events());
    *events = keep;
    for envelope in &mut back {
        metrics().events.deferred.with_label_values(&[envelope.source.label()]).inc();
        if let Some(ack) = envelope.ack.take() {
            ack.resolve(AckStatus::Deferred);
        }
    }
    back
}

/// Reads up to `n` spooled events into `out`; those served from the spool's write buffer
/// (it could not write them) count as memory from now on.
fn read_spool_into(spool: &mut LaneSpool, n: usize, out: &mut Vec<Envelope>, bytes: &AtomicUsize) {
    let before = out.len();
    if let Err(e) = spool.read_batch(n, out) {
        if let Some(suppressed) = READ_ERROR.check() {
            tracing::error!(error = %e, suppressed, "cannot read the spool; will retry");
        }
    }
    let buffered: usize = out[before..].iter().filter(|e| e.spool_pos.is_none()).map(footprint).sum();
    bytes.fetch_add(buffered, Ordering::AcqRel);
}

/// Syncs the spool and acknowledges `acks` as spooled; on failure they wait for the next
/// sync (their sources time out meanwhile, and the events are still written once).
fn sync_and_ack(spool: &mut LaneSpool, acks: &mut Vec<AckToken>, lane: usize) {
    match spool.sync() {
        Ok(()) => acks.drain(..).for_each(|ack| ack.resolve(AckStatus::Spooled)),
        Err(e) => {
            if let Some(suppressed) = FLUSH_WARN.check() {
                tracing::error!(error = %e, lane, waiting = acks.len(), suppressed, "cannot sync the spool; acknowledgements wait");
            }
        }
    }
}

impl Tiers {
    fn spool_one(&mut self, mut envelope: Envelope) -> Submitted {
        let Some(spool) = self.spool.as_mut() else {
            return Submitted::Full(Box::new(envelope), "memory_full");
        };
        match spool.append(&envelope) {
            Ok(()) => {
                self.spooling = true;
                self.unsynced_acks.extend(envelope.ack.take());
                Submitted::Spooled
            }
            // Counted and logged (rate-limited) by whoever gets it back; the spool logs its
            // own failing state once.
            Err(e) => Submitted::Full(Box::new(envelope), e.reason()),
        }
    }

    /// Takes up to `n` events from the overflow, then (unless `closed`: the spool keeps them
    /// across the restart) from the spool. Events the spool served from its write buffer are
    /// in memory now: their bytes are added to `bytes`, which taking them gives back.
    fn take(&mut self, n: usize, out: &mut Vec<Envelope>, read_spool: bool, bytes: &AtomicUsize) {
        let from_overflow = n.min(self.overflow.len());
        out.extend(self.overflow.drain(..from_overflow));
        let mut n = n - from_overflow;
        if n == 0 || !self.overflow.is_empty() {
            return;
        }
        // Events waiting behind the spool need it read, also while closing.
        let read_spool = read_spool || !self.after_spool.is_empty();
        if self.spooling && read_spool {
            if let Some(spool) = self.spool.as_mut() {
                let before = out.len();
                read_spool_into(spool, n, out, bytes);
                n -= out.len() - before;
                self.spooling = spool.has_unread();
            }
        }
        if !self.spooling {
            let from_after = n.min(self.after_spool.len());
            out.extend(self.after_spool.drain(..from_after));
        }
    }
}

/// All lanes, and the choice of lane by call.
pub struct Pipeline {
    lanes: Vec<Arc<Lane>>,
    /// Each lane's writer, for [`Pipeline::write_or_submit`] (once the writers exist).
    writers: OnceLock<Vec<Arc<dyn WriteNow>>>,
}

/// Size of each lane: the channel, and the overflow behind it.
#[derive(Debug, Clone, Copy)]
pub struct PipelineShape {
    pub lanes: usize,
    pub channel_capacity: usize,
    pub overflow_capacity: usize,
    /// Bytes of events a lane holds in memory (channel and overflow together).
    pub max_bytes: usize,
}

impl PipelineShape {
    /// Splits `buffer_size` events and `max_bytes` bytes of memory over `lanes`: a channel of
    /// up to 4096 events each, the rest as overflow.
    pub(crate) fn from_buffer(lanes: usize, buffer_size: usize, max_bytes: u64) -> PipelineShape {
        let lanes = lanes.max(1);
        let per_lane = (buffer_size / lanes).max(2);
        let channel_capacity = (per_lane / 2).clamp(1, 4096);
        let max_bytes = usize::try_from(max_bytes / lanes as u64).unwrap_or(usize::MAX);
        PipelineShape { lanes, channel_capacity, overflow_capacity: per_lane - channel_capacity, max_bytes }
    }
}

impl Pipeline {
    /// Lanes without a spool: events past memory are handed back.
    pub fn new(shape: PipelineShape) -> Arc<Pipeline> {
        Self::with_spools(shape, (0..shape.lanes).map(|_| None).collect())
    }

    /// Lanes each backed by its spool (`spools.len()` must equal `shape.lanes`).
    pub(crate) fn with_spools(shape: PipelineShape, spools: Vec<Option<LaneSpool>>) -> Arc<Pipeline> {
        assert_eq!(spools.len(), shape.lanes, "one spool slot per lane");
        let lanes = spools.into_iter().enumerate().map(|(i, spool)| Arc::new(Lane::new(i, shape, spool))).collect();
        Arc::new(Pipeline { lanes, writers: OnceLock::new() })
    }

    pub(crate) fn lanes(&self) -> &[Arc<Lane>] {
        &self.lanes
    }

    /// The lane an ordering key maps to.
    pub(crate) fn lane_for(&self, key: &str) -> usize {
        lane_for(key, self.lanes.len())
    }

    /// Puts an event on its lane without ever waiting.
    pub fn submit(&self, envelope: Envelope) -> Submitted {
        self.submit_by(envelope, None)
    }

    /// Puts an event on its lane; when the lane's memory is full, waits for room until
    /// `wait_until` (if any) before spooling it.
    pub(crate) fn submit_by(&self, envelope: Envelope, wait_until: Option<Instant>) -> Submitted {
        let lane = self.lane_for(&envelope.ordering_key);
        self.lanes[lane].submit(envelope, wait_until)
    }

    /// Lets sources offer events to the lanes' writers (`writers[i]` writes lane `i`).
    pub(crate) fn attach_writers(&self, writers: Vec<Arc<dyn WriteNow>>) {
        assert_eq!(writers.len(), self.lanes.len(), "one writer per lane");
        let _ = self.writers.set(writers);
    }

    /// For a source with nothing else to do right now: the lane's writer writes the event at
    /// once if the lane is idle; otherwise it goes on the lane as with [`Pipeline::submit_by`].
    pub(crate) fn write_or_submit(&self, envelope: Envelope, wait_until: Option<Instant>) -> Submitted {
        let lane = self.lane_for(&envelope.ordering_key);
        let envelope = match self.writers.get() {
            Some(writers) => match writers[lane].write_now(envelope) {
                Ok(()) => return Submitted::Written,
                Err(envelope) => envelope,
            },
            None => envelope,
        };
        self.lanes[lane].submit(envelope, wait_until)
    }

    /// Writes every lane's buffered spool records out: sources call it after each read, so
    /// what a read brought in is either in memory or in the spool files; spooled events that
    /// wait for an acknowledgement are synced to disk and acknowledged.
    pub(crate) fn flush_spools(&self) {
        for lane in &self.lanes {
            lane.flush_spool();
        }
    }

    /// No more events will be submitted: writers drain their lanes and stop.
    pub fn close(&self) {
        for lane in &self.lanes {
            lane.closed.store(true, Ordering::Release);
            lane.room.notify_all();
            lane.doorbell.ring();
        }
    }

    /// Whether `bytes` more of events can be taken now without dropping any: the spool has room
    /// for them and can write, or memory has room (a source that must accept all or nothing
    /// asks first).
    pub(crate) fn has_room(&self, bytes: u64) -> bool {
        let max_memory: u64 = self.lanes.iter().map(|l| l.max_bytes as u64).sum();
        if self.memory_bytes().saturating_add(bytes) <= max_memory {
            return true;
        }
        let Some(lane) = self.lanes.first() else { return false };
        let tiers = lane.tiers.lock();
        tiers.spool.as_ref().is_some_and(|s| s.failing().is_none() && s.check_room(bytes).is_ok())
    }

    /// Bytes of the events waiting in memory across all lanes.
    pub(crate) fn memory_bytes(&self) -> u64 {
        self.lanes.iter().map(|l| l.bytes.load(Ordering::Relaxed) as u64).sum()
    }

    /// Events waiting in memory across all lanes.
    pub fn depth(&self) -> usize {
        self.lanes.iter().map(|l| l.depth()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{BodyFormat, EventId, IdempotencyKey, Source, StreamTarget};

    fn env(call: &str, seq: u64) -> Envelope {
        let key = IdempotencyKey { producer: "core".into(), id: EventId::Seq(seq) };
        let stream = StreamTarget::new("s", 0, "events");
        Envelope {
            ordering_key: call.into(),
            ..Envelope::new(Source::Esl, stream, BodyFormat::EslPlain, bytes::Bytes::new(), key)
        }
    }

    fn seqs(events: &[Envelope]) -> Vec<u64> {
        events.iter().map(|e| e.key.id.seq().unwrap()).collect()
    }

    /// One lane of `channel` + `overflow` events in memory, backed by a spool in `dir`.
    fn one_spooled_lane(dir: &std::path::Path, channel: usize, overflow: usize) -> Arc<Pipeline> {
        let (spool, _) = LaneSpool::open(dir, crate::pipeline::spool::SpoolBudget::new(1 << 30)).unwrap();
        let shape =
            PipelineShape { lanes: 1, channel_capacity: channel, overflow_capacity: overflow, max_bytes: usize::MAX };
        Pipeline::with_spools(shape, vec![Some(spool)])
    }

    fn outbox_env(call: &str, seq: u64, ack: AckToken) -> Envelope {
        Envelope { source: Source::Outbox, ack: Some(ack), ..env(call, seq) }
    }

    /// The writer's sleep never misses an event: a writer that takes what is there and then
    /// sleeps for a minute gets 20,000 events submitted at uneven pace by another thread
    /// (bursts, single events, pauses) well before a lost wake-up would show; and closing
    /// the pipeline wakes it at once.
    #[test]
    fn a_sleeping_writer_is_woken_by_every_submit_and_by_close() {
        const N: u64 = 20_000;
        let shape = PipelineShape { lanes: 1, channel_capacity: 64, overflow_capacity: 1 << 20, max_bytes: usize::MAX };
        let p = Pipeline::with_spools(shape, vec![None]);
        let writer = {
            let p = p.clone();
            std::thread::spawn(move || {
                let lane = &p.lanes()[0];
                let (mut got, mut sleeps) = (Vec::new(), 0u64);
                let started = Instant::now();
                loop {
                    let mut batch = Vec::new();
                    let open = lane.take_batch(100, Duration::from_millis(1), &mut batch);
                    got.extend(seqs(&batch));
                    if !open {
                        break;
                    }
                    if batch.is_empty() {
                        sleeps += 1;
                        lane.wait_for_events(Duration::from_secs(60));
                    }
                    assert!(started.elapsed() < Duration::from_secs(50), "a wake-up was lost");
                }
                (got, sleeps)
            })
        };
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for seq in 0..N {
            p.submit(env("a", seq));
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            match rng % 1000 {
                0..=4 => std::thread::sleep(Duration::from_millis(2)),
                5..=300 => std::thread::yield_now(),
                _ => {}
            }
        }
        while p.lanes()[0].depth() > 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50)); // the writer is asleep again
        let closing = Instant::now();
        p.close();
        let (got, sleeps) = writer.join().unwrap();
        assert!(closing.elapsed() < Duration::from_secs(30), "close wakes the writer");
        assert_eq!(got, (0..N).collect::<Vec<_>>(), "every event, in order");
        assert!(sleeps > 10, "the writer did sleep between events ({sleeps} sleeps)");
    }

    #[test]
    fn events_their_source_keeps_never_reach_the_spool_and_go_back_when_it_would_spill() {
        let dir = tempfile::tempdir().unwrap();
        let p = one_spooled_lane(dir.path(), 2, 1);
        let lane = &p.lanes()[0];
        let (tokens, rx) = crate::ack::AckBatch::make(4);
        let mut tokens = tokens.into_iter();
        let mut outbox = |seq| outbox_env("a", seq, tokens.next().unwrap());
        assert!(matches!(p.submit(outbox(0)), Submitted::Queued));
        p.submit(env("a", 1));
        assert!(matches!(p.submit(env("a", 2)), Submitted::Overflowed));
        assert!(matches!(p.submit(env("a", 3)), Submitted::Spooled), "memory full: an ESL event spools");
        assert!(matches!(p.submit(outbox(4)), Submitted::Overflowed), "an outbox row waits in memory behind it");
        let mut batch = Vec::new();
        lane.next_batch(10, Duration::ZERO, Duration::from_secs(1), &mut batch);
        assert_eq!(seqs(&batch), [0, 1, 2, 3, 4]);
        // While writes fail, ESL events go to disk first; outbox rows wait in memory.
        lane.set_writes_failing(true);
        assert!(matches!(p.submit(outbox(5)), Submitted::Queued));
        assert!(matches!(p.submit(env("a", 6)), Submitted::Spooled));
        assert!(matches!(p.submit(outbox(7)), Submitted::Overflowed));
        // The writer gives up on its batch: the outbox rows (held, queued, waiting behind the
        // spool) go back to their source; the ESL events go to the spool, in order.
        assert_eq!(lane.spill(batch).unwrap(), 2, "1 and 2 from memory (3 is still in the spool)");
        let outcomes = rx.wait_blocking(Duration::from_secs(1)).unwrap();
        assert_eq!(outcomes, vec![AckStatus::Deferred; 4]);
        assert_eq!((lane.depth(), p.memory_bytes()), (0, 0));
        lane.set_writes_failing(false);
        let mut again = Vec::new();
        for _ in 0..5 {
            lane.next_batch(10, Duration::ZERO, Duration::from_secs(1), &mut again);
        }
        assert_eq!(seqs(&again), [1, 2, 3, 6], "only ESL events were spooled");
    }

    #[test]
    fn overflow_keeps_order_and_full_hands_back() {
        let p =
            Pipeline::new(PipelineShape { lanes: 1, channel_capacity: 2, overflow_capacity: 3, max_bytes: usize::MAX });
        let outcomes: Vec<_> = (0..6).map(|i| p.submit(env("a", i))).collect();
        assert!(matches!(outcomes[0], Submitted::Queued));
        assert!(matches!(outcomes[2], Submitted::Overflowed));
        assert!(matches!(outcomes[5], Submitted::Full(_, "memory_full")));
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
        assert_eq!(seqs(&got), [0, 1, 2, 3, 4, 6]);
    }

    #[test]
    fn spill_keeps_order_and_refuses_when_newer_events_are_queued_behind() {
        let dir = tempfile::tempdir().unwrap();
        let p = one_spooled_lane(dir.path(), 2, 0);
        for i in 0..6 {
            p.submit(env("a", i)); // 0,1 in the channel, 2..5 spooled
        }
        let lane = &p.lanes()[0];
        let mut batch = Vec::new();
        lane.next_batch(10, Duration::ZERO, Duration::from_secs(1), &mut batch);
        assert_eq!(batch.len(), 6, "channel then the whole spool");
        assert!(matches!(p.submit(env("a", 6)), Submitted::Queued), "spool read to its end: back to memory");
        // The write of the whole batch failed for good. 6 is newer than the batch's spooled
        // part (2..5) and cannot go behind it in the spool: nothing moves, the writer keeps it.
        let (held, e) = lane.spill(batch).unwrap_err();
        assert!(matches!(e, SpoolError::Behind), "{e}");
        assert_eq!(seqs(&held), (0..6).collect::<Vec<_>>());
        let mut got = held;
        for _ in 0..10 {
            lane.next_batch(10, Duration::ZERO, Duration::from_secs(1), &mut got);
        }
        assert_eq!(seqs(&got), (0..7).collect::<Vec<_>>(), "the batch (written by its writer), then 6");
        lane.commit(got.iter().filter_map(|e| e.spool_pos).max().unwrap()).unwrap(); // written
                                                                                     // With nothing queued behind it, a batch with spooled events goes back to the spool.
        for i in 7..10 {
            p.submit(env("a", i)); // 7, 8 in the channel, 9 spooled
        }
        let mut batch = Vec::new();
        lane.next_batch(10, Duration::ZERO, Duration::from_secs(1), &mut batch);
        assert_eq!(seqs(&batch), [7, 8, 9]);
        lane.spill(batch).unwrap();
        let mut again = Vec::new();
        for _ in 0..5 {
            lane.next_batch(10, Duration::ZERO, Duration::from_secs(1), &mut again);
        }
        assert_eq!(seqs(&again), [7, 8, 9]);
    }

    #[test]
    fn disk_first_while_writes_fail_and_what_the_spool_refuses_waits_behind_it() {
        let dir = tempfile::tempdir().unwrap();
        let two_records = 2 * crate::pipeline::spool::record::encoded_len(&env("a", 0));
        let (spool, _) = LaneSpool::open(dir.path(), crate::pipeline::spool::SpoolBudget::new(two_records)).unwrap();
        let shape = PipelineShape { lanes: 1, channel_capacity: 2, overflow_capacity: 2, max_bytes: usize::MAX };
        let p = Pipeline::with_spools(shape, vec![Some(spool)]);
        let lane = &p.lanes()[0];
        assert!(matches!(p.submit(env("a", 0)), Submitted::Queued));
        lane.set_writes_failing(true);
        assert!(matches!(p.submit(env("a", 1)), Submitted::Spooled), "disk first, with room in memory");
        assert!(matches!(p.submit(env("a", 2)), Submitted::Spooled));
        // The spool is full: newer events wait in memory, behind it, while they fit.
        assert!(matches!(p.submit(env("a", 3)), Submitted::Overflowed));
        assert!(matches!(p.submit(env("a", 4)), Submitted::Overflowed));
        assert!(matches!(p.submit(env("a", 5)), Submitted::Full(_, "spool_full")));
        lane.set_writes_failing(false);
        let mut got = Vec::new();
        for _ in 0..5 {
            lane.take_batch(10, Duration::from_secs(1), &mut got);
        }
        assert_eq!(seqs(&got), [0, 1, 2, 3, 4]);
        assert_eq!(lane.bytes.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_spill_that_does_not_fit_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = LaneSpool::open(dir.path(), crate::pipeline::spool::SpoolBudget::new(200)).unwrap();
        let shape = PipelineShape { lanes: 1, channel_capacity: 2, overflow_capacity: 2, max_bytes: usize::MAX };
        let p = Pipeline::with_spools(shape, vec![Some(spool)]);
        let lane = &p.lanes()[0];
        assert!(matches!(p.submit(env("a", 0)), Submitted::Queued));
        let mut held = Vec::new();
        lane.take_batch(10, Duration::from_secs(1), &mut held);
        for i in 1..5 {
            p.submit(env("a", i)); // 1, 2 in the channel; 3, 4 in the overflow
        }
        let (held, e) = lane.spill(held).unwrap_err();
        assert!(matches!(e, SpoolError::Full { .. }), "{e}");
        assert_eq!(seqs(&held), [0], "the writer keeps what it held");
        let mut rest = Vec::new();
        lane.take_batch(10, Duration::from_secs(1), &mut rest);
        assert_eq!(seqs(&rest), [1, 2, 3, 4], "the queue is where it was, in order");
    }

    #[test]
    fn a_full_lane_waits_for_room_until_the_deadline_then_spools() {
        let dir = tempfile::tempdir().unwrap();
        let p = one_spooled_lane(dir.path(), 1, 1);
        assert!(matches!(p.submit(env("a", 0)), Submitted::Queued));
        assert!(matches!(p.submit(env("a", 1)), Submitted::Overflowed));
        let lane = p.lanes()[0].clone();
        let taker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut batch = Vec::new();
            lane.next_batch(10, Duration::ZERO, Duration::from_secs(1), &mut batch);
            batch.len()
        });
        // Memory is full: this waits until the writer takes the batch, then goes to memory.
        let far = Instant::now() + Duration::from_secs(10);
        assert!(matches!(p.submit_by(env("a", 2), Some(far)), Submitted::Queued));
        assert_eq!(taker.join().unwrap(), 2);
        assert!(matches!(p.submit(env("a", 3)), Submitted::Overflowed));
        // Nobody takes: the wait ends at the deadline and the event is spooled, as are the
        // events after it (without waiting), until the spool is read back.
        let started = Instant::now();
        let soon = started + Duration::from_millis(30);
        assert!(matches!(p.submit_by(env("a", 4), Some(soon)), Submitted::Spooled));
        assert!(started.elapsed() >= Duration::from_millis(30));
        let started = Instant::now();
        assert!(matches!(p.submit_by(env("a", 5), Some(far)), Submitted::Spooled));
        assert!(started.elapsed() < Duration::from_secs(5), "a spooling lane does not wait");
        let mut got = Vec::new();
        for _ in 0..5 {
            p.lanes()[0].next_batch(10, Duration::ZERO, Duration::from_secs(1), &mut got);
        }
        assert_eq!(seqs(&got), [2, 3, 4, 5]);
    }

    #[test]
    fn memory_is_bounded_in_bytes_too() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = LaneSpool::open(dir.path(), crate::pipeline::spool::SpoolBudget::new(1 << 30)).unwrap();
        let big = |seq| Envelope { body: bytes::Bytes::from(vec![b'x'; 10_000]), ..env("a", seq) };
        let size = footprint(&big(0));
        let shape = PipelineShape { lanes: 1, channel_capacity: 100, overflow_capacity: 100, max_bytes: size * 5 / 2 };
        let p = Pipeline::with_spools(shape, vec![Some(spool)]);
        assert!(matches!(p.submit(big(0)), Submitted::Queued));
        assert!(matches!(p.submit(big(1)), Submitted::Queued));
        assert!(matches!(p.submit(big(2)), Submitted::Spooled), "a third would pass the byte bound");
        let mut got = Vec::new();
        while got.len() < 3 {
            p.lanes()[0].next_batch(10, Duration::ZERO, Duration::from_secs(1), &mut got);
        }
        assert_eq!(p.lanes()[0].bytes.load(Ordering::Acquire), 0, "taken events give their bytes back");
        // Alone in memory, an event fits whatever its size.
        let huge = Envelope { body: bytes::Bytes::from(vec![b'x'; size * 10]), ..env("a", 3) };
        assert!(matches!(p.submit(huge), Submitted::Queued));
        assert_eq!(seqs(&got), [0, 1, 2]);
    }

    #[test]
    fn spooled_events_are_acknowledged_only_once_synced() {
        use crate::ack::{AckBatch, AckStatus};
        let dir = tempfile::tempdir().unwrap();
        let p = one_spooled_lane(dir.path(), 1, 0);
        let (tokens, rx) = AckBatch::make(2);
        let mut events: Vec<Envelope> = (0..2).map(|i| env("a", i)).collect();
        for (e, t) in events.iter_mut().zip(tokens) {
            e.ack = Some(t);
        }
        let mut events = events.into_iter();
        assert!(matches!(p.submit(events.next().unwrap()), Submitted::Queued), "in memory: not acknowledged");
        assert!(matches!(p.submit(events.next().unwrap()), Submitted::Spooled));
        // The memory event is still the writer's to settle; the spooled one waits for a sync.
        let mut batch = Vec::new();
        p.lanes()[0].take_batch(1, Duration::from_secs(1), &mut batch);
        assert_eq!(batch.len(), 1);
        batch.pop().unwrap().ack.take().unwrap().resolve(AckStatus::Written("1-0".into()));
        p.flush_spools();
        let got = rx.wait_blocking(Duration::from_secs(1)).expect("both settled");
        assert_eq!(got, [AckStatus::Written("1-0".into()), AckStatus::Spooled]);
    }

    #[test]
    fn closed_lane_drains_then_stops() {
        let p = Pipeline::new(PipelineShape::from_buffer(2, 100, 1 << 20));
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

    /// Takes events while its lane is idle, as the real writer does, and records them.
    struct IdleTaker(Arc<Lane>, Mutex<Vec<u64>>);

    impl WriteNow for IdleTaker {
        fn write_now(&self, envelope: Envelope) -> Result<(), Envelope> {
            if !self.0.is_idle() {
                return Err(envelope);
            }
            self.1.lock().push(envelope.key.id.seq().unwrap());
            Ok(())
        }
    }

    #[test]
    fn write_or_submit_writes_only_through_an_idle_lane() {
        let dir = tempfile::tempdir().unwrap();
        let p = one_spooled_lane(dir.path(), 1, 1);
        assert!(matches!(p.write_or_submit(env("a", 0), None), Submitted::Queued), "no writer attached yet");
        let taker = Arc::new(IdleTaker(p.lanes()[0].clone(), Mutex::new(Vec::new())));
        p.attach_writers(vec![taker.clone()]);
        // Something older waits in each tier in turn: the event queues behind it.
        assert!(matches!(p.write_or_submit(env("a", 1), None), Submitted::Overflowed));
        assert!(matches!(p.write_or_submit(env("a", 2), None), Submitted::Spooled));
        let mut got = Vec::new();
        while got.len() < 3 {
            p.lanes()[0].next_batch(10, Duration::ZERO, Duration::from_secs(1), &mut got);
        }
        assert!(p.lanes()[0].is_idle(), "spool read to its end");
        assert!(matches!(p.write_or_submit(env("a", 3), None), Submitted::Written));
        assert!(matches!(p.submit(env("a", 4)), Submitted::Queued), "plain submit never writes");
        assert!(matches!(p.write_or_submit(env("a", 5), None), Submitted::Overflowed));
        assert_eq!(seqs(&got), [0, 1, 2]);
        assert_eq!(*taker.1.lock(), [3]);
    }
}
