//! `eslstream simulate`: a fake FreeSWITCH inbound event socket for demos, benches and tests.
//!
//! It speaks the real protocol byte for byte (see `esl-captures/CAPTURES.md`) and plays
//! realistic, interleaved call traffic, or replays captured frames, to every client that
//! subscribed with `event plain|json ...`. Tests drive it through [`Simulator`]; the binary
//! mounts [`SimulateArgs`] / [`run_cli`].
//!
//! Layout: [`wire`] (event model and encoding), [`calls`] (call lifecycles), `driver` (pacing,
//! delivery, fault injection), `server` (sockets and commands), `cli` (the command line).
//!
//! Delivery model: events are generated only while at least one client is subscribed, so
//! nothing generated is lost between connections; an event cut by an injected fault is sent
//! again, whole, on the next connection. `Event-Sequence` comes from one counter per process.
//! As in FreeSWITCH's `mod_event_socket`, each client has its own queue (at most 100,000
//! events; past 500 events lost to a full queue it is disconnected), so a client that stops
//! reading holds no other up; unpaced runs go as fast as the slowest client reads.

pub mod calls;
mod capture_loop;
mod cli;
mod driver;
mod server;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use calls::EventSize;
pub use cli::{parse_count, parse_duration, run_cli, SimulateArgs};
use server::{Conn, Subscription};
use wire::{Identity, Rng};

/// Everything a simulator run can be asked to do.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// Address to listen on; port 0 picks a free port ([`Simulator::local_addr`]).
    pub listen: SocketAddr,
    pub password: String,
    /// New calls per second (each call is two legs, ~40 events).
    pub cps: f64,
    /// Target events per second instead of real-time calls; `Some(inf)` or `Some(0)` = unpaced.
    pub rate: Option<f64>,
    /// Send exactly this many traffic events (unpaced unless `rate` is set), then stop sending.
    pub events: Option<u64>,
    /// Stop after this many calls have completed.
    pub calls: Option<u64>,
    /// Stop sending this long after the first subscription.
    pub duration: Option<Duration>,
    /// HEARTBEAT (+ RE_SCHEDULE) interval.
    pub heartbeat: Duration,
    /// First `Event-Sequence` of the process.
    pub start_sequence: u64,
    /// Seed of the traffic shape (call kinds, timings).
    pub seed: u64,
    /// No progress lines or logs on stderr.
    pub quiet: bool,
    pub event_size: EventSize,
    /// Complete frames (`Content-Length ... text/event-*`) to send, verbatim, before any
    /// generated traffic, to the first subscribed client(s). See [`event_frames`].
    pub replay: Vec<Vec<u8>>,
    /// Send `replay` over and over as the traffic instead of generated calls (each pass with
    /// a new `Core-UUID` and the time of sending in `Event-Date-Timestamp`, see
    /// `capture_loop`); `events` and `rate` count and pace them, unpaced without `rate`.
    pub replay_loop: bool,
    /// Drop connections after some events (fault injection).
    pub fault: Option<Fault>,
    /// `FreeSWITCH-Hostname` / `FreeSWITCH-Switchname`.
    pub hostname: String,
    /// Traffic starts once this many listeners are subscribed (a hot-standby pair: both see
    /// every event from the first). Every subscribed listener gets every event it asked for,
    /// as FreeSWITCH sends them; once traffic runs, it goes on for whoever is still there.
    pub min_listeners: usize,
}

impl Default for SimulateOptions {
    fn default() -> Self {
        SimulateOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            password: "ClueCon".into(),
            cps: 10.0,
            rate: None,
            events: None,
            calls: None,
            duration: None,
            heartbeat: Duration::from_secs(20),
            start_sequence: 1,
            seed: 1,
            quiet: true,
            event_size: EventSize::Avg,
            replay: Vec::new(),
            replay_loop: false,
            fault: None,
            hostname: "eslstream-sim".into(),
            min_listeners: 1,
        }
    }
}

/// Drop the connection that would receive the next event once `after_events` events have
/// been sent (counted over all connections since the fault was armed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub after_events: u64,
    /// Write the first half of that event's frame before closing.
    pub mid_frame: bool,
    /// Re-arm after each drop (every `after_events` events).
    pub repeat: bool,
}

/// A snapshot of what the simulator has done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Events queued whole for at least one client (traffic, replayed frames, background
    /// jobs); each client's queue is written out as its socket takes it.
    pub events_sent: u64,
    /// Generated traffic events sent (what `events` counts).
    pub traffic_sent: u64,
    pub bytes_sent: u64,
    /// Calls started.
    pub calls: u64,
    pub active_calls: u64,
    /// Clients connected now.
    pub connections: u64,
    /// Clients accepted since start.
    pub total_connections: u64,
    /// The next `Event-Sequence` to be used.
    pub next_sequence: u64,
    /// The requested traffic has all been sent.
    pub done: bool,
}

/// Work handed to the driver by other threads.
pub(crate) enum Injected {
    Raw(RawFrame),
    BackgroundJob { job_uuid: String, command: String, arg: String, body: String },
}

