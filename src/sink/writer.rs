//! A lane's writer: takes batches off its lane, turns events into entries, writes them
//! idempotently to Redis, and retries what was not acknowledged, in order.
//!
//! A failed write keeps the lane's head batch and retries it with capped exponential backoff
//! (a quarter of a second at most while Redis cannot be reached, 5 s while it answers with
//! errors; only the entries not yet acknowledged); newer events of the lane queue up behind it, so
//! per-call order holds. An entry Redis refuses for good is not retried.
//!
//! The writer's state sits behind one lock ([`LaneWriter`]), and events leave the lane only
//! while it is held: by the writer's thread, or by a source writing an event itself because
//! the lane was idle ([`WriteNow`]). Whoever holds the lock is the only one writing the lane,
//! so an event written at once can never pass an older one.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::IntCounter;
use rustc_hash::FxHashMap;
use tracing::{debug, error, info, info_span, warn};

use crate::ack::AckStatus;
use crate::config::Config;
use crate::envelope::{now_us, Envelope, Source};
use crate::pipeline::{Lane, WriteNow};
use crate::shutdown::Shutdown;
use crate::sink::dlq::DeadLetters;
use crate::sink::entry::EventField;
use crate::sink::redis::{Entry, EntryOutcome, Unanswered, WriteError};
use crate::sink::target::Sink;
use crate::state::AgentState;
use crate::telemetry::clock::seconds_between;
use crate::telemetry::logging::RateLimit;
use crate::telemetry::metrics::metrics;

/// The longest pause between two attempts at a failing write while Redis answers (with OOM,
/// LOADING, READONLY ...): it is busy, and more attempts would not help it.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The longest pause while there is no connection: the next attempt is a connect, which costs
/// next to nothing when it fails, so a Redis back from an outage is written to within a
/// quarter of a second (with a full memory buffer and disk, every moment of a longer pause
/// is events dropped).
const MAX_RECONNECT_PAUSE: Duration = Duration::from_millis(250);
/// How long a writer waits on an empty lane before checking for shutdown.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// The longest a source waits for Redis to answer an event it writes itself; past it the
/// connection is dropped and the event goes on the lane (marked as maybe written), so a
/// stalled Redis never holds the ESL reader for long.
const WRITE_NOW_TIMEOUT: Duration = Duration::from_millis(100);

static SLOW_WARN: RateLimit = RateLimit::new(Duration::from_secs(10));
static RETRY_WARN: RateLimit = RateLimit::new(Duration::from_secs(5));
static SPILL_WARN: RateLimit = RateLimit::new(Duration::from_secs(5));
static LOSSY_WARN: RateLimit = RateLimit::new(Duration::from_secs(60));
static DUPLICATE_INFO: RateLimit = RateLimit::new(Duration::from_secs(60));

/// A hot-standby pair's write fence as the writer reads it (the pair's own type is
/// `crate::ha::Fence`): whether ESL events may be written now, and with which lease epoch.
pub(crate) trait WriteFence: Send + Sync {
    /// `HA_GROUP`: names the streams' fence keys.
    fn group(&self) -> &str;
    /// The epoch writes carry now, if this agent may write the switch's events.
    fn current(&self) -> Option<u64>;
    /// A write carrying `epoch` was refused; the epoch writes carry now, if any.
    fn refused(&self, epoch: u64) -> Option<u64>;
}

/// What the pair's fence allows for one batch.
enum Fenced {
    Nothing,
    Epoch(u64),
    AllDropped,
}

/// One lane's writer: the lane, and the writer state behind the lock that makes its holder
/// the lane's only writer.
pub(crate) struct LaneWriter {
    lane: Arc<Lane>,
    config: Arc<Config>,
    core: Mutex<Writer>,
}

