//! The driver thread: decides what event goes out next (a retried event, an injected frame or
//! background job, a heartbeat, the next call event), paces it, encodes it once per format and
//! queues it for every subscribed connection whose filter matches (each connection's queue is
//! written out as its socket takes it, see `server::ConnOut`). Fault injection (dropping a
//! connection after N events, optionally mid-frame) happens here, because only the driver knows
//! frame boundaries.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::calls::{self, Traffic, TrafficConfig};
use super::capture_loop::CaptureLoop;
use super::server::{Conn, PushError, Subscription};
use super::wire::{Encoder, Format, SimEvent};
use super::{Fault, Injected, RawFrame, Shared};
use eslstream::envelope::now_us;

/// How long the driver sleeps at most before re-checking for work.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Bytes an unpaced run lets a listener have queued before it waits for the socket.
const UNPACED_QUEUE: usize = 1 << 20;
/// How long it sleeps at most while a listener has events queued that its socket did not take.
const BACKLOG_WAIT: Duration = Duration::from_millis(1);

/// How traffic is paced.
#[derive(Debug, Clone, Copy)]
enum Pacing {
    /// Calls follow real time (`--cps`).
    RealTime,
    /// A fixed number of events per second (`--rate`).
    Rate(f64),
    /// As fast as the clients read (the slowest of them: a benchmark, not a switch).
    Unpaced,
}

/// Something to write: a generated event or a verbatim frame.
enum Outgoing {
    Sim(SimEvent),
    Raw(RawFrame),
}

impl Outgoing {
    fn name(&self) -> (&str, Option<&str>) {
        match self {
            Outgoing::Sim(ev) => (ev.name, ev.subclass),
            Outgoing::Raw(raw) => (raw.name.as_str(), raw.subclass.as_deref()),
        }
    }
}

struct Target {
    conn: Arc<Conn>,
    sub: Subscription,
}

pub struct Driver {
    shared: Arc<Shared>,
    encoder: Encoder,
    traffic: Traffic,
    /// Real traffic instead of generated calls (`replay_loop`).
    capture: Option<CaptureLoop>,
    pacing: Pacing,
    targets: Vec<Target>,
    seen_version: u64,
    fault: Option<Fault>,
    fault_countdown: u64,
    retry: Option<Outgoing>,
    ready: VecDeque<SimEvent>,
    /// Origin of the traffic clock; moved forward while nobody listens.
    origin: Instant,
    idle_since: Option<Instant>,
    first_subscribed: Option<Instant>,
    next_heartbeat: Instant,
    produced: u64,
    traffic_sent: u64,
    plain: Vec<u8>,
    json: Vec<u8>,
}

impl Driver {
    pub fn new(shared: Arc<Shared>) -> Driver {
        let opts = &shared.opts;
        let capture = if opts.replay_loop { CaptureLoop::new(&opts.replay, opts.seed) } else { None };
        let pacing = match (opts.rate, opts.events) {
            (Some(r), _) if r.is_finite() && r > 0.0 => Pacing::Rate(r),
            (Some(_), _) | (None, Some(_)) => Pacing::Unpaced,
            (None, None) if capture.is_some() => Pacing::Unpaced,
            (None, None) => Pacing::RealTime,
        };
        let traffic =
            Traffic::new(TrafficConfig { cps: opts.cps, calls: opts.calls, size: opts.event_size, seed: opts.seed });
        let now = Instant::now();
        Driver {
            encoder: Encoder::new(&shared.identity),
            traffic,
            capture,
            pacing,
            targets: Vec::new(),
            seen_version: u64::MAX,
            fault: None,
            fault_countdown: 0,
            retry: None,
            ready: VecDeque::new(),
            origin: now,
            idle_since: Some(now),
            first_subscribed: None,
            next_heartbeat: now + opts.heartbeat,
            produced: 0,
            traffic_sent: 0,
            plain: Vec::with_capacity(64 << 10),
            json: Vec::with_capacity(64 << 10),
            shared,
        }
    }

    pub fn run(mut self) {
        while !self.shared.shutdown.load(Ordering::SeqCst) {
            self.step();
        }
        let _ = self.flush_all();
    }