/// A complete event frame sent verbatim, with the name used to filter it.
pub(crate) struct RawFrame {
    pub bytes: Vec<u8>,
    pub name: String,
    pub subclass: Option<String>,
    /// Part of the traffic (a capture on a loop), counted as `traffic_sent`.
    pub traffic: bool,
}

pub(crate) struct ConnEntry {
    pub conn: Arc<Conn>,
    pub sub: Option<Subscription>,
}

pub(crate) struct Control {
    pub conns: Vec<ConnEntry>,
    pub injected: VecDeque<Injected>,
    pub fault: Option<Fault>,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub events_sent: AtomicU64,
    pub traffic_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub calls: AtomicU64,
    pub active_calls: AtomicU64,
    pub connections: AtomicU64,
    pub total_connections: AtomicU64,
    pub done: AtomicBool,
    by_name: Mutex<HashMap<String, u64>>,
}

impl Counters {
    pub fn count_name(&self, name: &str, subclass: Option<&str>) {
        let mut map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        let key_owned;
        let key = match subclass {
            Some(sub) => {
                key_owned = format!("{name} {sub}");
                key_owned.as_str()
            }
            None => name,
        };
        match map.get_mut(key) {
            Some(n) => *n += 1,
            None => {
                map.insert(key.to_owned(), 1);
            }
        }
    }

    fn top_names(&self, n: usize) -> Vec<(String, u64)> {
        let map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<(String, u64)> = map.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

/// State shared by the acceptor, the connection threads and the driver.
pub(crate) struct Shared {
    pub opts: SimulateOptions,
    pub identity: Identity,
    pub started: Instant,
    sequence: AtomicU64,
    control: Mutex<Control>,
    wake: Condvar,
    /// Bumped whenever connections, subscriptions or the fault change.
    pub version: AtomicU64,
    injected_len: AtomicUsize,
    pub shutdown: AtomicBool,
    pub counters: Counters,
}

impl Shared {
    pub fn log(&self, args: std::fmt::Arguments<'_>) {
        if !self.opts.quiet {
            eprintln!("simulate: {args}");
        }
    }

    pub fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_all();
    }

    pub fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::SeqCst)
    }

    pub fn add_conn(&self, conn: Arc<Conn>) {
        self.log(format_args!("client {} connected from {}", conn.id, conn.peer));
        self.control().conns.push(ConnEntry { conn, sub: None });
        self.counters.connections.fetch_add(1, Ordering::SeqCst);
        self.changed();
    }

    pub fn remove_conn(&self, id: u64) {
        let mut control = self.control();
        let before = control.conns.len();
        control.conns.retain(|c| c.conn.id != id);
        if control.conns.len() != before {
            self.counters.connections.fetch_sub(1, Ordering::SeqCst);
            self.log(format_args!("client {id} disconnected"));
        }
        drop(control);
        self.changed();
    }

    pub fn subscribe(&self, id: u64, words: &[&str]) -> Result<&'static str, String> {
        let mut control = self.control();
        let entry = control.conns.iter_mut().find(|c| c.conn.id == id).ok_or("-ERR not connected")?;
        let mut sub = entry.sub.clone().unwrap_or_default();
        let format = sub.add(words)?;
        entry.sub = Some(sub);
        drop(control);
        self.changed();
        Ok(format)
    }

    pub fn unsubscribe(&self, id: u64) {
        if let Some(entry) = self.control().conns.iter_mut().find(|c| c.conn.id == id) {
            entry.sub = None;
        }
        self.changed();
    }

    pub fn inject(&self, item: Injected) {
        self.control().injected.push_back(item);
        self.injected_len.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_all();
    }

    pub fn pop_injected(&self) -> Option<Injected> {
        if self.injected_len.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let item = self.control().injected.pop_front();
        if item.is_some() {
            self.injected_len.fetch_sub(1, Ordering::SeqCst);
        }
        item
    }

    pub fn clear_fault(&self) {
        self.control().fault = None;
    }

    pub fn set_done(&self, done: bool) {
        if self.counters.done.swap(done, Ordering::SeqCst) != done {
            self.wake.notify_all();
        }
    }

    /// Waits up to `timeout` unless something changed since `seen_version` or work is queued.
    pub fn wait(&self, seen_version: u64, timeout: Duration) {
        let control = self.control();
        if self.version.load(Ordering::SeqCst) != seen_version
            || !control.injected.is_empty()
            || self.shutdown.load(Ordering::SeqCst)
        {
            return;
        }
        let _ = self.wake.wait_timeout(control, timeout);
    }
}