/// The writer's state: a Redis connection and what a write needs around it.
struct Writer {
    lane: Arc<Lane>,
    config: Arc<Config>,
    state: Arc<AgentState>,
    shutdown: Shutdown,
    dead_letters: Arc<DeadLetters>,
    sink: Option<Sink>,
    written: WrittenCounters,
    /// Entries already written, whose buffers the next batch reuses (up to one batch).
    spare_entries: Vec<Entry>,
    /// Consecutive failed attempts, for the backoff; reset by any successful write.
    backoff: u32,
    /// A hot-standby pair's fence (`HA_GROUP`): ESL events are written only under a lease.
    fence: Option<Arc<dyn WriteFence>>,
    /// Transactions sent on connections given up on, never answered: retired before the next
    /// write (see [`RedisSink::retire`](crate::sink::redis::RedisSink::retire)). Only a
    /// connection that sent a request adds one, and nothing is sent before they are retired,
    /// so this holds a few at most.
    unanswered: Vec<Unanswered>,
}

impl LaneWriter {
    /// The same writer, fencing the switch's events with the pair's lease.
    pub(crate) fn with_fence(self, fence: Arc<dyn WriteFence>) -> LaneWriter {
        self.core.lock().fence = Some(fence);
        self
    }

    pub(crate) fn new(
        lane: Arc<Lane>,
        config: Arc<Config>,
        state: Arc<AgentState>,
        shutdown: Shutdown,
        dead_letters: Arc<DeadLetters>,
    ) -> LaneWriter {
        let core = Writer {
            lane: lane.clone(),
            config: config.clone(),
            state,
            shutdown,
            dead_letters,
            sink: None,
            written: WrittenCounters::default(),
            spare_entries: Vec::new(),
            backoff: 0,
            fence: None,
            unanswered: Vec::new(),
        };
        LaneWriter { lane, config, core: Mutex::new(core) }
    }

    /// The writer's thread: runs until the lane is closed and drained (or the drain deadline
    /// passes).
    pub(crate) fn run(&self) {
        let lane = self.lane.index();
        let _span = info_span!("writer", lane).entered();
        let max = self.config.writer.batch_size;
        let window = self.config.writer.pipeline_timeout;
        let mut batch: Vec<Envelope> = Vec::with_capacity(max);
        let depth = metrics().lanes.queue_depth.with_label_values(&[&lane.to_string()]);
        let overflow = metrics().lanes.overflow_depth.with_label_values(&[&lane.to_string()]);
        // Shown at 0 from the start, so that alerts and rate() see the first retry.
        for kind in ["connection", "transient", "partial", "topology", "unconfirmed"] {
            metrics().writer.retries.with_label_values(&[kind]);
        }
        loop {
            let mut core = self.core.lock();
            let open = self.lane.take_batch(max, window, &mut batch);
            depth.set(self.lane.depth() as i64);
            overflow.set(self.lane.overflow_depth() as i64);
            if !batch.is_empty() {
                // Moved out by draining, so `batch` keeps its capacity for the next take.
                #[allow(clippy::drain_collect)]
                let pending: Vec<Envelope> = batch.drain(..).collect();
                let entries = core.prepare(&pending);
                core.write_until_done(pending, entries);
                continue;
            }
            drop(core);
            if !open {
                break;
            }
            self.lane.wait_for_events(IDLE_WAIT);
        }
        depth.set(0);
        self.core.lock().disconnect_quietly();
        debug!("writer drained and stopped");
    }
}

impl WriteNow for LaneWriter {
    fn write_now(&self, envelope: Envelope) -> Result<(), Envelope> {
        let Some(mut core) = self.core.try_lock() else {
            return Err(envelope); // the writer's thread is writing a batch
        };
        if core.sink.is_none() || core.backoff > 0 || !self.lane.is_idle() {
            return Err(envelope);
        }
        core.write_now(envelope)
    }
}

