//! Operate and deploy: `/health` through Redis and ESL outages, `/metrics` checked by promtool,
//! the trimmer against a real Redis, the `health` subcommand, start-up failures, JSON logs, text
//! logs coloured only on a terminal, and the deployment files (Dockerfile structure,
//! `systemd-analyze verify`).
//!
//! Needs `redis-server`, `promtool` and `systemd-analyze` (`scripts/install-deps.sh` installs
//! them); a missing tool fails the test that needs it.

mod support;

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use eslstream::app::Agent;
use eslstream::config::Config;
use eslstream::envelope::{now_us, BodyFormat, Envelope, EventId, IdempotencyKey, Source, StreamTarget};
use eslstream::esl::encode::{encode_plain, HeaderValue};
use eslstream::http::http_get;
use eslstream::ops::trim::Trimmer;
use support::{repo_file, wait_until, RedisServer};

const INTERVAL: Duration = Duration::from_millis(200);
const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// A socket that accepts ESL connections and never answers: the agent's client waits in its
/// handshake (for `ESL_HEALTH_CHECK_TIMEOUT`), so the test owns `AgentState::esl_connected`.
fn silent_esl() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind the silent ESL socket")
}

fn agent_config(redis: &RedisServer, esl: &TcpListener, spool: &Path, extra: &[(&str, &str)]) -> Config {
    let esl_port = esl.local_addr().expect("ESL address").port().to_string();
    let redis_url = redis.url();
    let spool_dir = spool.display().to_string();
    let mut vars: HashMap<String, String> = [
        ("REDIS_URL", redis_url.as_str()),
        ("ESL_HOST", "127.0.0.1"),
        ("ESL_PORT", esl_port.as_str()),
        ("ESL_HEALTH_CHECK_TIMEOUT", "1h"),
        ("HEALTH_BIND", "127.0.0.1"),
        ("HEALTH_PORT", "0"),
        ("HEALTH_CHECK_INTERVAL", "200ms"),
        ("HEALTH_MAX_RETRIES", "3"),
        ("REDIS_REMOTE_WRITE_TIMEOUT", "500ms"),
        ("REDIS_REMOTE_DIAL_TIMEOUT", "500ms"),
        ("METRICS_PRINT_INTERVAL", "0"),
        ("WRITER_WORKERS", "2"),
        ("SPOOL_DIR", spool_dir.as_str()),
        ("SHUTDOWN_TIMEOUT", "2s"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::from_vars(vars).expect("valid test configuration")
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get(&format!("http://{addr}{path}"), Duration::from_secs(5)).expect("the agent answers")
}

fn health(addr: SocketAddr) -> (u16, serde_json::Value) {
    let (status, body) = get(addr, "/health");
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("/health is not JSON ({e}): {body}")))
}