    /// One turn of the loop: send one thing, or wait a little.
    fn step(&mut self) {
        self.refresh_targets();
        if self.targets.is_empty() || self.first_subscribed.is_none() {
            self.idle(IDLE_WAIT);
            return;
        }
        self.resume_clock();
        if let Some(out) = self.retry.take() {
            self.send(out);
        } else if let Some(injected) = self.shared.pop_injected() {
            let out = self.convert(injected);
            self.send(out);
        } else if self.traffic_over() {
            self.ready.clear();
            self.shared.set_done(true);
            self.idle(IDLE_WAIT);
        } else if let Some(wait) = self.pace() {
            self.idle(wait);
        } else if let Some(out) = self.next_traffic() {
            self.send(out);
        } else {
            // No call traffic (`cps` 0): only heartbeats and injected events.
            let until_heartbeat = self.next_heartbeat.saturating_duration_since(Instant::now());
            self.idle(until_heartbeat.min(IDLE_WAIT));
        }
    }

    fn refresh_targets(&mut self) {
        let version = self.shared.version.load(Ordering::SeqCst);
        if version == self.seen_version {
            return;
        }
        self.seen_version = version;
        let control = self.shared.control();
        self.targets = control
            .conns
            .iter()
            .filter_map(|c| c.sub.clone().map(|sub| Target { conn: c.conn.clone(), sub }))
            .collect();
        if control.fault != self.fault {
            self.fault = control.fault;
            self.fault_countdown = self.fault.map_or(0, |f| f.after_events);
        }
        if self.targets.len() >= self.shared.opts.min_listeners.max(1) && self.first_subscribed.is_none() {
            self.first_subscribed = Some(Instant::now());
        }
    }

    /// Writes what the listeners' sockets take, then waits for `wait` or until something
    /// changes (at most a millisecond while a listener still has events queued).
    fn idle(&mut self, wait: Duration) {
        let backlog = self.flush_all();
        let wait = if backlog { wait.min(BACKLOG_WAIT) } else { wait };
        if self.targets.is_empty() && self.idle_since.is_none() {
            self.idle_since = Some(Instant::now());
        }
        self.shared.wait(self.seen_version, wait);
    }

    /// The traffic clock does not run while nobody listens (no burst of "missed" calls later).
    fn resume_clock(&mut self) {
        if let Some(since) = self.idle_since.take() {
            self.origin += since.elapsed();
        }
    }

    fn traffic_over(&self) -> bool {
        let opts = &self.shared.opts;
        if opts.events.is_some_and(|n| self.traffic_sent >= n) {
            return true;
        }
        if opts.duration.is_some_and(|d| self.first_subscribed.is_some_and(|t| t.elapsed() >= d)) {
            return true;
        }
        opts.calls.is_some() && self.ready.is_empty() && self.traffic.next_due().is_none()
    }

    /// How long to wait before the next traffic event may go, if at all.
    fn pace(&mut self) -> Option<Duration> {
        let now = Instant::now();
        if self.ready.is_empty() && now >= self.next_heartbeat {
            self.queue_heartbeat();
            return None;
        }
        if !self.ready.is_empty() {
            return None;
        }
        let due = match self.pacing {
            Pacing::Unpaced => return None,
            Pacing::Rate(rate) => self.origin + Duration::from_secs_f64(self.produced as f64 / rate),
            Pacing::RealTime => match self.traffic.next_due() {
                Some(at) => self.origin + Duration::from_micros(at),
                None => self.next_heartbeat,
            },
        };
        let due = due.min(self.next_heartbeat);
        (due > now).then(|| due - now)
    }

    fn queue_heartbeat(&mut self) {
        let hb = self.shared.opts.heartbeat;
        self.next_heartbeat = Instant::now() + hb;
        let active = self.traffic.active_calls() as u64 * 2;
        self.ready.extend(calls::heartbeat(
            self.traffic.uptime_us(),
            active,
            self.traffic.calls_started(),
            hb.as_secs(),
        ));
    }

    fn next_traffic(&mut self) -> Option<Outgoing> {
        if let (true, Some(capture)) = (self.ready.is_empty(), &mut self.capture) {
            self.produced += 1;
            return Some(Outgoing::Raw(capture.next_frame(now_us())));
        }
        let mut ev = match self.ready.pop_front() {
            Some(ev) => ev,
            None => self.traffic.next_event()?,
        };
        self.produced += 1;
        ev.sequence = self.shared.next_sequence();
        let counters = &self.shared.counters;
        counters.calls.store(self.traffic.calls_started(), Ordering::Relaxed);
        counters.active_calls.store(self.traffic.active_calls() as u64, Ordering::Relaxed);
        Some(Outgoing::Sim(ev))
    }

    fn convert(&mut self, injected: Injected) -> Outgoing {
        match injected {
            Injected::Raw(raw) => Outgoing::Raw(raw),
            Injected::BackgroundJob { job_uuid, command, arg, body } => {
                let mut ev = calls::background_job(&job_uuid, &command, &arg, body);
                ev.sequence = self.shared.next_sequence();
                Outgoing::Sim(ev)
            }
        }
    }

