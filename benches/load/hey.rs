//! The load harness's `http-hey` mode: the HTTP ingress driven from outside by `hey` (Debian's
//! package `hey`), 10 keep-alive connections, against a Redis with AOF on and `appendfsync
//! everysec`, as producers run it. Phases, `--seconds` each:
//!
//! - `GET /health` at `--http-rate` requests/s: what the tool, the loopback and the agent's
//!   HTTP server cost on their own, without Redis;
//! - single events at `--http-rate` requests/s (`hey -q`: per connection, so rate / 10 each),
//!   twice, each time followed by the same phase against the HTTP floor ([`http_floor`]: a
//!   forwarder that answers each `POST` after its own `XADD` and does nothing else), so the
//!   agent's latency and CPU per event stand beside what this machine allows in the same run
//!   (after two seconds of singles to each, not measured);
//! - JSON arrays of 100 events, as fast as the 10 connections go;
//! - NDJSON bodies of 100 events, as fast as they go.
//!
//! hey sends one body over and over, so the events carry no id (the agent gives each its own:
//! every one is written, none is a duplicate); single events share one `call_id` (one lane),
//! batches spread over 500. Per phase: requests/s, events/s, p50/p99/p99.9/max of the answer
//! time (from hey's per-request CSV), every answer a 202, and the CPU per 1,000 events of the
//! agent or the floor (`/proc`). At the end each one's `XLEN` must equal the events it answered
//! with 202.

use super::*;

/// One phase as hey saw it and the agent (or the HTTP floor) spent on it.
#[derive(Debug, Clone)]
pub struct HeyPhase {
    name: String,
    /// The phase drove the HTTP floor, not the agent.
    floor: bool,
    requests: u64,
    events: u64,
    seconds: f64,
    latency: Summary,
    not_202: u64,
    cpu_ms_per_1k: Option<f64>,
}

/// What the mode measured.
#[derive(Debug, Clone)]
pub struct HeyResult {
    rate: u64,
    phases: Vec<HeyPhase>,
    in_redis: u64,
    answered_events: u64,
    /// Entries the HTTP floor wrote, and the events it answered with 202.
    floor_in_redis: u64,
    floor_answered: u64,
}

impl HeyResult {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "HTTP ingress driven by hey, 10 connections, Redis with appendfsync everysec; singles at {}/s\n\n\
             | phase | requests | requests/s | events/s | p50 ms | p99 ms | p99.9 ms | max ms | not 202 | CPU ms/1k events |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            self.rate
        );
        for p in &self.phases {
            let cpu = p.cpu_ms_per_1k.map_or("-".to_owned(), |c| format!("{c:.1}"));
            let eps = if p.events > 0 { format!("{:.0}", p.events as f64 / p.seconds) } else { "-".into() };
            s.push_str(&format!(
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |\n",
                p.name,
                p.requests,
                p.requests as f64 / p.seconds,
                eps,
                ms(p.latency.p50),
                ms(p.latency.p99),
                ms(p.latency.p999),
                ms(p.latency.max),
                p.not_202,
                cpu
            ));
        }
        s.push_str(&format!(
            "\nIn Redis: {} entries for {} events answered 202 by the agent; {} for {} answered by the HTTP floor.\n",
            self.in_redis, self.answered_events, self.floor_in_redis, self.floor_answered
        ));
        let p99 = |floor: bool| {
            let singles = self.phases.iter().filter(|p| p.floor == floor && p.name.starts_with("single events"));
            singles.map(|p| ms(p.latency.p99)).collect::<Vec<_>>().join(", ")
        };
        s.push_str(&format!(
            "Single events, p99 ms, alternated: the agent {}; the HTTP floor {}.\n",
            p99(false),
            p99(true)
        ));
        s
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "rate": self.rate,
            "in_redis": self.in_redis,
            "answered_events": self.answered_events,
            "floor_in_redis": self.floor_in_redis,
            "floor_answered": self.floor_answered,
            "phases": self.phases.iter().map(|p| serde_json::json!({
                "name": p.name, "floor": p.floor, "requests": p.requests, "events": p.events, "seconds": p.seconds,
                "p50_us": p.latency.p50, "p99_us": p.latency.p99, "p999_us": p.latency.p999,
                "max_us": p.latency.max, "not_202": p.not_202, "cpu_ms_per_1k": p.cpu_ms_per_1k,
            })).collect::<Vec<_>>(),
        })
    }
}