impl Writer {
    /// Writes one event at once, with one attempt and a short timeout; hands it back (marked
    /// as maybe written where that is so) for the writer's thread to retry if that fails.
    #[allow(clippy::result_large_err)] // see `WriteNow::write_now`
    fn write_now(&mut self, envelope: Envelope) -> Result<(), Envelope> {
        let mut pending = vec![envelope];
        let mut entries = self.prepare(&pending);
        let timeout = WRITE_NOW_TIMEOUT.min(self.config.redis.write_timeout);
        let mut maybe_written = pending[0].maybe_written;
        match self.attempt(&mut pending, &mut entries, &mut maybe_written, timeout) {
            Ok(()) => {
                metrics().esl.writes_now.inc();
                Ok(())
            }
            Err(_) => {
                // The writer's thread retries it, after a pause, in order with what follows.
                self.backoff = self.backoff.max(1);
                let mut envelope = pending.pop().expect("one event, not acknowledged");
                envelope.maybe_written |= maybe_written;
                Err(envelope)
            }
        }
    }

    /// The entry of each event of `batch` (reusing the buffers of entries already written).
    /// The event's JSON is made later, straight into the write request; an event that turns
    /// out not to be decodable then is counted and dropped (it can never be written).
    fn prepare(&mut self, batch: &[Envelope]) -> Vec<Entry> {
        let format = self.config.streams.entry_format;
        batch
            .iter()
            .map(|envelope| {
                let stream = (envelope.stream.key.as_str(), envelope.stream.max_len);
                let mut entry = self.spare_entries.pop().unwrap_or_default();
                let event = EventField::event(envelope.format, envelope.body.clone());
                entry.refill(format, stream, &envelope.name, &envelope.ordering_key, &envelope.key, event);
                entry
            })
            .collect()
    }

    /// Writes `entries` (parallel to `pending`) in order, retrying what Redis did not
    /// acknowledge. After `WRITER_RETRY_TTL` or `WRITER_MAX_RETRIES` of failures, what is held
    /// moves to the spool (with everything queued behind it) and is read back from there.
    fn write_until_done(&mut self, mut pending: Vec<Envelope>, mut entries: Vec<Entry>) {
        let mut failing_since: Option<Instant> = None;
        let mut failures: u32 = 0;
        let mut maybe_written = pending.iter().any(|e| e.maybe_written);
        while !pending.is_empty() {
            if self.shutdown.is_forced() {
                for envelope in &mut pending {
                    envelope.maybe_written |= maybe_written;
                }
                self.hand_off(pending, "drain deadline passed");
                return;
            }
            let before = pending.len();
            let timeout = self.config.redis.write_timeout;
            let Err(failure) = self.attempt(&mut pending, &mut entries, &mut maybe_written, timeout) else {
                break;
            };
            if pending.len() < before {
                failing_since = None;
            }
            failures += 1;
            let since = *failing_since.get_or_insert_with(Instant::now);
            if let Some(suppressed) = RETRY_WARN.check() {
                warn!(error = %failure, pending = pending.len(), failures, suppressed, "write failed; retrying");
            }
            let cfg = &self.config.writer;
            if since.elapsed() >= cfg.retry_ttl || failures > cfg.max_retries {
                for envelope in &mut pending {
                    envelope.maybe_written |= maybe_written;
                }
                match self.lane.spill(pending) {
                    Ok(moved) => {
                        metrics().writer.spills.inc();
                        warn!(moved, failing_for = ?since.elapsed(), "Redis is not accepting writes; events moved to the spool");
                        self.pause();
                        return;
                    }
                    Err((held, e)) => {
                        pending = held; // all of it, in order: nothing moved
                        failures = 0;
                        failing_since = None;
                        if let Some(suppressed) = SPILL_WARN.check() {
                            error!(error = %e, pending = pending.len(), suppressed, "cannot spool; holding events in memory and retrying");
                        }
                    }
                }
            }
            self.pause();
        }
    }