    /// Writes `out` to every matching listener; keeps it for the next connection if a fault
    /// or an error kept it from reaching anyone.
    fn send(&mut self, out: Outgoing) {
        let (name, subclass) = out.name();
        let matching: Vec<usize> =
            (0..self.targets.len()).filter(|&i| self.targets[i].sub.matches(name, subclass)).collect();
        if matching.is_empty() {
            return;
        }
        let (mut plain, mut json) = (std::mem::take(&mut self.plain), std::mem::take(&mut self.json));
        plain.clear();
        json.clear();
        let now = now_us();
        let mut delivered = false;
        let mut lost = false;
        for i in matching {
            let frame: &[u8] = match &out {
                Outgoing::Raw(raw) => &raw.bytes,
                Outgoing::Sim(ev) => {
                    let buf = if self.targets[i].sub.format == Format::Json { &mut json } else { &mut plain };
                    if buf.is_empty() {
                        self.encoder.frame(ev, self.targets[i].sub.format, now, buf);
                    }
                    buf
                }
            };
            match self.write_to(i, frame) {
                Ok(()) => delivered = true,
                Err(()) => lost = true,
            }
        }
        let bytes = plain.len().max(json.len()) as u64;
        self.plain = plain;
        self.json = json;
        if delivered {
            self.count(&out, bytes);
        } else if lost {
            self.retry = Some(out);
        }
    }

    /// Writes one frame to target `i`, applying an armed fault. `Err` when it did not get there.
    fn write_to(&mut self, i: usize, frame: &[u8]) -> Result<(), ()> {
        let target = &self.targets[i];
        let mut conn = target.conn.lock();
        if conn.is_dead() {
            return Err(());
        }
        if let Some(fault) = self.fault {
            if self.fault_countdown == 0 {
                let cut_at = if fault.mid_frame { frame.len() / 2 } else { 0 };
                conn.cut(&frame[..cut_at]);
                self.shared.log(format_args!(
                    "fault: dropped connection {} after {} events{}",
                    target.conn.id,
                    fault.after_events,
                    if fault.mid_frame { " (mid-frame)" } else { "" }
                ));
                self.fault_countdown = fault.after_events;
                if !fault.repeat {
                    self.fault = None;
                    self.shared.clear_fault();
                }
                return Err(());
            }
        }
        match conn.push(frame) {
            Ok(()) => {
                self.fault_countdown = self.fault_countdown.saturating_sub(1);
                // Unpaced traffic goes as fast as the clients read: a full queue waits for
                // the socket instead of growing (paced traffic does not wait, as a switch).
                if matches!(self.pacing, Pacing::Unpaced) && conn.pending() >= UNPACED_QUEUE {
                    if let Err(e) = conn.write_all_queued() {
                        self.shared.log(format_args!("connection {}: write failed: {e}", target.conn.id));
                    }
                }
                Ok(())
            }
            Err(PushError::Full) => Err(()),
            Err(PushError::Closed) => {
                self.shared.log(format_args!(
                    "connection {}: closed (a write failed, or too many events lost to a full queue)",
                    target.conn.id
                ));
                Err(())
            }
        }
    }

    fn count(&mut self, out: &Outgoing, bytes: u64) {
        let counters = &self.shared.counters;
        counters.events_sent.fetch_add(1, Ordering::Relaxed);
        match out {
            Outgoing::Sim(ev) => {
                counters.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
                if ev.traffic {
                    self.traffic_sent += 1;
                    counters.traffic_sent.store(self.traffic_sent, Ordering::Relaxed);
                }
                counters.count_name(ev.name, ev.subclass);
            }
            Outgoing::Raw(raw) => {
                counters.bytes_sent.fetch_add(raw.bytes.len() as u64, Ordering::Relaxed);
                if raw.traffic {
                    self.traffic_sent += 1;
                    counters.traffic_sent.store(self.traffic_sent, Ordering::Relaxed);
                }
                counters.count_name(&raw.name, raw.subclass.as_deref());
            }
        }
    }

    /// Writes what each listener's socket takes now; whether any still has events queued.
    fn flush_all(&mut self) -> bool {
        let mut backlog = false;
        for target in &self.targets {
            let mut conn = target.conn.lock();
            if let Err(e) = conn.flush() {
                if e.kind() != std::io::ErrorKind::NotConnected {
                    self.shared.log(format_args!("connection {}: write failed: {e}", target.conn.id));
                }
            }
            backlog |= conn.pending() > 0;
        }
        backlog
    }
}