/// A running simulator. Dropping it shuts it down.
pub struct Simulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl Simulator {
    /// Binds `opts.listen` and starts serving.
    pub fn start(mut opts: SimulateOptions) -> io::Result<Simulator> {
        let listener = TcpListener::bind(opts.listen)?;
        let addr = listener.local_addr()?;
        let identity = Identity { core_uuid: Rng::from_entropy().uuid_v4(), hostname: opts.hostname.clone() };
        let replay = if opts.replay_loop { Vec::new() } else { std::mem::take(&mut opts.replay) };
        let shared = Arc::new(Shared {
            sequence: AtomicU64::new(opts.start_sequence),
            control: Mutex::new(Control { conns: Vec::new(), injected: VecDeque::new(), fault: opts.fault }),
            opts,
            identity,
            started: Instant::now(),
            wake: Condvar::new(),
            version: AtomicU64::new(0),
            injected_len: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let sim_shared = shared.clone();
        let sim = Simulator { shared, addr, threads: Vec::new() };
        sim.push_frames(replay);
        let mut sim = sim;
        let accept_shared = sim_shared.clone();
        sim.threads.push(spawn("sim-accept", move || server::accept_loop(listener, accept_shared))?);
        let driver_shared = sim_shared.clone();
        sim.threads.push(spawn("sim-driver", move || driver::Driver::new(driver_shared).run())?);
        if !sim_shared.opts.quiet {
            let progress_shared = sim_shared.clone();
            sim.threads.push(spawn("sim-progress", move || cli::progress_loop(&progress_shared))?);
        }
        Ok(sim)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `Core-UUID` of every event of this simulator.
    pub fn core_uuid(&self) -> &str {
        &self.shared.identity.core_uuid
    }

    pub fn stats(&self) -> SimStats {
        stats_of(&self.shared)
    }

    /// Waits until all requested traffic (`events`, `calls` or `duration`) has been sent.
    /// Returns false on timeout (and always for endless runs).
    pub fn wait_done(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut control = self.shared.control();
        loop {
            if self.shared.counters.done.load(Ordering::SeqCst) && control.injected.is_empty() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            control = self.shared.wake.wait_timeout(control, wait).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Queues complete event frames to send verbatim, before further generated traffic, to the
    /// subscribed clients whose filter matches (by the frame's `Event-Name`/`Event-Subclass`).
    pub fn push_frames(&self, frames: Vec<Vec<u8>>) {
        for bytes in frames {
            let (name, subclass) = frame_event_name(&bytes);
            self.shared.inject(Injected::Raw(RawFrame { bytes, name, subclass, traffic: false }));
        }
    }

    /// Arms (or with `None` disarms) fault injection from now on.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.shared.control().fault = fault;
        self.shared.changed();
    }

    /// Closes every client connection now (the next event goes to the next connection).
    pub fn disconnect_all(&self) {
        let conns: Vec<Arc<Conn>> = self.shared.control().conns.iter().map(|c| c.conn.clone()).collect();
        for conn in conns {
            conn.kill();
        }
    }

    /// A human summary: totals, rate and the most frequent event names.
    pub fn summary(&self) -> String {
        cli::summary(&self.shared)
    }

    /// Stops serving: closes the listener and every connection, joins the threads.
    pub fn shutdown(&mut self) {
        if self.shared.shutdown.swap(true, Ordering::SeqCst) {
            return;
        }
        self.shared.wake.notify_all();
        // Wake the blocking accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        self.disconnect_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(f)
}

pub(crate) fn stats_of(shared: &Shared) -> SimStats {
    let c = &shared.counters;
    SimStats {
        events_sent: c.events_sent.load(Ordering::Relaxed),
        traffic_sent: c.traffic_sent.load(Ordering::Relaxed),
        bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
        calls: c.calls.load(Ordering::Relaxed),
        active_calls: c.active_calls.load(Ordering::Relaxed),
        connections: c.connections.load(Ordering::Relaxed),
        total_connections: c.total_connections.load(Ordering::Relaxed),
        next_sequence: shared.sequence.load(Ordering::Relaxed),
        done: c.done.load(Ordering::Relaxed),
    }
}

/// Splits a capture (such as `esl-captures/plain.esl`) into frames and returns the complete
/// event frames (`text/event-plain|json|xml`), each with its outer headers, byte for byte.
/// Parsing stops at the first incomplete or malformed frame.
pub fn event_frames(capture: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut pos = 0;
    while let Some(end) = find(&capture[pos..], b"\n\n").map(|i| pos + i) {
        let head = String::from_utf8_lossy(&capture[pos..end]);
        let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        let length = match header("Content-Length:").map(str::parse::<usize>) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => break,
        };
        let frame_end = end + 2 + length;
        if frame_end > capture.len() {
            break;
        }
        if header("Content-Type:").is_some_and(|t| t.starts_with("text/event-")) {
            frames.push(capture[pos..frame_end].to_vec());
        }
        pos = frame_end;
    }
    frames
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `Event-Name` and `Event-Subclass` of a complete plain or json event frame (decoded).
fn frame_event_name(frame: &[u8]) -> (String, Option<String>) {
    let body = find(frame, b"\n\n").map_or(&[][..], |i| &frame[i + 2..]);
    if body.first() == Some(&b'{') {
        let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let get = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        return (get("Event-Name").unwrap_or_default(), get("Event-Subclass"));
    }
    let head_end = find(body, b"\n\n").unwrap_or(body.len());
    let text = String::from_utf8_lossy(&body[..head_end]);
    let get = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).map(|v| percent_decode(v.trim()));
    (get("Event-Name:").unwrap_or_default(), get("Event-Subclass:"))
}

/// Decodes `%XX` escapes (a `+` stays a `+`, as in FreeSWITCH).
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;
