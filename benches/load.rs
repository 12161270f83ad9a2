//! End-to-end load harness ("Prove the speed"): simulator → agent (child process) → Redis.
//!
//! Every run starts its own `redis-server` (free loopback port, no persistence, temporary
//! directory), measures that machine's ceiling with `redis-benchmark` (pipelined `XADD` of
//! entries the size of the events), then drives the release `eslstream` binary from the
//! in-process [`Simulator`] and measures, per run:
//!
//! - sustained events/s: entries in Redis / (last entry ID time − first entry ID time);
//! - latency from `Event-Date-Timestamp` (set by the simulator when it encodes the event) to
//!   "readable by a blocking `XREAD` on another connection" (p50, p99, p99.9, max). At fixed
//!   rates the reader reads every entry; under saturation it samples (`XREAD BLOCK .. COUNT 1
//!   STREAMS key $`: the first entry added after each call, thousands a second), because
//!   reading 2.5 GB back would take Redis and harness CPU the ceiling run does not pay;
//! - agent peak RSS (`VmHWM`), CPU per 1,000 events and CPU % of one core (`/proc/<pid>/stat`);
//! - that every event sent by the simulator is in Redis exactly once (`XLEN`), loudly if not.
//!
//! Modes: `saturation` (unpaced, `--events`, default 1,000,000), `rates` (paced, each rate of
//! `--rates` for `--seconds` after a one-second warm-up that is excluded from latency and CPU)
//! and `http` (HTTP ingress, `POST /events` on the agent with `ESL_ENABLED=false`: single-event
//! requests at `--http-rate` requests/s (default 1,000) for `--seconds` on one keep-alive
//! connection, latency from sending the request to reading its `202`; then batches of 100 as
//! fast as two keep-alive connections go, `--http-events` in all (default 200,000), events/s
//! from the first request to the last `202`; each checked against `XLEN`), `http-hey` (the
//! same ingress driven from outside by `hey`, 10 connections, singles at `--http-rate`, JSON
//! and NDJSON batches of 100, Redis with `appendfsync everysec`, singles alternated with the
//! same load on a do-nothing HTTP forwarder, the HTTP floor; see [`hey`]), `outbox` (the
//! PostgreSQL outbox: commit-to-readable latency at `--outbox-rate` rows/s, then rows/s relayed
//! while four writers commit `--outbox-rows` as fast as they can; see [`outbox`]) and `cluster`
//! (saturation against one server, then against a 3-primary Redis Cluster made with
//! `redis-cli --cluster create`, with `REDIS_CLUSTER_NODES`, and 10,000 events/s on a fresh
//! cluster: the cluster's events/s as a share of the same run's single-server figure, and its
//! latency; both streams carry one hash tag there, so they share a slot). The default `all`
//! runs every mode but `outbox` (it needs PostgreSQL's server binaries), `cluster` and `ha`
//! (saturation without and with `HA_GROUP`, one agent, which takes the lease at once);
//! `--rates` alone means `rates`. See `docs/performance.md` for results.
//!
//! ```text
//! cargo bench --bench load -- [--mode saturation|rates|all] [--events 1000000]
//!     [--rates 1000,10000,50000] [--seconds 20] [--size capture,avg,medium,xl] [--json target/load.json]
//!     [--env NAME=value]...
//! ```
//!
//! `--size` takes a comma list; saturation and every rate run once per entry, each
//! saturation run with its own ceiling (entries of its size). `capture` replays the real
//! FreeSWITCH capture `tests/data/esl-captures/plain.esl` on a loop, every pass with a new
//! `Core-UUID` (so idempotency keeps every copy) and the time of sending in
//! `Event-Date-Timestamp`; `capture-json` does the same with `json.esl` (the agent's default
//! `ESL_EVENT_FORMAT=json` path: the switch's JSON written as it came); `avg` (~2.5 KB), `medium` (~4.7 KB, a dozen more percent-encoded
//! variables), `large` (~6 KB) and `xl` (~10 KB) are the simulator's calls.
//!
//! The agent runs with `EVENTS_TO_PUSH=ALL`, `EVENTS_TO_PUBLISH=BACKGROUND_JOB` (an empty value
//! means the default list, which would route CHANNEL_EXECUTE & co to the jobs stream),
//! `EVENTS_MAX_LEN=0` (exact counts), `HEALTH_PORT` a free port, `LOG_LEVEL=warn`,
//! `METRICS_PRINT_INTERVAL=0`, `SPOOL_DIR` in a temporary directory, otherwise defaults; `--env`
//! adds or overrides variables (to compare settings such as `WRITER_WORKERS`).
//!
//! A run is complete when Redis holds every event sent but those the agent counted as dropped
//! (`eslstream_events_dropped_total` on its `/metrics`: under saturation, memory and spool can
//! fill, and the agent drops rather than hold the switch back). Anything else is a MISMATCH,
//! which fails the bench.
//!
//! A progress line goes to stderr every second; a markdown table to stdout and JSON to the
//! `--json` path at the end. Every wait is bounded and every child is killed on drop (also on
//! panic). All traffic stays on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eslstream::http::client::http_get;
use eslstream_simulate::{event_frames, EventSize, SimulateOptions, Simulator};
use floor::FloorMode;
use redis::Value;

#[path = "load/floor.rs"]
mod floor;
#[path = "load/hey.rs"]
mod hey;
#[path = "load/http_floor.rs"]
mod http_floor;
#[path = "load/outbox.rs"]
mod outbox;

const EVENTS_KEY: &str = "freeswitch:telephony:events";
const JOBS_KEY: &str = "freeswitch:telephony:background-jobs";
/// With `--mode cluster` both streams share one hash tag (one slot), so the harness reads
/// them with one `XREAD` from the primary holding them; every run of the process uses them.
const TAGGED_KEYS: [&str; 2] = ["{freeswitch:telephony}:events", "{freeswitch:telephony}:background-jobs"];
static KEYS: std::sync::OnceLock<[&'static str; 2]> = std::sync::OnceLock::new();

fn events_key() -> &'static str {
    KEYS.get_or_init(|| [EVENTS_KEY, JOBS_KEY])[0]
}

fn jobs_key() -> &'static str {
    KEYS.get_or_init(|| [EVENTS_KEY, JOBS_KEY])[1]
}
const CEILING_KEY: &str = "eslstream:bench:ceiling";
/// A run fails when nothing new reaches Redis for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
const WARMUP: Duration = Duration::from_secs(1);

/// The simulator runs in this process and shares the machine with the agent under test: it
/// uses the same allocator as the agent, so its cost stays small next to the agent's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.next_if(|a| a == floor::FORWARDER_ARG).is_some() {
        floor::forward(&args.next().unwrap_or_default());
    }
    if args.next_if(|a| a == http_floor::HTTP_FORWARDER_ARG).is_some() {
        http_floor::serve();
    }
    let opts = match Opts::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("load: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&opts) {
        eprintln!("load: error: {e}");
        std::process::exit(1);
    }
}

const USAGE: &str = "usage: cargo bench --bench load -- [--mode saturation|rates|http|http-hey|outbox|cluster|ha|all, or a comma list] [--events N] \
[--rates 1000,10000,50000] [--seconds 20] [--size small|avg|medium|large|xl|capture, or a comma list] [--json target/load.json] [--env NAME=value]... [--agent PATH] \
[--http-rate 1000] [--http-events 200000] [--outbox-rate 1000] [--outbox-rows 200000] [--floor sync|lazy]";