    /// One write of what is pending, waiting up to `timeout` for the reply: settles the
    /// acknowledged prefix (and commits its spool position); says what went wrong if anything
    /// is left.
    fn attempt(
        &mut self,
        pending: &mut Vec<Envelope>,
        entries: &mut Vec<Entry>,
        maybe_written: &mut bool,
        timeout: Duration,
    ) -> Result<(), String> {
        let epoch = match self.fence_for(pending, entries) {
            Fenced::Nothing => None,
            Fenced::Epoch(epoch) => Some(epoch),
            Fenced::AllDropped => return Ok(()),
        };
        let fence = self.fence.clone();
        // In a pair, what comes back from the spool may have been written by the other agent
        // meanwhile: it takes the checking path.
        if self.fence.is_some() && pending.iter().any(|e| e.spool_pos.is_some()) {
            *maybe_written = true;
        }
        let started = Instant::now();
        let mut retire = std::mem::take(&mut self.unanswered);
        let result = self.sink().and_then(|sink| {
            // Before anything is retried: a transaction that went unanswered must not run
            // after its retry (it does not check the dedup bits).
            if !retire.is_empty() {
                sink.retire(&retire)?;
                retire.clear();
            }
            sink.set_fence(fence.as_deref().zip(epoch).map(|(f, e)| (f.group(), e)));
            sink.set_reply_timeout(timeout)?;
            sink.write(entries, *maybe_written)
        });
        self.unanswered.append(&mut retire);
        if let Some(sink) = self.sink.as_mut() {
            self.unanswered.extend(sink.take_unanswered());
        }
        let outcomes = match result {
            Ok(outcomes) => outcomes,
            Err(WriteError::Fenced(why)) => {
                let now = match (&self.fence, epoch) {
                    (Some(fence), Some(epoch)) => fence.refused(epoch),
                    _ => None,
                };
                if now.is_some() {
                    // This agent took the lease again (a newer epoch) while the batch was on
                    // its way: the events are its own to write. Nothing of the batch was
                    // written; the retry carries the new epoch, through the checking path.
                    info!(error = %why, "a write carried this agent's previous lease epoch; retrying it under the new one");
                    *maybe_written = true;
                    return Err("fenced by this agent's newer lease".into());
                }
                // Another agent of the pair holds a newer lease and writes these events itself.
                warn!(error = %why, "this agent lost the pair's lease; the other agent writes the switch's events now");
                self.drop_live_esl(pending, entries);
                return if pending.is_empty() { Ok(()) } else { Err("fenced".into()) };
            }
            Err(e) => {
                metrics().writer.duration.with_label_values(&["error"]).observe(started.elapsed().as_secs_f64());
                // Disk first: until a write succeeds, the lane spools new events.
                self.lane.set_writes_failing(true);
                return Err(self.failed(e, maybe_written));
            }
        };
        metrics().writer.duration.with_label_values(&["ok"]).observe(started.elapsed().as_secs_f64());
        metrics().writer.batch_size.observe(entries.len() as f64);
        let done = outcomes.iter().take_while(|o| **o != EntryOutcome::Pending).count();
        let acked_at = now_us();
        let mut last_spooled = None;
        for ((envelope, mut entry), outcome) in pending.drain(..done).zip(entries.drain(..done)).zip(outcomes) {
            last_spooled = envelope.spool_pos.or(last_spooled);
            self.settle(envelope, &entry, outcome, acked_at);
            if self.spare_entries.len() < self.config.writer.batch_size {
                // Not the event: its bytes would keep the read buffer they are part of.
                entry.event = EventField::Json(Vec::new());
                self.spare_entries.push(entry);
            }
        }
        if let Some(pos) = last_spooled {
            if let Err(e) = self.lane.commit(pos) {
                error!(error = %e, "cannot record spool progress; those events may be re-sent (duplicates are suppressed)");
            }
        }
        if done > 0 {
            self.backoff = 0;
            self.lane.set_writes_failing(false);
        }
        if pending.is_empty() {
            return Ok(());
        }
        // What is left may have been written (a cluster node that failed after others
        // succeeded, a batch cut short): the retry checks.
        *maybe_written = true;
        metrics().writer.retries.with_label_values(&["partial"]).inc();
        Err("partial write".to_owned())
    }

