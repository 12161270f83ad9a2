//! The `eslstream simulate` command line: arguments, Ctrl-C handling, the once-a-second
//! progress line and the final summary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{event_frames, find, stats_of, EventSize, Fault, Shared, SimulateOptions, Simulator};

/// `eslstream simulate`: a fake FreeSWITCH event socket playing realistic call traffic.
///
/// With `--events N` the simulator keeps serving (answering commands) after the last event until
/// Ctrl-C; with `--duration` or `--calls` it exits once the traffic is sent.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8021")]
    pub listen: SocketAddr,
    /// Password clients must send with `auth`.
    #[arg(long, default_value = "ClueCon")]
    pub password: String,
    /// New calls per second (each call: two legs, ~40 events).
    #[arg(long, default_value_t = 10.0)]
    pub cps: f64,
    /// Fixed event rate instead of real-time calls (`1000`, `10k`, `0` = unpaced).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Send exactly N events as fast as possible (or at --rate), then stop sending.
    #[arg(long, value_parser = parse_count)]
    pub events: Option<u64>,
    /// Stop after N calls.
    #[arg(long, value_parser = parse_count)]
    pub calls: Option<u64>,
    /// Stop after this long (`30s`, `10m`); default: until Ctrl-C.
    #[arg(long, value_parser = parse_duration_arg)]
    pub duration: Option<Duration>,
    /// HEARTBEAT interval.
    #[arg(long, value_parser = parse_duration_arg, default_value = "20s")]
    pub heartbeat: Duration,
    /// First Event-Sequence.
    #[arg(long, default_value_t = 1)]
    pub start_sequence: u64,
    /// Seed of the traffic shape.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Size of channel events.
    #[arg(long, value_enum, default_value = "avg")]
    pub event_size: EventSize,
    /// Replay the event frames of a capture file (e.g. plain.esl) first; with no --events,
    /// --calls, --duration or --rate, nothing else is sent.
    #[arg(long)]
    pub replay: Option<PathBuf>,
    /// With --replay: send the capture over and over as the traffic (each pass with a new
    /// Core-UUID, so every copy is a new event), paced by --rate, counted by --events.
    #[arg(long, requires = "replay")]
    pub replay_loop: bool,
    /// Fault injection: drop the connection after N events (reconnecting clients get the rest).
    #[arg(long, value_parser = parse_count)]
    pub drop_after: Option<u64>,
    /// With --drop-after: cut in the middle of a frame.
    #[arg(long)]
    pub drop_mid_frame: bool,
    /// With --drop-after: drop again every N events.
    #[arg(long)]
    pub drop_repeat: bool,
    /// Start sending once this many listeners are subscribed (every listener gets every
    /// event, as FreeSWITCH sends them: `--listeners 2` to demonstrate a hot-standby pair).
    #[arg(long, default_value_t = 1)]
    pub listeners: usize,
    /// No progress line.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `eslstream simulate`; returns the process exit code.
pub fn run_cli(args: SimulateArgs) -> i32 {
    let opts = match options_from(&args) {
        Ok(opts) => opts,
        Err(msg) => {
            eprintln!("simulate: {msg}");
            return 2;
        }
    };
    let exit_when_done =
        opts.duration.is_some() || opts.calls.is_some() || (args.replay.is_some() && opts.events.is_none());
    let mut sim = match Simulator::start(opts) {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("simulate: cannot listen on {}: {e}", args.listen);
            return 1;
        }
    };
    eslstream::shutdown::stop_on_signals();
    eprintln!("simulate: listening on {} (Core-UUID {})", sim.local_addr(), sim.core_uuid());
    let mut summarized = false;
    while !eslstream::shutdown::stop_requested() {
        std::thread::sleep(Duration::from_millis(100));
        if sim.stats().done && !summarized {
            summarized = true;
            eprintln!("{}", sim.summary());
            if exit_when_done {
                break;
            }
            eprintln!("simulate: all events sent; still serving until Ctrl-C");
        }
    }
    if !summarized {
        eprintln!("{}", sim.summary());
    }
    sim.shutdown();
    0
}

fn options_from(args: &SimulateArgs) -> Result<SimulateOptions, String> {
    if !(args.cps >= 0.0 && args.cps.is_finite()) {
        return Err(format!("--cps {}: expected a non-negative number", args.cps));
    }
    let mut opts = SimulateOptions {
        listen: args.listen,
        password: args.password.clone(),
        cps: args.cps,
        rate: args.rate.map(|r| if r == 0.0 { f64::INFINITY } else { r }),
        events: args.events,
        calls: args.calls,
        duration: args.duration,
        heartbeat: args.heartbeat,
        start_sequence: args.start_sequence,
        seed: args.seed,
        quiet: args.quiet,
        event_size: args.event_size,
        fault: args.drop_after.map(|n| Fault {
            after_events: n,
            mid_frame: args.drop_mid_frame,
            repeat: args.drop_repeat,
        }),
        min_listeners: args.listeners.max(1),
        ..SimulateOptions::default()
    };
    if let Some(path) = &args.replay {
        let bytes = std::fs::read(path).map_err(|e| format!("--replay {}: {e}", path.display()))?;
        opts.replay = event_frames(&bytes);
        if opts.replay.is_empty() {
            return Err(format!("--replay {}: no event frames found", path.display()));
        }
        opts.replay_loop = args.replay_loop;
        let event = |f: &Vec<u8>| find(f, b"text/event-plain").is_some() || find(f, b"text/event-json").is_some();
        if opts.replay_loop && !opts.replay.iter().all(event) {
            return Err(format!("--replay-loop {}: only plain and JSON captures can be looped", path.display()));
        }
        if !opts.replay_loop
            && opts.events.is_none()
            && opts.calls.is_none()
            && opts.duration.is_none()
            && opts.rate.is_none()
        {
            opts.events = Some(0);
        }
    }
    if opts.heartbeat.is_zero() {
        return Err("--heartbeat: expected a positive duration".into());
    }
    Ok(opts)
}