#[derive(Debug, Clone)]
struct Opts {
    saturation: bool,
    rates_mode: bool,
    events: u64,
    rates: Vec<u64>,
    seconds: u64,
    /// What the current run sends: one of `sizes`.
    size: Traffic,
    /// `--size`: each saturation and rate run is made once per traffic shape.
    sizes: Vec<Traffic>,
    json: PathBuf,
    /// Extra `NAME=value` for the agent (`--env WRITER_WORKERS=1`), after the defaults.
    env: Vec<(String, String)>,
    /// Another agent binary to run (to compare two builds on the same machine).
    agent: PathBuf,
    /// `--floor`: each saturation and rate run is followed by the same run of the floor
    /// ([`floor`]), a forwarder that does nothing but forward.
    floor: Option<FloorMode>,
    /// What the current run drives: the agent, or the floor.
    forwarder: Forwarder,
    http: bool,
    http_rate: u64,
    http_events: u64,
    /// `--mode http-hey`: the HTTP ingress driven by `hey`, 10 connections ([`hey`]).
    hey: bool,
    outbox: bool,
    outbox_rate: u64,
    outbox_rows: u64,
    /// `--mode cluster`: single server vs a Redis Cluster.
    cluster: bool,
    /// `--mode ha`: saturation without and with `HA_GROUP`.
    ha: bool,
}

impl Opts {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Opts, String> {
        let mut o = Opts {
            saturation: true,
            rates_mode: true,
            events: 1_000_000,
            rates: vec![1_000, 10_000, 50_000],
            seconds: 20,
            size: Traffic::Sim(EventSize::Avg),
            sizes: vec![Traffic::Sim(EventSize::Avg)],
            json: PathBuf::from("target/load.json"),
            env: Vec::new(),
            agent: PathBuf::from(env!("CARGO_BIN_EXE_eslstream")),
            floor: None,
            forwarder: Forwarder::Agent,
            http: true,
            http_rate: 1_000,
            http_events: 200_000,
            hey: false,
            outbox: false,
            outbox_rate: 1_000,
            outbox_rows: 200_000,
            cluster: false,
            ha: false,
        };
        let mut rates_given = false;
        let mut mode_given = false;
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (arg.clone(), None),
            };
            // `cargo bench` passes `--bench`; criterion-style flags are ignored too.
            if name == "--bench" || name == "--quiet" || name == "-q" {
                continue;
            }
            let mut value = || inline.clone().or_else(|| args.next()).ok_or(format!("{name} needs a value"));
            match name.as_str() {
                "--mode" => {
                    mode_given = true;
                    (o.saturation, o.rates_mode, o.http, o.cluster) = (false, false, false, false);
                    for mode in value()?.split(',') {
                        match mode.trim() {
                            "saturation" => o.saturation = true,
                            "rates" => o.rates_mode = true,
                            "http" => o.http = true,
                            "http-hey" => o.hey = true,
                            "outbox" => o.outbox = true,
                            "cluster" => o.cluster = true,
                            "ha" => o.ha = true,
                            "all" => (o.saturation, o.rates_mode, o.http) = (true, true, true),
                            m => return Err(format!("unknown mode {m:?}")),
                        }
                    }
                }
                "--events" => o.events = parse_count(&value()?)?,
                "--rates" => {
                    rates_given = true;
                    o.rates = value()?.split(',').map(parse_count).collect::<Result<_, _>>()?;
                }
                "--seconds" => o.seconds = parse_count(&value()?)?,
                "--size" => {
                    o.sizes = value()?.split(',').map(|s| Traffic::parse(s.trim())).collect::<Result<_, _>>()?;
                    o.size = *o.sizes.first().ok_or("--size needs at least one size")?;
                }
                "--json" => o.json = PathBuf::from(value()?),
                "--env" => {
                    let v = value()?;
                    let (k, v) = v.split_once('=').ok_or(format!("--env wants NAME=value, not {v:?}"))?;
                    o.env.push((k.to_owned(), v.to_owned()));
                }
                "--agent" => o.agent = PathBuf::from(value()?),
                "--floor" => o.floor = Some(FloorMode::parse(&value()?)?),
                "--http-rate" => o.http_rate = parse_count(&value()?)?,
                "--http-events" => o.http_events = parse_count(&value()?)?,
                "--outbox-rate" => o.outbox_rate = parse_count(&value()?)?.max(1),
                "--outbox-rows" => o.outbox_rows = parse_count(&value()?)?,
                "-h" | "--help" => return Err("help".into()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if rates_given && !mode_given {
            (o.saturation, o.rates_mode, o.http) = (false, true, false);
        }
        if o.rates.is_empty() || o.rates.contains(&0) || o.events == 0 || o.seconds == 0 {
            return Err("--events, --rates and --seconds must be positive".into());
        }
        Ok(o)
    }
}

/// What a run forwards the simulator's events with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forwarder {
    /// The agent (`--agent`, by default the one this build made).
    Agent,
    /// This binary as the floor ([`floor`]).
    Floor(FloorMode),
}

impl Forwarder {
    fn name(self) -> &'static str {
        match self {
            Forwarder::Agent => "eslstream",
            Forwarder::Floor(mode) => mode.label(),
        }
    }
}

/// `1000000`, `1_000_000`, `1e6`, `10k`, `1m`.
fn parse_count(text: &str) -> Result<u64, String> {
    let t = text.trim().replace('_', "").to_ascii_lowercase();
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1e3),
        Some('m') => (&t[..t.len() - 1], 1e6),
        _ => (t.as_str(), 1.0),
    };
    num.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| (v * mul).round() as u64)
        .ok_or_else(|| format!("not a count: {text:?}"))
}

/// What a run sends: the simulator's calls with events of one size, or the real plain
/// capture in the repository on a loop (each pass a new `Core-UUID`, so every copy is a new
/// event; see `simulate::capture_loop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Traffic {
    Sim(EventSize),
    /// The plain capture (`capture`) or the JSON one (`capture-json`).
    Capture {
        json: bool,
    },
}

/// The captures replayed by `--size capture` and `--size capture-json`.
const CAPTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/esl-captures/plain.esl");
const CAPTURE_JSON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/esl-captures/json.esl");