    /// What the pair's fence allows for this batch: no fence (no pair, or no ESL event in
    /// it), the epoch to carry, or nothing left once live ESL events are dropped because
    /// another agent holds the lease (it writes them; events read back from the spool are
    /// still written, unfenced: the other agent may never have seen them).
    fn fence_for(&mut self, pending: &mut Vec<Envelope>, entries: &mut Vec<Entry>) -> Fenced {
        let Some(fence) = self.fence.clone() else { return Fenced::Nothing };
        if !pending.iter().any(|e| e.source == Source::Esl) {
            return Fenced::Nothing;
        }
        if let Some(epoch) = fence.current() {
            return Fenced::Epoch(epoch);
        }
        self.drop_live_esl(pending, entries);
        if pending.is_empty() {
            Fenced::AllDropped
        } else {
            Fenced::Nothing
        }
    }

    /// Takes the live ESL events (not read back from the spool) out of the batch: the pair's
    /// active agent writes them. Counted in `eslstream_ha_fenced_total`.
    fn drop_live_esl(&mut self, pending: &mut Vec<Envelope>, entries: &mut Vec<Entry>) {
        let (mut kept, mut kept_entries) = (Vec::with_capacity(pending.len()), Vec::with_capacity(entries.len()));
        let mut dropped = 0u64;
        for (envelope, entry) in pending.drain(..).zip(entries.drain(..)) {
            if envelope.source == Source::Esl && envelope.spool_pos.is_none() {
                dropped += 1;
                if self.spare_entries.len() < self.config.writer.batch_size {
                    self.spare_entries.push(entry);
                }
            } else {
                kept.push(envelope);
                kept_entries.push(entry);
            }
        }
        (*pending, *entries) = (kept, kept_entries);
        metrics().ha.fenced.inc_by(dropped);
    }

    /// Records a failed write; after a lost connection, a reply from a node that is no longer
    /// the primary, or a `WAIT` short of replicas, the request may have been executed. A lost
    /// connection or a node that is not the primary also drops the connection, so the next
    /// attempt finds the primary again (a cluster sink re-reads its slot map itself).
    fn failed(&mut self, e: WriteError, maybe_written: &mut bool) -> String {
        metrics().writer.retries.with_label_values(&[e.kind()]).inc();
        self.state.record_error(e.to_string());
        if e.maybe_written() {
            *maybe_written = true;
        }
        let cluster = matches!(self.sink, Some(Sink::Cluster(_)));
        if matches!(e, WriteError::Connection(_)) || (matches!(e, WriteError::Topology(_)) && !cluster) {
            self.disconnect();
        }
        e.to_string()
    }