/// Waits for `/health` to answer `status` with `verdict`; returns the document.
fn wait_health(addr: SocketAddr, within: Duration, status: u16, verdict: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let started = Instant::now();
    while started.elapsed() < within {
        let (code, body) = health(addr);
        if code == status && body["status"] == verdict {
            return body;
        }
        last = body;
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("/health did not become {status} {verdict} within {within:?}; last answer: {last}");
}

fn failing_checks(body: &serde_json::Value) -> Vec<String> {
    let checks = body["data"]["checks"].as_array().cloned().unwrap_or_default();
    checks.iter().filter(|c| c["ok"] == false).map(|c| c["name"].as_str().unwrap_or("?").to_owned()).collect()
}

/// One check's wait for a failure to show: one interval, the PING timeout, and slack for a
/// loaded machine.
fn one_round() -> Duration {
    INTERVAL + PING_TIMEOUT + Duration::from_secs(2)
}

#[test]
fn health_follows_redis_and_esl_outages() {
    let mut redis = RedisServer::start();
    let esl = silent_esl();
    let spool = tempfile::tempdir().expect("temp dir");
    let agent = Agent::start(agent_config(&redis, &esl, spool.path(), &[])).expect("agent starts");
    let addr = agent.http_addr();

    // ESL not connected: 503 with the ESL check failing.
    let body = wait_health(addr, one_round(), 503, "degraded");
    assert_eq!(failing_checks(&body), ["esl"], "{body}");

    agent.state.esl_connected.store(true, Ordering::Release);
    let body = wait_health(addr, one_round(), 200, "healthy");
    assert_eq!(body["data"]["is_healthy"], true);
    assert_eq!(body["data"]["redis"]["connected"], true);
    assert!(body["data"]["redis"]["ping_ms"].is_f64(), "{body}");
    println!("healthy: {body}");

    // Redis stops: 503 within a round, Redis named; events would spool, so degraded.
    redis.kill();
    let body = wait_health(addr, one_round(), 503, "degraded");
    assert_eq!(failing_checks(&body), ["redis"], "{body}");
    assert!(body["data"]["checks"][1]["reason"].as_str().unwrap_or("").starts_with("Redis PING failed"), "{body}");
    assert_eq!(body["data"]["redis"]["connected"], false);
    println!("redis down: {body}");

    redis.restart();
    wait_health(addr, one_round(), 200, "healthy");

    // ESL drops: degraded at once, unhealthy after HEALTH_MAX_RETRIES failed checks.
    agent.state.esl_connected.store(false, Ordering::Release);
    let body = wait_health(addr, one_round(), 503, "degraded");
    assert_eq!(failing_checks(&body), ["esl"], "{body}");
    let body = wait_health(addr, one_round() * 3, 503, "unhealthy");
    assert!(body["data"]["recovery_attempts"].as_u64().unwrap_or(0) >= 3, "{body}");
    println!("esl down: {body}");

    agent.state.esl_connected.store(true, Ordering::Release);
    let body = wait_health(addr, one_round(), 200, "healthy");
    assert_eq!(body["data"]["recovery_attempts"], 0);
    assert!(agent.stop());
}

/// A plain-format event as FreeSWITCH sends it, and its envelope.
fn event(seq: u64, call: &str) -> Envelope {
    let now = now_us();
    let (ts, seq_text) = (now.to_string(), seq.to_string());
    let headers = [
        ("Event-Name", HeaderValue::One("CHANNEL_ANSWER")),
        ("Core-UUID", HeaderValue::One("6c6ef2a4-0000-4000-8000-ops000000001")),
        ("Event-Date-Timestamp", HeaderValue::One(&ts)),
        ("Event-Sequence", HeaderValue::One(&seq_text)),
        ("Unique-ID", HeaderValue::One(call)),
    ];
    let mut body = Vec::new();
    encode_plain(&headers, None, &mut body);
    let key = IdempotencyKey { producer: "6c6ef2a4-0000-4000-8000-ops000000001".into(), id: EventId::Seq(seq) };
    let stream = StreamTarget::new("freeswitch:telephony:events", 0, "events");
    Envelope {
        name: "CHANNEL_ANSWER".into(),
        ordering_key: call.into(),
        timestamp_us: Some(now - 2_000),
        parsed_at_us: now - 1_000,
        ..Envelope::new(Source::Esl, stream, BodyFormat::EslPlain, body.into(), key)
    }
}

/// `name value` of an unlabelled sample in Prometheus text.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in /metrics"))
}