impl Traffic {
    fn parse(name: &str) -> Result<Traffic, String> {
        Ok(match name {
            "small" => Traffic::Sim(EventSize::Small),
            "avg" => Traffic::Sim(EventSize::Avg),
            "medium" => Traffic::Sim(EventSize::Medium),
            "large" => Traffic::Sim(EventSize::Large),
            "xl" => Traffic::Sim(EventSize::Xl),
            "capture" => Traffic::Capture { json: false },
            "capture-json" => Traffic::Capture { json: true },
            s => return Err(format!("unknown size {s:?} (small, avg, medium, large, xl, capture, capture-json)")),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Traffic::Sim(EventSize::Small) => "small",
            Traffic::Sim(EventSize::Avg) => "avg",
            Traffic::Sim(EventSize::Medium) => "medium",
            Traffic::Sim(EventSize::Large) => "large",
            Traffic::Sim(EventSize::Xl) => "xl",
            Traffic::Capture { json: false } => "capture",
            Traffic::Capture { json: true } => "capture-json",
        }
    }

    /// The simulator's options for this traffic (its pacing and count added by the caller).
    fn simulate_options(self) -> Result<SimulateOptions, String> {
        Ok(match self {
            Traffic::Sim(size) => SimulateOptions { event_size: size, ..SimulateOptions::default() },
            Traffic::Capture { json } => {
                let path = if json { CAPTURE_JSON } else { CAPTURE };
                let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
                SimulateOptions { replay: event_frames(&bytes), replay_loop: true, ..SimulateOptions::default() }
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Orchestration

/// Every run, the ceiling's included, gets a fresh `redis-server`: a server that has just freed
/// a gigabyte has that memory mapped already, and whichever run came second would not pay the
/// page faults the first one paid (over a third of Redis's CPU in a profile).
fn fresh_redis() -> Result<RedisServer, String> {
    let redis = RedisServer::start()?;
    eprintln!("load: redis-server {} on 127.0.0.1:{}", redis.version, redis.port);
    Ok(redis)
}

/// One run against a fresh single server (its version noted for the report); the server
/// stops when the run is over.
fn run_standalone(opts: &Opts, rate: Option<u64>, version: &mut String) -> Result<RunResult, String> {
    let redis = fresh_redis()?;
    version.clone_from(&redis.version);
    run_one(&Target::one(&redis), opts, rate)
}

fn run(opts: &Opts) -> Result<(), String> {
    let mut results = Vec::new();
    let mut ceilings: Vec<Ceiling> = Vec::new();
    let mut version = String::new();
    if opts.cluster {
        KEYS.set(TAGGED_KEYS).map_err(|_| "stream keys chosen twice")?;
    }
    for &size in &opts.sizes {
        let opts = &Opts { size, ..opts.clone() };
        let floor = opts.floor.map(|mode| Opts { forwarder: Forwarder::Floor(mode), ..opts.clone() });
        if opts.saturation {
            let mut r = run_standalone(opts, None, &mut version)?;
            // The ceiling for entries of this run's size, measured in the same process.
            let c = ceiling_for(&fresh_redis()?, r.avg_event_bytes)?;
            r.ceiling_ratio = Some(r.events_per_sec / c.requests_per_sec);
            r.ceiling_per_sec = Some(c.requests_per_sec);
            results.push(r);
            if let Some(floor) = &floor {
                let mut f = run_standalone(floor, None, &mut version)?;
                f.ceiling_ratio = Some(f.events_per_sec / c.requests_per_sec);
                f.ceiling_per_sec = Some(c.requests_per_sec);
                results.push(f);
            }
            ceilings.push(c);
        }
        if opts.rates_mode {
            for &rate in &opts.rates {
                results.push(run_standalone(opts, Some(rate), &mut version)?);
                if let Some(floor) = &floor {
                    results.push(run_standalone(floor, Some(rate), &mut version)?);
                }
            }
        }
    }
    let mut ha_ratio = None;
    if opts.ha {
        // The same saturation run without and with HA_GROUP (one agent: it takes the lease at
        // once), so the table shows what the pair's fast path costs: the fence check and the
        // WATCHed tripwire before each MULTI, and the reader's gate.
        let plain = run_standalone(opts, None, &mut version)?;
        let mut paired = opts.clone();
        paired.env.push(("HA_GROUP".into(), "bench".into()));
        let mut with_ha = run_standalone(&paired, None, &mut version)?;
        with_ha.mode = "saturation, HA_GROUP";
        ha_ratio = Some(with_ha.events_per_sec / plain.events_per_sec);
        results.extend([plain, with_ha]);
    }
    let mut cluster_ratio = None;
    if opts.cluster {
        let single = run_standalone(opts, None, &mut version)?;
        let cluster = LoadCluster::start(3)?;
        let mut saturated = run_one(&cluster.target()?, opts, None)?;
        drop(cluster);
        let ratio = saturated.events_per_sec / single.events_per_sec;
        saturated.ceiling_ratio = None;
        cluster_ratio = Some(ratio);
        let cluster = LoadCluster::start(3)?;
        let paced = run_one(&cluster.target()?, opts, Some(10_000))?;
        drop(cluster);
        results.extend([single, saturated, paced]);
    }
    let http = match opts.http {
        true => Some(run_http(&fresh_redis()?, opts)?),
        false => None,
    };
    let outbox = match opts.outbox {
        true => Some(outbox::run_outbox(&fresh_redis()?, opts)?),
        false => None,
    };
    let hey = match opts.hey {
        true => Some(hey::run_hey(opts)?),
        false => None,
    };
    if !results.is_empty() {
        println!("{}", markdown(&results, &ceilings));
    }
    if let Some(ratio) = ha_ratio {
        println!("HA_GROUP saturation: {:.0}% of the same run without it\n", ratio * 100.0);
    }
    if let Some(ratio) = cluster_ratio {
        println!(
            "Cluster saturation: {:.0}% of the single server's events/s in the same run (target >= 80%)\n",
            ratio * 100.0
        );
    }
    if let Some(h) = &http {
        println!("{}", h.markdown(results.iter().find(|r| r.rate.is_none()).map(|r| r.events_per_sec)));
    }
    if let Some(o) = &outbox {
        println!("{}", o.markdown());
    }
    if let Some(h) = &hey {
        println!("{}", h.markdown());
    }
    let json = serde_json::json!({
        "machine": machine(),
        "agent_env": opts.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "redis_version": version,
        "ceilings": ceilings.iter().map(|c| serde_json::json!({
            "command": c.command, "value_bytes": c.value_bytes, "requests_per_sec": c.requests_per_sec,
        })).collect::<Vec<_>>(),
        "runs": results.iter().map(RunResult::json).collect::<Vec<_>>(),
        "cluster_vs_single_saturation": cluster_ratio,
        "ha_vs_plain_saturation": ha_ratio,
        "http": http.as_ref().map(HttpResult::json),
        "outbox": outbox.as_ref().map(outbox::OutboxResult::json),
        "http_hey": hey.as_ref().map(hey::HeyResult::json),
    });
    if let Some(dir) = opts.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&json).expect("serializable");
    std::fs::write(&opts.json, text + "\n").map_err(|e| format!("cannot write {}: {e}", opts.json.display()))?;
    eprintln!("load: wrote {}", opts.json.display());
    let bad: Vec<_> = results.iter().filter(|r| !r.complete()).collect();
    if let Some(h) = &http {
        if h.in_redis != h.sent {
            return Err(format!("HTTP ingress: {} events acknowledged, {} in Redis", h.sent, h.in_redis));
        }
    }
    if outbox.as_ref().is_some_and(|o| !o.complete()) {
        return Err("the outbox run lost, duplicated or left rows (see the table)".into());
    }
    if !bad.is_empty() {
        return Err(format!("{} run(s) lost or duplicated events (see the table)", bad.len()));
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct RunResult {
    mode: &'static str,
    /// What forwarded the events: `eslstream` or the floor.
    forwarder: Forwarder,
    /// `standalone` or `cluster`.
    topology: &'static str,
    size: Traffic,
    rate: Option<u64>,
    sent: u64,
    in_redis: u64,
    /// Events the agent counted as dropped (`eslstream_events_dropped_total`: memory and spool
    /// full under saturation, say): a run is complete when every event sent is in Redis or
    /// counted so.
    dropped: u64,
    events_per_sec: f64,
    avg_event_bytes: f64,
    latency: Summary,
    rss_peak_kb: u64,
    rss_end_kb: u64,
    cpu_ms_per_1k: f64,
    cpu_pct: f64,
    redis_cpu_pct: f64,
    harness_cpu_pct: f64,
    wall_secs: f64,
    ceiling_ratio: Option<f64>,
    /// The `redis-benchmark` ceiling the ratio is of (entries of this run's size).
    ceiling_per_sec: Option<f64>,
}

impl RunResult {
    /// Every event sent is in Redis once, or was counted as dropped.
    fn complete(&self) -> bool {
        self.in_redis + self.dropped == self.sent
    }

    fn label(&self) -> String {
        let run = match self.rate {
            Some(r) => format!("rate {r}/s"),
            None if self.mode.contains("HA_GROUP") => "saturation, HA_GROUP".into(),
            None => "saturation".into(),
        };
        let run = match self.forwarder {
            Forwarder::Agent => run,
            floor => format!("{run}, {}", floor.name()),
        };
        match self.topology {
            "cluster" => format!("cluster {run}"),
            _ => run,
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": self.mode,
            "forwarder": self.forwarder.name(),
            "topology": self.topology,
            "size": self.size.name(),
            "rate": self.rate,
            "sent": self.sent,
            "in_redis": self.in_redis,
            "dropped_counted": self.dropped,
            "complete": self.complete(),
            "events_per_sec": self.events_per_sec,
            "avg_event_json_bytes": self.avg_event_bytes,
            "latency_us": {
                "count": self.latency.count, "p50": self.latency.p50, "p99": self.latency.p99,
                "p999": self.latency.p999, "max": self.latency.max,
            },
            "agent_rss_peak_kb": self.rss_peak_kb,
            "agent_rss_end_kb": self.rss_end_kb,
            "agent_cpu_ms_per_1k_events": self.cpu_ms_per_1k,
            "agent_cpu_pct_of_one_core": self.cpu_pct,
            "redis_cpu_pct_of_one_core": self.redis_cpu_pct,
            "harness_cpu_pct_of_one_core": self.harness_cpu_pct,
            "wall_secs": self.wall_secs,
            "ratio_to_ceiling": self.ceiling_ratio,
            "ceiling_per_sec": self.ceiling_per_sec,
        })
    }
}

/// Where a run writes: one server, or a cluster (then `server` is the primary holding the
/// streams, which the harness reads and measures, and the agent gets the seeds).
struct Target<'a> {
    server: &'a RedisServer,
    topology: &'static str,
    env: Vec<(&'static str, String)>,
}

impl Target<'_> {
    fn one(server: &RedisServer) -> Target<'_> {
        Target { server, topology: "standalone", env: Vec::new() }
    }
}

fn run_one(target: &Target<'_>, opts: &Opts, rate: Option<u64>) -> Result<RunResult, String> {
    let redis = target.server;
    let mut con = redis.connection()?;
    redis::cmd("FLUSHALL").exec(&mut con).map_err(|e| format!("FLUSHALL: {e}"))?;
    let (events, label) = match rate {
        Some(r) => (r * (opts.seconds + WARMUP.as_secs()), format!("rate={r}/s")),
        None => (opts.events, "saturation".to_owned()),
    };
    let warmup_events = rate.map_or(0, |r| r * WARMUP.as_secs());
    let sim = Simulator::start(SimulateOptions {
        rate: rate.map(|r| r as f64),
        events: Some(events),
        quiet: true,
        heartbeat: Duration::from_secs(3600),
        ..opts.size.simulate_options()?
    })
    .map_err(|e| format!("simulator: {e}"))?;
    eprintln!("load: {label} size={} events={events}", opts.size.name());

    let hist = Arc::new(Mutex::new(Histogram::new()));
    let reader = LatencyReader::start(redis.url(), hist.clone(), warmup_events, rate.is_none())?;
    let admin_port = free_port()?;
    let mut env = vec![
        ("ESL_HOST", "127.0.0.1".into()),
        ("ESL_PORT", sim.local_addr().port().to_string()),
        ("REDIS_URL", redis.url()),
        ("EVENTS_TO_PUSH", "ALL".into()),
        // An empty list means the default list, which sends CHANNEL_EXECUTE & co to the jobs
        // stream; BACKGROUND_JOB goes there only for `api_exec` jobs (none in this traffic).
        ("EVENTS_TO_PUBLISH", "BACKGROUND_JOB".into()),
        ("HEALTH_PORT", admin_port.to_string()),
        ("LOG_LEVEL", "warn".into()),
        ("METRICS_PRINT_INTERVAL", "0".into()),
        ("EVENTS_MAX_LEN", "0".into()),
        ("STREAM_EVENTS", events_key().into()),
        ("STREAM_JOBS", jobs_key().into()),
    ];
    env.extend(target.env.iter().cloned());
    env.extend(opts.env.iter().map(|(k, v)| (k.as_str(), v.clone())));
    let agent = match opts.forwarder {
        Forwarder::Agent => AgentProcess::start(&opts.agent, &env)?,
        Forwarder::Floor(mode) => {
            let me = std::env::current_exe().map_err(|e| format!("this binary's path: {e}"))?;
            AgentProcess::start_with(&me, &[floor::FORWARDER_ARG, mode.name()], &env)?
        }
    };
    let pid = agent.pid();
    let started = Instant::now();
    let others = [redis.child.id(), std::process::id()];
    let other_ticks = || others.map(|p| cpu_ticks(p).unwrap_or(0));
    let mut cpu_start = (cpu_ticks(pid).unwrap_or(0), Instant::now(), 0u64);
    let mut others_start = other_ticks();
    let others_end;
    let mut windowed = rate.is_none();
    let mut last_print = Instant::now();
    let mut last_progress = ((0u64, 0u64), Instant::now());
    let mut cpu_end: Option<(u64, Instant, u64)> = None;
    let mut dropped = 0;
    let in_redis = loop {
        std::thread::sleep(Duration::from_millis(20));
        let stats = sim.stats();
        let in_redis = xlen_both(&mut con)?;
        // Counted drops, read once everything is sent and Redis is short of it.
        if opts.forwarder == Forwarder::Agent
            && stats.done
            && in_redis < stats.events_sent
            && last_progress.1.elapsed() > Duration::from_millis(500)
        {
            dropped = dropped_events(admin_port).unwrap_or(dropped);
        }
        if !windowed && stats.traffic_sent >= warmup_events {
            windowed = true;
            cpu_start = (cpu_ticks(pid).unwrap_or(0), Instant::now(), stats.events_sent);
            others_start = other_ticks();
        }
        if (in_redis, stats.events_sent) != last_progress.0 {
            last_progress = ((in_redis, stats.events_sent), Instant::now());
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let p99 = hist.lock().unwrap_or_else(|p| p.into_inner()).value_at(0.99);
            eprintln!(
                "load: {label} t={}s sent={} in_redis={in_redis} p99={:.2}ms rss={}MB",
                started.elapsed().as_secs(),
                stats.events_sent,
                p99 as f64 / 1000.0,
                proc_status_kb(pid, "VmRSS:").unwrap_or(0) / 1024,
            );
        }
        if stats.done && cpu_end.is_none() && in_redis + dropped >= stats.events_sent {
            cpu_end = Some((cpu_ticks(pid).unwrap_or(0), Instant::now(), stats.events_sent));
            others_end = other_ticks();
            break in_redis;
        }
        if last_progress.1.elapsed() > STALL_TIMEOUT {
            eprintln!("load: {label}: NO PROGRESS for {STALL_TIMEOUT:?}; agent output:\n{}", agent.output());
            cpu_end = Some((cpu_ticks(pid).unwrap_or(0), Instant::now(), stats.events_sent));
            others_end = other_ticks();
            break in_redis;
        }
        if !agent.is_running() {
            return Err(format!("the agent exited; output:\n{}", agent.output()));
        }
    };
    let sent = sim.stats().events_sent;
    // Let the reader catch up with the last entries (bounded; a sampling reader never does).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reader.sampling && reader.seen.load(Ordering::Relaxed) < in_redis && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let rss_peak_kb = proc_status_kb(pid, "VmHWM:").unwrap_or(0);
    let rss_end_kb = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    let (t1, i1, e1) = cpu_end.expect("set when the loop ends");
    let (t0, i0, e0) = cpu_start;
    let cpu_ms = (t1.saturating_sub(t0)) as f64 * 1000.0 / clock_ticks_per_sec();
    let wall_ms = i1.duration_since(i0).as_secs_f64() * 1000.0;
    let window_events = e1.saturating_sub(e0).max(1);
    let pct = |t0: u64, t1: u64| {
        let ms = t1.saturating_sub(t0) as f64 * 1000.0 / clock_ticks_per_sec();
        if wall_ms > 0.0 {
            ms / wall_ms * 100.0
        } else {
            0.0
        }
    };
    let redis_cpu_pct = pct(others_start[0], others_end[0]);
    let harness_cpu_pct = pct(others_start[1], others_end[1]);
    // The floor counts no drops: whatever it did not write is missing.
    let dropped = match opts.forwarder {
        Forwarder::Agent => dropped_events(admin_port).unwrap_or_else(|e| {
            eprintln!("load: {label}: cannot read the agent's drop count: {e}");
            dropped
        }),
        Forwarder::Floor(_) => 0,
    };
    drop(agent);
    reader.stop();
    let span_ms = id_span_ms(&mut con)?.max(1);
    let avg_event_bytes = avg_event_size(&mut con)?;
    let latency = hist.lock().unwrap_or_else(|p| p.into_inner()).summary();
    drop(sim);
    if in_redis + dropped != sent {
        eprintln!(
            "load: !!!!! {label}: MISMATCH: simulator sent {sent} events, Redis holds {in_redis}, the agent counted {dropped} dropped !!!!!"
        );
    } else if dropped > 0 {
        eprintln!("load: {label}: the agent dropped {dropped} events (counted) and wrote the other {in_redis}");
    }
    Ok(RunResult {
        mode: if rate.is_some() { "rates" } else { "saturation" },
        forwarder: opts.forwarder,
        topology: target.topology,
        size: opts.size,
        rate,
        sent,
        in_redis,
        dropped,
        events_per_sec: in_redis as f64 * 1000.0 / span_ms as f64,
        avg_event_bytes,
        latency,
        rss_peak_kb,
        rss_end_kb,
        cpu_ms_per_1k: cpu_ms / window_events as f64 * 1000.0,
        cpu_pct: if wall_ms > 0.0 { cpu_ms / wall_ms * 100.0 } else { 0.0 },
        redis_cpu_pct,
        harness_cpu_pct,
        wall_secs: started.elapsed().as_secs_f64(),
        ceiling_ratio: None,
        ceiling_per_sec: None,
    })
}

fn xlen_both(con: &mut redis::Connection) -> Result<u64, String> {
    let (a, b): (u64, u64) = redis::pipe()
        .cmd("XLEN")
        .arg(events_key())
        .cmd("XLEN")
        .arg(jobs_key())
        .query(con)
        .map_err(|e| format!("XLEN: {e}"))?;
    Ok(a + b)
}

/// Average length of the `event` field over a sample of entries.
fn avg_event_size(con: &mut redis::Connection) -> Result<f64, String> {
    let v = events_range(con, "XRANGE", 2000)?;
    let (mut total, mut n) = (0usize, 0usize);
    for_each_entry(&v, |_, event| {
        total += event.len();
        n += 1;
    });
    Ok(if n == 0 { 0.0 } else { total as f64 / n as f64 })
}

/// Calls `f(id, event_field)` for each entry of an `XRANGE` reply (an array of `[id, fields]`).
fn for_each_entry(entries: &Value, mut f: impl FnMut(&[u8], &[u8])) {
    let Value::Array(entries) = entries else { return };
    for entry in entries {
        let Value::Array(parts) = entry else { continue };
        let (Some(Value::BulkString(id)), Some(Value::Array(fields))) = (parts.first(), parts.get(1)) else {
            continue;
        };
        let event = fields
            .chunks(2)
            .find_map(|kv| match kv {
                [Value::BulkString(k), Value::BulkString(v)] if k == b"event" => Some(v.as_slice()),
                _ => None,
            })
            .unwrap_or(&[]);
        f(id, event);
    }
}

// ---------------------------------------------------------------------------------------------
// Latency reader

/// Pause between two latency samples under saturation.
const SAMPLE_PAUSE: Duration = Duration::from_millis(5);

struct LatencyReader {
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicU64>,
    /// Samples the newest entries instead of reading them all.
    sampling: bool,
    thread: Option<JoinHandle<()>>,
}

impl LatencyReader {
    /// On its own connection: `XREAD BLOCK 1000 COUNT 1000` on both streams from the start, or
    /// with `sampling`, `XREAD BLOCK 1000 COUNT 1` of the events stream from `$` (the first
    /// entry added after each call).
    fn start(url: String, hist: Arc<Mutex<Histogram>>, skip: u64, sampling: bool) -> Result<LatencyReader, String> {
        let mut con = connect(&url)?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicU64::new(0));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::Builder::new()
            .name("latency-reader".into())
            .spawn(move || {
                let mut ids = [b"0-0".to_vec(), b"0-0".to_vec()];
                let mut batch = Vec::with_capacity(1000);
                let mut n = 0u64;
                while !stop2.load(Ordering::Relaxed) {
                    let mut cmd = redis::cmd("XREAD");
                    cmd.arg("BLOCK").arg(1000).arg("COUNT");
                    if sampling {
                        cmd.arg(1).arg("STREAMS").arg(events_key()).arg("$");
                    } else {
                        cmd.arg(1000).arg("STREAMS").arg(events_key()).arg(jobs_key()).arg(&ids[0]).arg(&ids[1]);
                    }
                    let reply: Value = match cmd.query(&mut con) {
                        Ok(v) => v,
                        Err(e) => {
                            eprintln!("load: latency reader: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    };
                    let now = now_us();
                    batch.clear();
                    for (key, entries) in stream_replies(&reply) {
                        let slot = usize::from(key != events_key().as_bytes());
                        for_each_entry(entries, |id, event| {
                            ids[slot] = id.to_vec();
                            n += 1;
                            if n > skip {
                                if let Some(ts) = event_timestamp(event) {
                                    batch.push(now.saturating_sub(ts));
                                }
                            }
                        });
                    }
                    if !batch.is_empty() {
                        let mut h = hist.lock().unwrap_or_else(|p| p.into_inner());
                        batch.iter().for_each(|&v| h.record(v));
                    }
                    seen2.store(n, Ordering::Relaxed);
                    if sampling {
                        // At most ~200 samples a second: a reader blocked on the stream makes
                        // Redis serve it on every XADD, which would bill the measurement to
                        // the agent under test.
                        std::thread::sleep(SAMPLE_PAUSE);
                    }
                }
            })
            .map_err(|e| format!("spawn reader: {e}"))?;
        Ok(LatencyReader { stop, seen, sampling, thread: Some(thread) })
    }

    /// Stops the reader (within one `BLOCK` period).
    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The first `count` entries of the events stream (`XRANGE`), or the last (`XREVRANGE`).
fn events_range(con: &mut redis::Connection, command: &str, count: usize) -> Result<Value, String> {
    let (from, to) = if command == "XREVRANGE" { ("+", "-") } else { ("-", "+") };
    redis::cmd(command)
        .arg(events_key())
        .arg(from)
        .arg(to)
        .arg("COUNT")
        .arg(count)
        .query(con)
        .map_err(|e| format!("{command}: {e}"))
}

/// Milliseconds between the first and the last entry ID of the events stream.
fn id_span_ms(con: &mut redis::Connection) -> Result<u64, String> {
    let first = events_range(con, "XRANGE", 1)?;
    let last = events_range(con, "XREVRANGE", 1)?;
    let mut ms = [0u64; 2];
    for (slot, reply) in [&first, &last].into_iter().enumerate() {
        for_each_entry(reply, |id, _| ms[slot] = id_ms(id));
    }
    Ok(ms[1].saturating_sub(ms[0]))
}

impl Drop for LatencyReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `(key, entries)` of an `XREAD` reply (RESP2 array or RESP3 map).
fn stream_replies(reply: &Value) -> Vec<(&[u8], &Value)> {
    let mut out = Vec::new();
    match reply {
        Value::Array(streams) => {
            for s in streams {
                if let Value::Array(kv) = s {
                    if let (Some(Value::BulkString(k)), Some(entries)) = (kv.first(), kv.get(1)) {
                        out.push((k.as_slice(), entries));
                    }
                }
            }
        }
        Value::Map(pairs) => {
            for (k, entries) in pairs {
                if let Value::BulkString(k) = k {
                    out.push((k.as_slice(), entries));
                }
            }
        }
        _ => {}
    }
    out
}

fn id_ms(id: &[u8]) -> u64 {
    let end = id.iter().position(|&b| b == b'-').unwrap_or(id.len());
    std::str::from_utf8(&id[..end]).ok().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// `Event-Date-Timestamp` (µs since the epoch) out of the `event` JSON.
fn event_timestamp(event: &[u8]) -> Option<u64> {
    const NEEDLE: &[u8] = b"\"Event-Date-Timestamp\":\"";
    let start = memchr::memmem::find(event, NEEDLE)? + NEEDLE.len();
    let digits = &event[start..];
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

// ---------------------------------------------------------------------------------------------
// Histogram: log-linear buckets (512 sub-buckets per power of two, < 0.2% error), in µs.

const SUB: u64 = 512;

struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Summary {
    count: u64,
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram { counts: vec![0; (2 * SUB + 64 * SUB) as usize], total: 0, max: 0 }
    }

    fn index(v: u64) -> usize {
        if v < 2 * SUB {
            return v as usize;
        }
        let shift = 63 - v.leading_zeros() as u64 - 9; // v >> shift is in [512, 1024)
        (2 * SUB + (shift - 1) * SUB + ((v >> shift) - SUB)) as usize
    }

    fn value_of(index: usize) -> u64 {
        let i = index as u64;
        if i < 2 * SUB {
            return i;
        }
        let shift = (i - 2 * SUB) / SUB + 1;
        let mantissa = (i - 2 * SUB) % SUB + SUB;
        // The middle of the bucket.
        (mantissa << shift) + (1 << shift) / 2
    }

    fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    fn value_at(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value_of(i).min(self.max);
            }
        }
        self.max
    }

    fn summary(&self) -> Summary {
        Summary {
            count: self.total,
            p50: self.value_at(0.50),
            p99: self.value_at(0.99),
            p999: self.value_at(0.999),
            max: self.max,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The ceiling: redis-benchmark XADD with values the size of the events

struct Ceiling {
    command: String,
    value_bytes: usize,
    requests_per_sec: f64,
}

fn ceiling_for(redis: &RedisServer, event_bytes: f64) -> Result<Ceiling, String> {
    let bench =
        find_on_path("redis-benchmark").ok_or("redis-benchmark not found on PATH (apt-get install redis-tools)")?;
    let value_bytes = (event_bytes.round() as usize).max(1);
    let value = "x".repeat(value_bytes);
    let port = redis.port.to_string();
    let mut con = redis.connection()?;
    redis::cmd("FLUSHALL").exec(&mut con).map_err(|e| format!("FLUSHALL: {e}"))?;
    let args: Vec<&str> = vec![
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-c",
        "4",
        "-P",
        "64",
        "-n",
        "400000",
        "-q",
        "XADD",
        CEILING_KEY,
        "MAXLEN",
        "~",
        "1000000",
        "*",
        "event",
        &value,
        "event_name",
        "X",
        "unique_id",
        "U",
        "core_uuid",
        "C",
        "event_sequence",
        "1",
    ];
    let command = format!(
        "redis-benchmark -p PORT -c 4 -P 64 -n 400000 -q XADD {CEILING_KEY} MAXLEN ~ 1000000 * event <{value_bytes} bytes> \
         event_name X unique_id U core_uuid C event_sequence 1"
    );
    eprintln!("load: ceiling: {command}");
    let mut child = Command::new(&bench)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bench.display()))?;
    let mut stdout = child.stdout.take().expect("piped");
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("redis-benchmark did not finish within 180 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = out_thread.join().unwrap_or_default();
    let _: () = redis::cmd("DEL").arg(CEILING_KEY).query(&mut con).map_err(|e| format!("DEL: {e}"))?;
    let rps = parse_benchmark_rps(&out)
        .ok_or_else(|| format!("cannot parse redis-benchmark output ({status}): {:?}", out.trim()))?;
    eprintln!("load: ceiling: {rps:.0} XADD/s with {value_bytes}-byte values");
    Ok(Ceiling { command, value_bytes, requests_per_sec: rps })
}

/// The number before "requests per second" on the last line (progress lines end with `\r`).
fn parse_benchmark_rps(out: &str) -> Option<f64> {
    let line = out.split(['\r', '\n']).rfind(|l| l.contains("requests per second"))?;
    let before = line.split("requests per second").next()?;
    before.split_whitespace().last()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Child processes

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// The agent's `eslstream_events_dropped_total`, summed over its labels, from its `/metrics`.
fn dropped_events(admin_port: u16) -> Result<u64, String> {
    let url = format!("http://127.0.0.1:{admin_port}/metrics");
    let (status, body) = http_get(&url, Duration::from_secs(5))?;
    if status != 200 {
        return Err(format!("GET /metrics: status {status}"));
    }
    Ok(body
        .lines()
        .filter(|l| l.starts_with("eslstream_events_dropped_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(|e| e.to_string())
}

fn connect(url: &str) -> Result<redis::Connection, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let con = client.get_connection_with_timeout(Duration::from_secs(5)).map_err(|e| format!("connect {url}: {e}"))?;
    // FLUSHALL of a few GB and big XRANGE replies take a while.
    con.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    con.set_write_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    Ok(con)
}

/// `redis-server` without persistence on a free loopback port; dropped = killed.
struct RedisServer {
    child: Child,
    port: u16,
    version: String,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> Result<RedisServer, String> {
        Self::start_with(&[], free_port)
    }

    /// With extra arguments, on a port from `pick`.
    fn start_with(extra: &[&str], pick: fn() -> Result<u16, String>) -> Result<RedisServer, String> {
        let binary =
            find_on_path("redis-server").ok_or("redis-server not found on PATH (apt-get install redis-server)")?;
        let version = Command::new(&binary)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("v=").map(str::to_owned))
            })
            .unwrap_or_default();
        let mut last_error = String::new();
        for _ in 0..5 {
            let dir = tempfile::Builder::new().prefix("eslstream-load-").tempdir().map_err(|e| e.to_string())?;
            let port = pick()?;
            let child = Command::new(&binary)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(extra)
                .args(["--dir", dir.path().to_str().ok_or("non-UTF-8 temp dir")?, "--daemonize", "no"])
                .args(["--logfile", dir.path().join("redis.log").to_str().ok_or("non-UTF-8 temp dir")?])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
            let mut server = RedisServer { child, port, version: version.clone(), _dir: dir };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if ping(port) {
                    return Ok(server);
                }
                if server.child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                    last_error = format!("redis-server did not answer PING on port {port}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err(last_error)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn connection(&self) -> Result<redis::Connection, String> {
        connect(&self.url())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis Cluster of `primaries` primaries without replicas; dropped = every node killed.
struct LoadCluster {
    nodes: Vec<RedisServer>,
}

impl LoadCluster {
    fn start(primaries: usize) -> Result<LoadCluster, String> {
        let args =
            ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"];
        let nodes =
            (0..primaries).map(|_| RedisServer::start_with(&args, cluster_port)).collect::<Result<Vec<_>, _>>()?;
        let cli = find_on_path("redis-cli").ok_or("redis-cli not found on PATH (apt-get install redis-tools)")?;
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new(cli)
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("redis-cli: {e}"))?;
        if !out.status.success() {
            return Err(format!("redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout)));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &nodes {
            let mut con = node.connection()?;
            loop {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut con).unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("cluster not ok on port {}: {info}", node.port));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        eprintln!("load: Redis Cluster of {primaries} primaries on {}", addresses.join(","));
        Ok(LoadCluster { nodes })
    }

    /// The primary holding the streams, and the seeds for the agent.
    fn target(&self) -> Result<Target<'_>, String> {
        let mut con = self.nodes[0].connection()?;
        let reply: Value =
            redis::cmd("CLUSTER").arg("SLOTS").query(&mut con).map_err(|e| format!("CLUSTER SLOTS: {e}"))?;
        let map = eslstream::sink::cluster::SlotMap::parse(&reply, "127.0.0.1")?;
        let owner = map.node_for_key(events_key()).ok_or("the streams' slot has no primary")?;
        let server = self
            .nodes
            .iter()
            .find(|n| format!("127.0.0.1:{}", n.port) == map.nodes[owner])
            .ok_or("the owner is not one of ours")?;
        let seeds = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",");
        Ok(Target { server, topology: "cluster", env: vec![("REDIS_CLUSTER_NODES", seeds)] })
    }
}

/// A port below 55536 whose cluster bus port (10000 higher) is free too.
fn cluster_port() -> Result<u16, String> {
    for _ in 0..1000 {
        let port = free_port()?;
        let port = 20_000 + port % 30_000;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return Ok(port);
        }
    }
    Err("no free port pair for a cluster node".into())
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 64];
    s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

/// The release `eslstream` binary with only `env` (plus `PATH` and `SPOOL_DIR`), in an empty
/// temporary directory; dropped = SIGTERM, then SIGKILL after 10 s.
struct AgentProcess {
    child: Child,
    dir: tempfile::TempDir,
}

impl AgentProcess {
    fn start(program: &Path, env: &[(&str, String)]) -> Result<AgentProcess, String> {
        AgentProcess::start_with(program, &[], env)
    }

    /// `program` with `args` (the floor is this binary with its own arguments).
    fn start_with(program: &Path, args: &[&str], env: &[(&str, String)]) -> Result<AgentProcess, String> {
        let dir = tempfile::Builder::new().prefix("eslstream-load-agent-").tempdir().map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.path().join("output.log")).map_err(|e| e.to_string())?;
        let spool = dir.path().join("spool");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SPOOL_DIR", &spool)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        Ok(AgentProcess { child, dir })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn is_running(&self) -> bool {
        // Without reaping: /proc/<pid>/stat state Z means it exited.
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
            .unwrap_or(false)
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("output.log")).unwrap_or_default()
    }

    /// Returns once the process accepts connections on `port` (20 s at most); `what` names it
    /// in the error.
    fn wait_for_port(&self, port: u16, what: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || !self.is_running() {
                return Err(format!("{what} did not start:\n{}", self.output()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("load: the agent did not stop within 10 s of SIGTERM; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP ingress

const HTTP_STREAM: &str = "freeswitch:telephony:http-events";
const HTTP_TOKEN: &str = "load-token-0123456789abcdef";

/// What the HTTP mode measured.
#[derive(Debug, Clone)]
struct HttpResult {
    rate: u64,
    single: Summary,
    single_sent: u64,
    batch_events_per_sec: f64,
    batch_events: u64,
    sent: u64,
    in_redis: u64,
    event_bytes: usize,
}

impl HttpResult {
    fn markdown(&self, esl_saturation: Option<f64>) -> String {
        let ratio = esl_saturation
            .map_or("-".into(), |esl| format!("{:.0}% of ESL saturation", self.batch_events_per_sec * 100.0 / esl));
        format!(
            "| HTTP ingress ({} B events) | requests | p50 ms | p99 ms | p99.9 ms | max ms | events/s |\n|---|---:|---:|---:|---:|---:|---:|\n\
             | single events at {}/s | {} | {} | {} | {} | {} | - |\n\
             | batches of 100, 2 connections | {} | - | - | - | - | {:.0} ({ratio}) |\n\
             \nAcknowledged {} events, {} in Redis.\n",
            self.event_bytes,
            self.rate,
            self.single_sent,
            ms(self.single.p50),
            ms(self.single.p99),
            ms(self.single.p999),
            ms(self.single.max),
            self.batch_events / 100,
            self.batch_events_per_sec,
            self.sent,
            self.in_redis,
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "single_rate": self.rate,
            "single_requests": self.single_sent,
            "single_latency_us": {"p50": self.single.p50, "p99": self.single.p99, "p999": self.single.p999, "max": self.single.max},
            "batch_events": self.batch_events,
            "batch_events_per_sec": self.batch_events_per_sec,
            "acknowledged": self.sent,
            "in_redis": self.in_redis,
            "event_bytes": self.event_bytes,
        })
    }
}

/// A keep-alive HTTP/1.1 connection that posts events and reads the answers.
struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    fn open(port: u16) -> Result<HttpConn, String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
        Ok(HttpConn { stream, buf: Vec::with_capacity(1 << 16) })
    }

    /// Posts `body` and returns the status of the answer (its body is read and dropped).
    fn post(&mut self, body: &[u8]) -> Result<u16, String> {
        let head = format!(
            "POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {HTTP_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.stream.write_all(&req).map_err(|e| format!("send: {e}"))?;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("no status")?;
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    self.buf.drain(..end + 4 + len);
                    return Ok(status);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the agent closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A CRM-like event of about 600 bytes.
fn http_event(i: u64) -> String {
    format!(
        r#"{{"event_type":"call.disposition","event_id":"load-{i}","call_id":"call-{}","agent":"agent-{}","disposition":"SALE","notes":"{}","amount":"12.50","currency":"EUR","tags":["vip","callback"],"at":"2026-12-01T10:00:00Z"}}"#,
        i % 500,
        i % 37,
        "customer asked for a callback about the renewal; ".repeat(9)
    )
}

/// The agent with only the HTTP ingress on (token `load:HTTP_TOKEN`), writing to `redis`,
/// serving on a free port; returns once it accepts connections.
fn start_ingress_agent(redis: &RedisServer, opts: &Opts) -> Result<(AgentProcess, u16), String> {
    let port = free_port()?;
    let mut env = vec![
        ("ESL_ENABLED", "false".to_owned()),
        ("HTTP_INGRESS", "true".into()),
        ("HTTP_INGRESS_TOKENS", format!("load:{HTTP_TOKEN}")),
        ("REDIS_URL", redis.url()),
        ("HEALTH_BIND", "127.0.0.1".into()),
        ("HEALTH_PORT", port.to_string()),
        ("HTTP_MAX_LEN", "0".into()),
        ("LOG_LEVEL", "warn".into()),
        ("METRICS_PRINT_INTERVAL", "0".into()),
    ];
    env.extend(opts.env.iter().map(|(k, v)| (k.as_str(), v.clone())));
    let env: Vec<(&str, String)> = env;
    let agent = AgentProcess::start(&opts.agent, &env)?;
    agent.wait_for_port(port, "the agent")?;
    Ok((agent, port))
}

fn run_http(redis: &RedisServer, opts: &Opts) -> Result<HttpResult, String> {
    let (agent, port) = start_ingress_agent(redis, opts)?;
    let event_bytes = http_event(0).len();
    // Single events, paced, one keep-alive connection.
    let mut conn = HttpConn::open(port)?;
    let mut hist = Histogram::new();
    let total = opts.http_rate * opts.seconds;
    let warmup = opts.http_rate * WARMUP.as_secs();
    let started = Instant::now();
    for i in 0..warmup + total {
        let due = started + Duration::from_secs_f64(i as f64 / opts.http_rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let sent_at = Instant::now();
        let status = conn.post(http_event(i).as_bytes())?;
        if status != 202 {
            return Err(format!("single event {i}: HTTP {status}"));
        }
        if i >= warmup {
            hist.record(sent_at.elapsed().as_micros() as u64);
        }
        if i % opts.http_rate == 0 {
            eprintln!("load: http single {i}/{}", warmup + total);
        }
    }
    let single_sent = warmup + total;
    // Batches of 100 on two connections, as fast as they go.
    let batches = opts.http_events.div_ceil(100);
    let next = Arc::new(AtomicU64::new(0));
    let first = single_sent;
    let started = Instant::now();
    let workers: Vec<JoinHandle<Result<(), String>>> = (0..2)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                let mut conn = HttpConn::open(port)?;
                loop {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    if b >= batches {
                        return Ok(());
                    }
                    let from = first + b * 100;
                    let body = format!("[{}]", (from..from + 100).map(http_event).collect::<Vec<_>>().join(","));
                    let status = conn.post(body.as_bytes())?;
                    if status != 202 {
                        return Err(format!("batch {b}: HTTP {status}"));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| "a batch thread panicked".to_owned())??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let batch_events = batches * 100;
    let mut con = redis.connection()?;
    let in_redis: u64 = redis::cmd("XLEN").arg(HTTP_STREAM).query(&mut con).map_err(|e| format!("XLEN: {e}"))?;
    drop(agent);
    Ok(HttpResult {
        rate: opts.http_rate,
        single: hist.summary(),
        single_sent,
        batch_events_per_sec: batch_events as f64 / elapsed,
        batch_events,
        sent: single_sent + batch_events,
        in_redis,
        event_bytes,
    })
}

// ---------------------------------------------------------------------------------------------
// /proc

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// A `kB` line of `/proc/<pid>/status` such as `VmHWM:`.
fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(field))?.split_whitespace().next()?.parse().ok()
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    serde_json::json!({ "cpus": cores, "cpu_model": cpu })
}

// ---------------------------------------------------------------------------------------------
// Report

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn markdown(results: &[RunResult], ceilings: &[Ceiling]) -> String {
    let mut s = String::new();
    s.push_str(
        "| run | size (avg event JSON) | sent | in Redis | events/s | vs ceiling | p50 ms | p99 ms | p99.9 ms | max ms \
         | agent peak RSS MB | agent CPU ms/1k ev | agent CPU % core | redis CPU % | harness CPU % |\n",
    );
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        let complete = match (r.complete(), r.dropped) {
            (false, _) => " **MISMATCH**".to_owned(),
            (true, 0) => String::new(),
            (true, d) => format!(" + {d} counted drops"),
        };
        s.push_str(&format!(
            "| {} | {} ({:.0} B) | {} | {}{complete} | {:.0} | {} | {} | {} | {} | {} | {:.1} | {:.2} | {:.1} | {:.0} | {:.0} |\n",
            r.label(),
            r.size.name(),
            r.avg_event_bytes,
            r.sent,
            r.in_redis,
            r.events_per_sec,
            match (r.ceiling_ratio, r.ceiling_per_sec) {
                (Some(x), Some(c)) => format!("{:.0}% of {:.0}k", x * 100.0, c / 1000.0),
                (Some(x), None) => format!("{:.0}%", x * 100.0),
                _ => "-".into(),
            },
            ms(r.latency.p50),
            ms(r.latency.p99),
            ms(r.latency.p999),
            ms(r.latency.max),
            r.rss_peak_kb as f64 / 1024.0,
            r.cpu_ms_per_1k,
            r.cpu_pct,
            r.redis_cpu_pct,
            r.harness_cpu_pct,
        ));
    }
    for f in results.iter().filter(|r| r.forwarder != Forwarder::Agent) {
        let same = |r: &&RunResult| r.forwarder == Forwarder::Agent && r.size == f.size && r.rate == f.rate;
        let Some(a) = results.iter().find(same) else { continue };
        let per_redis = |r: &RunResult| if r.redis_cpu_pct > 0.0 { r.cpu_pct / r.redis_cpu_pct } else { 0.0 };
        s.push_str(&format!(
            "\n{}: the agent's CPU per event {:.1}x the {}'s; CPU over Redis's: agent {:.2}, floor {:.2}; p99 {} ms against {} ms\n",
            a.label(),
            a.cpu_ms_per_1k / f.cpu_ms_per_1k.max(f64::MIN_POSITIVE),
            f.forwarder.name(),
            per_redis(a),
            per_redis(f),
            ms(a.latency.p99),
            ms(f.latency.p99),
        ));
    }
    for c in ceilings {
        s.push_str(&format!(
            "\nCeiling: {:.0} XADD/s ({} -byte values): `{}`\n",
            c.requests_per_sec, c.value_bytes, c.command
        ));
    }
    s
}