/// Parses `250ms`, `3s`, `1.5s`, `10m`, `1h`, `500us`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).ok_or_else(|| format!("{text:?}: expected a duration such as 250ms, 3s, 10m or 1h"))
}

/// Parses a count: `5000`, `10k`, `2.5k`, `1m` (million).
pub fn parse_count(text: &str) -> Result<u64, String> {
    let value = parse_rate(text)?;
    if value.fract() != 0.0 {
        return Err(format!("{text:?}: expected a whole number"));
    }
    Ok(value as u64)
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let t = text.trim().to_ascii_lowercase();
    let (number, factor) = match t.strip_suffix('k') {
        Some(n) => (n, 1e3),
        None => match t.strip_suffix('m') {
            Some(n) => (n, 1e6),
            None => (t.as_str(), 1.0),
        },
    };
    match number.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v * factor),
        _ => Err(format!("{text:?}: expected a number such as 5000, 10k or 1m")),
    }
}

/// Prints `simulate: sent N events (R/s) to C client(s), K calls` every second until shutdown.
pub(crate) fn progress_loop(shared: &Shared) {
    let mut last = (Instant::now(), 0u64);
    let mut next = Instant::now() + Duration::from_secs(1);
    while !shared.shutdown.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        if Instant::now() < next {
            continue;
        }
        next += Duration::from_secs(1);
        let s = stats_of(shared);
        let rate = (s.events_sent - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), s.events_sent);
        eprintln!(
            "simulate: sent {} events ({:.0}/s) to {} client(s), {} calls",
            s.events_sent, rate, s.connections, s.calls
        );
    }
}

/// The end-of-run summary.
pub(crate) fn summary(shared: &Shared) -> String {
    let s = stats_of(shared);
    let elapsed = shared.started.elapsed().as_secs_f64();
    let mut out = format!(
        "simulate: done: {} events ({} traffic), {} calls, {:.1} MB in {:.1}s ({:.0} events/s), {} connection(s) in total",
        s.events_sent,
        s.traffic_sent,
        s.calls,
        s.bytes_sent as f64 / 1e6,
        elapsed,
        s.events_sent as f64 / elapsed.max(1e-9),
        s.total_connections
    );
    for (name, count) in shared.counters.top_names(12) {
        out.push_str(&format!("\n  {count:>9}  {name}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_counts_parse() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("3s"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("3"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_count("10k"), Ok(10_000));
        assert_eq!(parse_count("1m"), Ok(1_000_000));
        assert_eq!(parse_count("2.5k"), Ok(2500));
        assert!(parse_count("many").is_err());
        assert!(parse_count("1.5").is_err());
    }

    #[test]
    fn args_mount_under_a_clap_command() {
        use clap::{Args, FromArgMatches};
        let cmd = SimulateArgs::augment_args(clap::Command::new("simulate"));
        let parse =
            |argv: &[&str]| SimulateArgs::from_arg_matches(&cmd.clone().try_get_matches_from(argv).unwrap()).unwrap();
        let a = parse(&["simulate"]);
        assert_eq!(a.listen, "127.0.0.1:8021".parse().unwrap());
        assert_eq!(a.password, "ClueCon");
        assert_eq!(a.cps, 10.0);
        assert_eq!(a.heartbeat, Duration::from_secs(20));
        let a = parse(&["simulate", "--rate", "10k", "--events", "1m", "--duration", "30s", "--event-size", "large"]);
        assert_eq!(a.rate, Some(10_000.0));
        assert_eq!(a.events, Some(1_000_000));
        assert_eq!(a.duration, Some(Duration::from_secs(30)));
        assert_eq!(a.event_size, EventSize::Large);
        assert!(cmd.clone().try_get_matches_from(["simulate", "--duration", "3"]).is_err());
        let opts =
            options_from(&parse(&["simulate", "--drop-after", "100", "--drop-mid-frame", "--rate", "0"])).unwrap();
        assert_eq!(opts.fault, Some(Fault { after_events: 100, mid_frame: true, repeat: false }));
        assert_eq!(opts.rate, Some(f64::INFINITY));
        // A capture on a loop: its frames, no implied `--events 0`; plain and JSON captures only.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/esl-captures/");
        let plain = format!("{dir}plain.esl");
        let opts = options_from(&parse(&["simulate", "--replay", &plain, "--replay-loop", "--rate", "2k"])).unwrap();
        assert!(opts.replay_loop);
        assert_eq!(opts.replay.len(), 1009);
        assert_eq!(opts.events, None, "the loop runs until stopped");
        let once = options_from(&parse(&["simulate", "--replay", &plain])).unwrap();
        assert!(!once.replay_loop);
        assert_eq!(once.events, Some(0), "replayed once, nothing generated");
        let json = format!("{dir}json.esl");
        let looped = options_from(&parse(&["simulate", "--replay", &json, "--replay-loop"])).unwrap();
        assert!(looped.replay_loop && looped.replay.len() == 1012, "a JSON capture loops too");
        let xml = format!("{dir}xml.esl");
        let err = options_from(&parse(&["simulate", "--replay", &xml, "--replay-loop"])).unwrap_err();
        assert!(err.contains("only plain and JSON captures"), "{err}");
        assert!(cmd.clone().try_get_matches_from(["simulate", "--replay-loop"]).is_err(), "needs --replay");
    }
}