    /// Waits before the next attempt: capped exponential backoff (capped lower while there is
    /// no connection), cut short by a forced shutdown.
    fn pause(&mut self) {
        let cap = if self.sink.is_none() { MAX_RECONNECT_PAUSE } else { MAX_BACKOFF };
        let pause = backoff(self.config.writer.retry_pause, self.backoff, cap);
        self.backoff = self.backoff.saturating_add(1);
        let until = Instant::now() + pause;
        while Instant::now() < until && !self.shutdown.is_forced() {
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
    }

    /// Shutdown could not wait for Redis: put what is held into the spool, or count it lost.
    fn hand_off(&mut self, pending: Vec<Envelope>, why: &str) {
        match self.lane.spill(pending) {
            Ok(moved) => info!(moved, why, "unwritten events moved to the spool for the next start"),
            Err((held, e)) => {
                for envelope in held {
                    self.drop_event(envelope, "shutdown", &format!("{why}; spool unavailable: {e}"));
                }
            }
        }
    }

    /// Records what became of one event, and tells its source when it asked.
    fn settle(&mut self, mut envelope: Envelope, entry: &Entry, outcome: EntryOutcome, acked_at: i64) {
        if entry.event.was_lossy() {
            metrics().events.lossy_decodes.inc();
            if let Some(suppressed) = LOSSY_WARN.check() {
                warn!(event = %envelope.name, producer = %envelope.key.producer, id = %envelope.key.id.text(), suppressed, "an event value is not UTF-8 once percent-decoded; stored with U+FFFD in its place");
            }
        }
        let status = match outcome {
            EntryOutcome::Written(id) => AckStatus::Written(id),
            EntryOutcome::Duplicate => {
                metrics().events.duplicates_suppressed.inc();
                if let Some(suppressed) = DUPLICATE_INFO.check() {
                    info!(event = %envelope.name, producer = %envelope.key.producer, id = %envelope.key.id.text(), source = envelope.source.label(), suppressed, "event already written (same idempotency key); not written again");
                }
                AckStatus::Duplicate
            }
            EntryOutcome::Rejected(reason) => {
                match self.dead_letters.add(entry, &envelope.name, &envelope.ordering_key, &reason) {
                    Ok(id) => {
                        metrics()
                            .events
                            .dead_lettered
                            .with_label_values(&[envelope.stream.label, envelope.source.label()])
                            .inc();
                        error!(dead_letter = %id, error = %reason, event = %envelope.name, key = %envelope.ordering_key, source = envelope.source.label(), "Redis refused the event; kept as a dead letter (GET /dlq)");
                        if let Some(ack) = envelope.ack.take() {
                            ack.resolve(AckStatus::DeadLettered(id));
                        }
                    }
                    Err(e) => self.drop_event(envelope, "rejected", &format!("{reason}; dead-letter store: {e}")),
                }
                return;
            }
            EntryOutcome::Undecodable(reason) => return self.drop_event(envelope, "undecodable", &reason),
            EntryOutcome::Pending => unreachable!("pending entries are retried, not settled"),
        };
        self.written.inc(envelope.stream.label, envelope.source, &envelope.name);
        self.state.add_written(envelope.source);
        let writer = seconds_between(envelope.parsed_at_us, acked_at);
        metrics().latency.writer.observe(writer);
        let total = envelope.timestamp_us.map(|ts| seconds_between(ts, acked_at));
        if let Some(total) = total {
            metrics().latency.total.observe(total);
        }
        let limits = &self.config.latency;
        if writer > limits.writer.as_secs_f64() || total.is_some_and(|t| t > limits.total.as_secs_f64()) {
            if let Some(suppressed) = SLOW_WARN.check() {
                warn!(event = %envelope.name, key = %envelope.ordering_key, writer_seconds = writer, total_seconds = total, suppressed, "event over latency threshold");
            }
        }
        if let Some(ack) = envelope.ack.take() {
            ack.resolve(status);
        }
    }

    /// An event that will never be written: counted, logged, and its source told.
    fn drop_event(&self, mut envelope: Envelope, reason: &'static str, detail: &str) {
        let source = envelope.source;
        metrics().events.dropped.with_label_values(&[envelope.stream.label, reason, source.label()]).inc();
        self.state.add_dropped(source, 1);
        error!(reason, detail, source = source.label(), event = %envelope.name, key = %envelope.ordering_key, producer = %envelope.key.producer, id = %envelope.key.id.text(), "event dropped");
        if let Some(ack) = envelope.ack.take() {
            ack.resolve(AckStatus::Dropped(reason));
        }
    }

    fn sink(&mut self) -> Result<&mut Sink, WriteError> {
        if self.sink.is_none() {
            let mut sink = Sink::connect(&self.config.redis)?;
            sink.set_dedup_keys_ttl(self.config.http_ingress.idempotency_ttl);
            info!(server = sink.server().unwrap_or("not yet known"), at = %sink.location(), "connected to Redis");
            self.state.redis_writers_up.fetch_add(1, Ordering::Relaxed);
            metrics().writer.redis_connected.inc();
            self.sink = Some(sink);
        }
        Ok(self.sink.as_mut().expect("connected above"))
    }

    /// Closes the connection at the end of the writer's run.
    fn disconnect_quietly(&mut self) {
        if self.sink.take().is_some() {
            self.state.redis_writers_up.fetch_sub(1, Ordering::Relaxed);
            metrics().writer.redis_connected.dec();
        }
    }

    fn disconnect(&mut self) {
        if self.sink.take().is_some() {
            self.state.redis_writers_up.fetch_sub(1, Ordering::Relaxed);
            metrics().writer.redis_connected.dec();
            metrics().writer.redis_reconnections.inc();
        }
    }
}

/// `eslstream_events_written_total` by stream, source and event name, each looked up once (a
/// label lookup hashes every label and takes a lock: once per event otherwise). Keyed with
/// rustc's Fx hash, not the default SipHash: it is looked up for every event written, and it is
/// bounded ([`WrittenCounters::MAX_NAMES`]), so flooding it with names costs nothing.
#[derive(Default)]
struct WrittenCounters(FxHashMap<String, Vec<(CounterSlot, IntCounter)>>);

/// The stream label and source a counter of one event name is for.
type CounterSlot = (&'static str, Source);

impl WrittenCounters {
    /// Names seen past this many are looked up each time (names come off the wire).
    const MAX_NAMES: usize = 256;

    fn inc(&mut self, stream: &'static str, source: Source, name: &str) {
        let slot = (stream, source);
        if let Some((_, counter)) = self.0.get(name).and_then(|c| c.iter().find(|(s, _)| *s == slot)) {
            counter.inc();
            return;
        }
        let counter = metrics().events.written.with_label_values(&[stream, event_label(name), source.label()]);
        counter.inc();
        if self.0.len() < Self::MAX_NAMES || self.0.contains_key(name) {
            self.0.entry(name.to_owned()).or_default().push((slot, counter));
        }
    }
}

/// Event names as a bounded label set: FreeSWITCH's own names pass, anything else is `other`.
pub(crate) fn event_label(name: &str) -> &str {
    const KNOWN: &[&str] = &[
        "CHANNEL_CREATE",
        "CHANNEL_DESTROY",
        "CHANNEL_STATE",
        "CHANNEL_CALLSTATE",
        "CHANNEL_ANSWER",
        "CHANNEL_HANGUP",
        "CHANNEL_HANGUP_COMPLETE",
        "CHANNEL_EXECUTE",
        "CHANNEL_EXECUTE_COMPLETE",
        "CHANNEL_HOLD",
        "CHANNEL_UNHOLD",
        "CHANNEL_BRIDGE",
        "CHANNEL_UNBRIDGE",
        "CHANNEL_PROGRESS",
        "CHANNEL_PROGRESS_MEDIA",
        "CHANNEL_OUTGOING",
        "CHANNEL_PARK",
        "CHANNEL_UNPARK",
        "CHANNEL_APPLICATION",
        "CHANNEL_ORIGINATE",
        "CHANNEL_UUID",
        "CALL_UPDATE",
        "CODEC",
        "DTMF",
        "API",
        "BACKGROUND_JOB",
        "CUSTOM",
        "HEARTBEAT",
        "RE_SCHEDULE",
        "PRESENCE_IN",
        "PRESENCE_OUT",
        "MESSAGE",
        "RECORD_START",
        "RECORD_STOP",
        "PLAYBACK_START",
        "PLAYBACK_STOP",
        "DETECTED_SPEECH",
        "DETECTED_TONE",
        "CALL_SECURE",
        "MEDIA_BUG_START",
        "MEDIA_BUG_STOP",
        "CONFERENCE_DATA",
        "SHUTDOWN",
        "STARTUP",
        "LOG",
    ];
    KNOWN.iter().find(|k| **k == name).copied().unwrap_or("other")
}

/// Capped exponential backoff: `base * 2^attempt`, never above `max`.
pub(crate) fn backoff(base: Duration, attempt: u32, max: Duration) -> Duration {
    base.saturating_mul(1u32 << attempt.min(16)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        let b = Duration::from_millis(100);
        assert_eq!(backoff(b, 0, Duration::from_secs(5)), b);
        assert_eq!(backoff(b, 3, Duration::from_secs(5)), Duration::from_millis(800));
        assert_eq!(backoff(b, 30, Duration::from_secs(5)), Duration::from_secs(5));
    }
}