fn promtool_check(text: &str) -> (bool, String) {
    let promtool = support::find_on_path("promtool")
        .expect("promtool not found: install Debian's `prometheus` package (scripts/install-deps.sh does)");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes()).expect("feed promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn metrics_pass_promtool_and_histograms_move_when_events_flow() {
    let redis = RedisServer::start();
    let esl = silent_esl();
    let spool = tempfile::tempdir().expect("temp dir");
    let agent = Agent::start(agent_config(&redis, &esl, spool.path(), &[])).expect("agent starts");
    let addr = agent.http_addr();

    let (status, before) = get(addr, "/metrics");
    assert_eq!(status, 200);
    let (ok, problems) = promtool_check(&before);
    assert!(ok, "promtool check metrics failed:\n{problems}");

    const N: u64 = 50;
    let written_before = agent.state.events_written.load(Ordering::Relaxed);
    for seq in 0..N {
        let submitted = agent.pipeline.submit(event(1_000_000 + seq, &format!("call-{}", seq % 5)));
        assert!(!matches!(submitted, eslstream::pipeline::Submitted::Full(..)), "the pipeline has room");
    }
    wait_until(Duration::from_secs(10), "events written to Redis", || {
        agent.state.events_written.load(Ordering::Relaxed) >= written_before + N
    });

    let (_, after) = get(addr, "/metrics");
    let (ok, problems) = promtool_check(&after);
    assert!(ok, "promtool check metrics failed after traffic:\n{problems}");
    for histogram in [
        "eslstream_writer_latency_seconds_count",
        "eslstream_total_latency_seconds_count",
        "eslstream_batch_size_count",
    ] {
        let moved = sample(&after, histogram) - sample(&before, histogram);
        assert!(moved >= 1.0, "{histogram} did not move ({moved})");
    }
    let observed = sample(&after, "eslstream_total_latency_seconds_count")
        - sample(&before, "eslstream_total_latency_seconds_count");
    assert!(observed >= N as f64, "total latency observed {observed} events, expected at least {N}");
    assert!(
        after.contains(r#"eslstream_total_latency_seconds_bucket{le="0.00005"}"#)
            && after.contains(r#"eslstream_total_latency_seconds_bucket{le="10"}"#),
        "latency buckets run from 50 µs to 10 s"
    );
    assert!(after.contains(r#"eslstream_events_written_total{event="CHANNEL_ANSWER",source="esl",stream="events"}"#));
    println!(
        "{}",
        after
            .lines()
            .filter(|l| l.starts_with("eslstream_total_latency_seconds") || l.contains("eslstream_events_written"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(agent.stop());
}

fn xadd_at(conn: &mut redis::Connection, key: &str, id: &str) {
    let _: String = redis::cmd("XADD").arg(key).arg(id).arg("event").arg("{}").query(conn).expect("XADD");
}

fn count_between(conn: &mut redis::Connection, key: &str, from: &str, to: &str) -> usize {
    let entries: Vec<redis::Value> = redis::cmd("XRANGE").arg(key).arg(from).arg(to).query(conn).expect("XRANGE");
    entries.len()
}

#[test]
fn trimmer_removes_expired_entries_and_keeps_newer_ones() {
    let redis = RedisServer::start();
    let mut conn = redis.connection();
    let events = "freeswitch:telephony:events";
    let jobs = "freeswitch:telephony:background-jobs";
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut conn).expect("TIME");
    let now_ms = secs * 1000 + micros / 1000;
    let old_ms = now_ms - 20 * 60 * 1000;
    const OLD: usize = 1000;
    for seq in 0..OLD {
        xadd_at(&mut conn, events, &format!("{old_ms}-{seq}"));
        xadd_at(&mut conn, jobs, &format!("{old_ms}-{seq}"));
    }
    for _ in 0..10 {
        xadd_at(&mut conn, events, "*");
    }

    let config = Config::from_vars(
        [("REDIS_URL", redis.url()), ("EVENTS_EXPIRE_TIME", "10m".into()), ("JOBS_EXPIRE_TIME", "0".into())]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
    .expect("valid config");
    let trimmed_before = eslstream::telemetry::metrics::metrics().trim.entries.with_label_values(&["events"]).get();
    let mut trimmer = Trimmer::new(std::sync::Arc::new(config));
    let removed = trimmer.trim_all().expect("trim");

    // `~` removes whole stream nodes (100 entries at most each): every node wholly older than
    // the cut-off goes; the one shared with newer entries may keep a few old ones.
    assert_eq!(removed.len(), 1, "only the events stream expires: {removed:?}");
    assert!(removed[0].1 as usize >= OLD - 100, "removed {removed:?}");
    let cutoff = format!("{}", now_ms - 10 * 60 * 1000);
    let old_left = count_between(&mut conn, events, "-", &cutoff);
    assert!(old_left < 100, "{old_left} expired entries left");
    assert_eq!(count_between(&mut conn, events, &cutoff, "+"), 10, "newer entries are kept");
    assert_eq!(count_between(&mut conn, jobs, "-", "+"), OLD, "JOBS_EXPIRE_TIME=0 keeps the jobs stream");
    let trimmed_after = eslstream::telemetry::metrics::metrics().trim.entries.with_label_values(&["events"]).get();
    assert_eq!(trimmed_after - trimmed_before, removed[0].1);

    // A second pass finds nothing more to do.
    assert_eq!(trimmer.trim_all().expect("trim again")[0].1, 0);
}

#[test]
fn trimmer_survives_redis_being_down() {
    let port = support::free_port();
    let config = Config::from_vars(
        [("REDIS_URL", format!("redis://127.0.0.1:{port}")), ("REDIS_REMOTE_DIAL_TIMEOUT", "200ms".into())]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
    .expect("valid config");
    let m = eslstream::telemetry::metrics::metrics();
    let (runs, errors) = (m.trim.runs.get(), m.trim.errors.get());
    let mut trimmer = Trimmer::new(std::sync::Arc::new(config));
    trimmer.pass();
    trimmer.pass();
    assert!(m.trim.runs.get() >= runs + 2);
    assert!(m.trim.errors.get() >= errors + 2);
}

fn binary() -> Command {
    let dir = std::env::temp_dir();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_eslstream"));
    // Away from any `.env` in the source tree, and without the caller's variables.
    cmd.current_dir(dir).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd
}

#[test]
fn health_command_exits_0_when_healthy_and_1_otherwise() {
    let redis = RedisServer::start();
    let esl = silent_esl();
    let spool = tempfile::tempdir().expect("temp dir");
    let agent = Agent::start(agent_config(&redis, &esl, spool.path(), &[])).expect("agent starts");
    let addr = agent.http_addr();
    let port = addr.port().to_string();

    wait_health(addr, one_round(), 503, "degraded");
    let out = binary().args(["health"]).env("HEALTH_PORT", &port).output().expect("run eslstream health");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#""status":"degraded""#));

    agent.state.esl_connected.store(true, Ordering::Release);
    wait_health(addr, one_round(), 200, "healthy");
    let out = binary().args(["health"]).env("HEALTH_PORT", &port).output().expect("run eslstream health");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#""status":"healthy""#));
    let url = format!("http://{addr}/health");
    assert_eq!(binary().args(["health", "--url", &url]).output().expect("run").status.code(), Some(0));
    assert!(agent.stop());

    let out = binary().args(["health"]).env("HEALTH_PORT", &port).output().expect("run eslstream health");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("connection refused"), "{stderr}");
}

#[test]
fn a_taken_health_port_is_a_clear_fatal_error_logged_as_json() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let spool = tempfile::tempdir().expect("temp dir");
    let mut child = binary()
        .envs([
            ("HEALTH_BIND", "127.0.0.1"),
            ("HEALTH_PORT", port.as_str()),
            ("LOG_FORMAT", "json"),
            ("REDIS_REMOTE_POOL_SIZE", "10"),
            ("SPOOL_DIR", spool.path().to_str().expect("UTF-8 path")),
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run eslstream");
    let status = support::wait_child(&mut child, Duration::from_secs(10)).expect("eslstream exits on its own");
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read stderr");
    assert_eq!(status.code(), Some(1), "{stderr}");

    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not one JSON object ({e}): {l}")))
        .collect();
    for line in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(line.get(field).is_some(), "{field} missing in {line}");
        }
    }
    let ignored = lines.iter().find(|l| l["level"] == "WARN").expect("a warning for the ignored variable");
    assert_eq!(ignored["variable"], "REDIS_REMOTE_POOL_SIZE", "fields are top-level keys: {ignored}");
    let fatal = lines.iter().find(|l| l["level"] == "ERROR").expect("an error line");
    let error = fatal["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("cannot listen on 127.0.0.1:{port}")) && error.contains("HEALTH_PORT"), "{fatal}");
}

/// Text logs written to a file (as under `docker logs`, journald or a redirect) carry no
/// colour codes: the agent runs a simulator's traffic into Redis with its output in a file.
#[test]
fn text_logs_written_to_a_file_have_no_colour_codes() {
    use support::{SimulateOptions, Simulator};
    let redis = RedisServer::start();
    let sim = Simulator::start(SimulateOptions { events: Some(200), ..Default::default() }).expect("simulator");
    let spool = tempfile::tempdir().expect("temp dir");
    let env = support::agent_env(sim.local_addr(), &redis.url(), spool.path(), support::free_port());
    let mut agent = support::start_agent(&env, &[("LOG_FORMAT", "text"), ("REDIS_REMOTE_POOL_SIZE", "10")]);
    assert!(sim.wait_done(Duration::from_secs(30)), "the simulator sent its events");
    let mut conn = redis.connection();
    wait_until(Duration::from_secs(30), "the events in Redis", || {
        support::xlen(&mut conn, support::EVENTS) >= sim.stats().events_sent
    });
    assert_eq!(agent.stop(Duration::from_secs(10)), 0);
    let log = std::fs::read(agent.dir().join("output.log")).expect("the agent's output file");
    let text = String::from_utf8_lossy(&log);
    for line in ["eslstream started", "connected to Redis", "WARN", "stopped"] {
        assert!(text.contains(line), "{line:?} is logged:\n{text}");
    }
    assert!(!log.contains(&0x1b), "ANSI escape codes in a log file:\n{text}");
}

/// Runs the agent with stdout and stderr on a new pseudo-terminal until it exits (a taken
/// `HEALTH_PORT` makes it log a warning and an error and exit 1); returns what it wrote.
fn output_on_a_terminal(extra_env: &[(&str, &str)]) -> Vec<u8> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::FromRawFd;
    // SAFETY: plain libc calls on a descriptor this function owns; ptsname_r writes at most
    // `name.len()` bytes.
    let (mut master, slave_path) = unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        assert_eq!(libc::grantpt(fd), 0, "grantpt: {}", std::io::Error::last_os_error());
        assert_eq!(libc::unlockpt(fd), 0, "unlockpt: {}", std::io::Error::last_os_error());
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(fd, name.as_mut_ptr(), name.len()), 0, "ptsname_r");
        let path = std::ffi::CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned();
        (std::fs::File::from_raw_fd(fd), path)
    };
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&slave_path)
        .expect("open the terminal");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let spool = tempfile::tempdir().expect("temp dir");
    let mut child = binary()
        .envs([
            ("HEALTH_BIND", "127.0.0.1"),
            ("HEALTH_PORT", port.as_str()),
            ("REDIS_REMOTE_POOL_SIZE", "10"),
            ("SPOOL_DIR", spool.path().to_str().expect("UTF-8 path")),
        ])
        .envs(extra_env.iter().copied())
        .stdin(Stdio::null())
        .stdout(slave.try_clone().expect("dup terminal"))
        .stderr(slave)
        .spawn()
        .expect("run eslstream");
    let status = support::wait_child(&mut child, Duration::from_secs(10)).expect("eslstream exits on its own");
    assert_eq!(status.code(), Some(1));
    // Every writer is gone: the master reads what was written, then EIO.
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn text_logs_are_coloured_on_a_terminal_unless_no_color_is_set() {
    let coloured = output_on_a_terminal(&[]);
    let text = String::from_utf8_lossy(&coloured).into_owned();
    assert!(text.contains("cannot start"), "{text}");
    assert!(coloured.contains(&0x1b), "a terminal gets colour:\n{text}");

    let plain = output_on_a_terminal(&[("NO_COLOR", "1")]);
    let text = String::from_utf8_lossy(&plain).into_owned();
    assert!(text.contains("cannot start"), "{text}");
    assert!(!plain.contains(&0x1b), "NO_COLOR=1: no colour even on a terminal:\n{text}");

    let json = output_on_a_terminal(&[("LOG_FORMAT", "json")]);
    let text = String::from_utf8_lossy(&json).into_owned();
    assert!(!json.contains(&0x1b), "JSON lines carry no colour:\n{text}");
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line.trim_end_matches('\r'))
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
    }
}

/// Dockerfile instructions, continuation lines joined: `(INSTRUCTION, arguments)`.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(start) = trimmed.strip_suffix('\\') {
            current.push_str(start);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (instruction, args) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
        out.push((instruction.to_ascii_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

#[test]
fn dockerfile_builds_in_one_stage_and_runs_unprivileged_in_another() {
    let text = repo_file("Dockerfile");
    let instructions = dockerfile_instructions(&text);
    let stages: Vec<&str> = instructions.iter().filter(|(i, _)| i == "FROM").map(|(_, a)| a.as_str()).collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage: {stages:?}");
    assert!(stages[0].starts_with("rust:1-bookworm") && stages[0].to_lowercase().ends_with(" as builder"));
    assert!(stages[1].starts_with("debian:bookworm-slim"), "{stages:?}");

    let runtime_start = instructions.iter().rposition(|(i, _)| i == "FROM").expect("runtime stage");
    let (build, runtime) = instructions.split_at(runtime_start);
    assert!(
        build.iter().any(|(i, a)| i == "RUN" && a.contains("cargo build --release --locked")),
        "the build stage runs cargo build --release --locked"
    );
    let runtime_has =
        |instruction: &str, needle: &str| runtime.iter().any(|(i, a)| i == instruction && a.contains(needle));
    assert!(runtime_has("COPY", "--from=builder"), "the binary comes from the build stage");
    assert!(runtime_has("COPY", "/usr/local/bin/eslstream"), "installed as /usr/local/bin/eslstream");
    assert!(runtime_has("RUN", "ca-certificates"), "ca-certificates for rediss://");

    let user = runtime.iter().rev().find(|(i, _)| i == "USER").map(|(_, a)| a.as_str()).expect("a USER");
    assert!(!["root", "0", "0:0", "root:root"].contains(&user), "runs as non-root, not {user}");

    let healthcheck = runtime.iter().find(|(i, _)| i == "HEALTHCHECK").map(|(_, a)| a.as_str()).expect("HEALTHCHECK");
    let binary = env!("CARGO_PKG_NAME");
    assert!(healthcheck.contains(&format!(r#"CMD ["{binary}", "health"]"#)), "{healthcheck}");
    assert_eq!(
        runtime.iter().rev().find(|(i, _)| i == "ENTRYPOINT").map(|(_, a)| a.as_str()),
        Some(r#"["eslstream"]"#)
    );
    assert!(runtime_has("VOLUME", "/var/lib/eslstream"));
    assert!(runtime_has("ENV", "SPOOL_DIR=/var/lib/eslstream/spool"));
    assert!(runtime_has("EXPOSE", "9876"));
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let analyze = support::find_on_path("systemd-analyze").expect("systemd-analyze not found: install systemd");
    let unit = repo_file("systemd/eslstream.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/eslstream\n"), "the unit runs the installed binary");
    // Verify a copy that runs the binary just built (the installed path does not exist here).
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("eslstream.service");
    let built = PathBuf::from(env!("CARGO_BIN_EXE_eslstream"));
    std::fs::write(&copy, unit.replace("/usr/local/bin/eslstream", &built.display().to_string())).expect("write copy");
    let out = Command::new(analyze).arg("verify").arg(&copy).output().expect("run systemd-analyze");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "systemd-analyze verify complained:\n{report}");
}

/// The README's variable table and `.env.example` are generated from the variables'
/// declarations (`src/config/vars.rs`); `ESLSTREAM_BLESS=1` rewrites them after a change there.
#[test]
fn readme_table_and_env_example_are_the_declared_variables() {
    use eslstream::config::vars;
    const START: &str = "<!-- variables: generated from src/config/vars.rs -->\n";
    const END: &str = "<!-- end of variables -->";
    let bless = std::env::var_os("ESLSTREAM_BLESS").is_some();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = repo_file("README.md");
    let (Some(start), Some(end)) = (readme.find(START), readme.find(END)) else {
        panic!("README.md has no {START:?} ... {END:?} block")
    };
    let table = vars::readme_table();
    let generated = format!("{}{START}{table}{}", &readme[..start], &readme[end..]);
    let env_example = vars::env_example();
    if bless {
        std::fs::write(root.join("README.md"), &generated).unwrap();
        std::fs::write(root.join(".env.example"), &env_example).unwrap();
    }
    assert!(
        readme == generated || bless,
        "README.md's variable table differs from src/config/vars.rs (ESLSTREAM_BLESS=1 rewrites it):\n{table}"
    );
    assert!(
        repo_file(".env.example") == env_example || bless,
        ".env.example differs from src/config/vars.rs (ESLSTREAM_BLESS=1 rewrites it)"
    );
}

#[test]
fn env_example_documents_every_variable_with_valid_defaults() {
    let text = repo_file(".env.example");
    let documented: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.strip_prefix('#')?.split_once('='))
        .filter(|(name, _)| name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let defaults = Config::from_vars(HashMap::new()).expect("defaults");
    for line in defaults.describe().lines().filter(|l| !l.starts_with('#')) {
        let name = line.split('=').next().unwrap_or_default();
        assert!(documented.contains_key(name), "{name} is missing from .env.example");
    }
    // The values shown are the defaults, so uncommenting them all changes nothing.
    let uncommented = Config::from_vars(documented).expect(".env.example values are valid");
    assert_eq!(uncommented.describe(), defaults.describe());
}

/// Every `eslstream_…` name in `text`, brace forms expanded: `eslstream_events_{received,
/// written}_total` is two names; a brace right after a complete name is a label set
/// (`eslstream_dead_lettered_total{stream,source}`) and ends it. Prefixes such as
/// `eslstream_*` are skipped.
fn metric_names_in(text: &str) -> std::collections::BTreeSet<String> {
    fn expand(pattern: &str, out: &mut std::collections::BTreeSet<String>) {
        match (pattern.find('{'), pattern.find('}')) {
            (Some(open), Some(close)) if open < close => {
                for option in pattern[open + 1..close].split(',') {
                    expand(&format!("{}{}{}", &pattern[..open], option.trim(), &pattern[close + 1..]), out);
                }
            }
            _ if pattern.ends_with('_') => {}
            _ => {
                out.insert(pattern.to_owned());
            }
        }
    }
    let name_char = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_';
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find("eslstream_") {
        let start = at + found;
        let mut end = start;
        loop {
            while end < bytes.len() && name_char(bytes[end]) {
                end += 1;
            }
            let group_end = text[end..].find('}').map(|i| end + i);
            match group_end {
                Some(close)
                    if bytes.get(end) == Some(&b'{')
                        && bytes[end - 1] == b'_'
                        && bytes[end + 1..close].iter().all(|&c| name_char(c) || c == b',') =>
                {
                    end = close + 1
                }
                _ => break,
            }
        }
        expand(&text[start..end], &mut names);
        at = end.max(start + 1);
    }
    names
}

#[test]
fn metric_names_are_read_from_prose_with_brace_forms_expanded() {
    let names = metric_names_in(
        "`eslstream_events_{received,written}_total` (a `source` label), `eslstream_dead_lettered_total{stream,source}`, \
         `eslstream_{reader,total}_latency_seconds`, `eslstream_spool_{bytes,events}`, `eslstream_*`, eslstream_build_info.",
    );
    let expected = [
        "eslstream_build_info",
        "eslstream_dead_lettered_total",
        "eslstream_events_received_total",
        "eslstream_events_written_total",
        "eslstream_reader_latency_seconds",
        "eslstream_spool_bytes",
        "eslstream_spool_events",
        "eslstream_total_latency_seconds",
    ];
    assert_eq!(names.iter().map(String::as_str).collect::<Vec<_>>(), expected);
}

/// Every metric the README names is on a live agent's `/metrics` (driven through each case by
/// `support::metrics::LiveMetrics`, so that labelled families appear). The same agent shows the `/dlq` default: no `HTTP_TOKEN`, so
/// the start-up log says `/dlq` is loopback-only, and a loopback client is answered.
#[test]
fn every_metric_the_readme_names_is_exported_by_a_live_agent() {
    let readme = repo_file("README.md");
    let mut names = metric_names_in(&readme);
    // The outbox's SQL objects share the prefix; they are not metrics.
    for sql in
        ["eslstream_outbox", "eslstream_outbox_notify", "eslstream_outbox_id_seq", "eslstream_outbox_unpublished"]
    {
        names.remove(sql);
    }
    assert!(names.len() >= 20, "the README names metrics: {names:?}");

    let mut live = support::metrics::LiveMetrics::start();
    let (missing, _) = live.missing(&names, Duration::from_secs(20));
    assert!(missing.is_empty(), "named in README.md but not on /metrics: {missing:?}\n{}", live.agent.output());
    println!("{} metric names from README.md, all exported: {names:?}", names.len());

    let output = live.agent.output();
    let line = "HTTP_TOKEN is unset: /dlq answers loopback clients only";
    assert_eq!(output.matches(line).count(), 1, "said once at start-up:\n{output}");
    let (status, body) = support::http(live.port, "/dlq?limit=1").expect("/dlq answers");
    assert_eq!(status, 200, "a loopback client without a token: {body}");
    assert_eq!(live.agent.stop(Duration::from_secs(10)), 0);
}