/// A CRM-like event of about 600 bytes without an id (see the module's doc).
fn event(i: u64) -> String {
    http_event(i).replacen(&format!(r#""event_id":"load-{i}","#), "", 1)
}

/// One hey run: `(requests, latency, not 202, seconds)` from its per-request CSV.
fn hey(args: &[&str], url: &str, seconds: u64) -> Result<(u64, Summary, u64, f64), String> {
    let tool = find_on_path("hey").ok_or("hey not found on PATH (apt-get install hey)")?;
    let out = Command::new(tool)
        .args(["-z", &format!("{seconds}s"), "-c", "10", "-o", "csv"])
        .args(args)
        .arg(url)
        .output()
        .map_err(|e| format!("cannot run hey: {e}"))?;
    if !out.status.success() {
        return Err(format!("hey failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    // response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset
    let (mut hist, mut n, mut bad, mut last) = (Histogram::new(), 0u64, 0u64, 0f64);
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        let (Some(time), Some(status), Some(offset)) = (cols.first(), cols.get(6), cols.get(7)) else { continue };
        let Ok(time) = time.parse::<f64>() else { continue };
        hist.record((time * 1e6) as u64);
        n += 1;
        if *status != "202" && *status != "200" {
            bad += 1;
        }
        last = last.max(offset.parse::<f64>().unwrap_or(0.0) + time);
    }
    if n == 0 {
        return Err("hey answered nothing".into());
    }
    Ok((n, hist.summary(), bad, last.max(f64::EPSILON)))
}

pub fn run_hey(opts: &Opts) -> Result<HeyResult, String> {
    let redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "everysec"], free_port)?;
    eprintln!("load: redis-server {} on 127.0.0.1:{} (appendfsync everysec)", redis.version, redis.port);
    let (agent, port) = start_ingress_agent(&redis, opts)?;
    let (floor, floor_port) = start_http_floor(&redis)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let write = |name: &str, body: String| -> Result<String, String> {
        let path = dir.path().join(name);
        std::fs::write(&path, body).map_err(|e| e.to_string())?;
        Ok(path.to_str().ok_or("non-UTF-8 temp dir")?.to_owned())
    };
    let single = write("single.json", event(0))?;
    let array = write("batch.json", format!("[{}]", (0..100).map(event).collect::<Vec<_>>().join(",")))?;
    let ndjson = write("batch.ndjson", (0..100).map(|i| event(i) + "\n").collect())?;
    let auth = format!("Authorization: Bearer {HTTP_TOKEN}");
    let per_connection = format!("{}", (opts.http_rate as f64 / 10.0).max(1.0));
    let events_url = format!("http://127.0.0.1:{port}/events");
    let floor_url = format!("http://127.0.0.1:{floor_port}/events");
    let health_url = format!("http://127.0.0.1:{port}/health");
    let singles = vec!["-q", &per_connection, "-m", "POST", "-T", "application/json", "-H", &auth, "-D", &single];
    let plans: [(&str, Vec<&str>, &str, u64); 7] = [
        ("GET /health (the HTTP server alone)", vec!["-q", &per_connection], &health_url, 0),
        ("single events", singles.clone(), &events_url, 1),
        ("single events, the HTTP floor", singles.clone(), &floor_url, 1),
        ("single events (again)", singles.clone(), &events_url, 1),
        ("single events, the HTTP floor (again)", singles.clone(), &floor_url, 1),
        (
            "JSON arrays of 100",
            vec!["-m", "POST", "-T", "application/json", "-H", &auth, "-D", &array],
            &events_url,
            100,
        ),
        (
            "NDJSON, 100 lines",
            vec!["-m", "POST", "-T", "application/x-ndjson", "-H", &auth, "-D", &ndjson],
            &events_url,
            100,
        ),
    ];
    // Warm-up, not measured: the first seconds of load are often slower (for the floor too: see
    // docs/performance.md, "The HTTP floor"), and whichever ran first would pay for them alone.
    let (mut answered_events, mut floor_answered) = (0, 0);
    for (url, answered) in [(&events_url, &mut answered_events), (&floor_url, &mut floor_answered)] {
        let (requests, _, not_202, _) = hey(&singles, url, WARMUP.as_secs() * 2)?;
        *answered += requests - not_202;
    }
    let ticks_per_sec = clock_ticks_per_sec();
    let mut phases = Vec::new();
    for (name, args, url, per_request) in plans {
        let is_floor = url == floor_url;
        let pid = if is_floor { floor.pid() } else { agent.pid() };
        eprintln!("load: hey: {name} for {}s", opts.seconds);
        let before = cpu_ticks(pid);
        let (requests, latency, not_202, seconds) = hey(&args, url, opts.seconds)?;
        let after = cpu_ticks(pid);
        let events = (requests - not_202) * per_request;
        *(if is_floor { &mut floor_answered } else { &mut answered_events }) += events;
        let cpu = before.zip(after).filter(|_| events > 0).map(|(b, a)| {
            let ms = (a - b) as f64 / ticks_per_sec * 1000.0;
            ms * 1000.0 / events as f64
        });
        phases.push(HeyPhase {
            name: name.to_owned(),
            floor: is_floor,
            requests,
            events,
            seconds,
            latency,
            not_202,
            cpu_ms_per_1k: cpu,
        });
    }
    let mut con = redis.connection()?;
    let mut xlen = |key: &str| -> Result<u64, String> {
        redis::cmd("XLEN").arg(key).query(&mut con).map_err(|e| format!("XLEN {key}: {e}"))
    };
    let (in_redis, floor_in_redis) = (xlen(HTTP_STREAM)?, xlen(HTTP_FLOOR_STREAM)?);
    drop(agent);
    drop(floor);
    if in_redis != answered_events {
        eprintln!("load: LOSS OR DUPLICATES: {in_redis} entries in Redis for {answered_events} events answered 202");
    }
    if floor_in_redis != floor_answered {
        eprintln!("load: the HTTP floor wrote {floor_in_redis} entries for {floor_answered} events it answered 202");
    }
    Ok(HeyResult { rate: opts.http_rate, phases, in_redis, answered_events, floor_in_redis, floor_answered })
}

/// The stream the HTTP floor writes to (beside the agent's, so each count is checked alone).
const HTTP_FLOOR_STREAM: &str = "eslstream:bench:http-floor";

/// The HTTP floor ([`http_floor`]) on a free port, writing to `redis`; returns once it accepts
/// connections.
fn start_http_floor(redis: &RedisServer) -> Result<(AgentProcess, u16), String> {
    let port = free_port()?;
    let me = std::env::current_exe().map_err(|e| format!("this binary's path: {e}"))?;
    let env =
        [("HEALTH_PORT", port.to_string()), ("REDIS_URL", redis.url()), ("STREAM_EVENTS", HTTP_FLOOR_STREAM.into())];
    let floor = AgentProcess::start_with(&me, &[http_floor::HTTP_FORWARDER_ARG], &env)?;
    floor.wait_for_port(port, "the HTTP floor")?;
    Ok((floor, port))
}
