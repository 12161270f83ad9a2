//! Integration-test harness, included by each test file with `mod support;`: real Redis servers
//! ([`redis::RedisServer`]), a controllable TCP proxy ([`proxy::TcpProxy`]), the simulator
//! (re-exported from the library), a runner for the built `eslstream` binary ([`Agent`]), and a
//! live agent whose `/metrics` shows every family ([`metrics::LiveMetrics`]), a real
//! PostgreSQL cluster ([`postgres::PgServer`]), and Redis Cluster, Sentinel and a test CA
//! for the scale-out tests ([`topology`]).
//!
//! Everything here is bounded in time: waits take a timeout and panic with a message (and the
//! child's stderr) instead of hanging.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod certs;
pub mod metrics;
pub mod postgres;
pub mod proxy;
pub mod raw_http;
pub mod redis;
pub mod streams;
pub mod topology;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use eslstream_simulate::{event_frames, Fault, SimStats, SimulateOptions, Simulator};
#[allow(unused_imports)]
pub use proxy::TcpProxy;
#[allow(unused_imports)]
pub use redis::RedisServer;
#[allow(unused_imports)]
pub use streams::{
    assert_call_order_as_sent, assert_exactly_once, assert_exactly_once_in_order, read_stream, xlen, StreamEntry,
};

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// The first `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// The Redis-compatible server the tests run: `$REDIS_SERVER_BIN` when set (a path, or a
/// name looked up on `PATH`, e.g. `valkey-server`), else `redis-server` on `PATH`.
pub fn redis_server_bin() -> PathBuf {
    server_tool("REDIS_SERVER_BIN", "redis-server", "apt-get install -y redis-server")
}

/// Its command-line client: `$REDIS_CLI_BIN` when set, else `redis-cli` on `PATH`.
pub fn redis_cli_bin() -> PathBuf {
    server_tool("REDIS_CLI_BIN", "redis-cli", "apt-get install -y redis-tools")
}

fn server_tool(variable: &str, default: &str, install: &str) -> PathBuf {
    match std::env::var_os(variable).filter(|v| !v.is_empty()) {
        Some(given) => {
            let path = PathBuf::from(&given);
            let found = if path.components().count() > 1 {
                Some(path).filter(|p| p.is_file())
            } else {
                find_on_path(&given.to_string_lossy())
            };
            found.unwrap_or_else(|| panic!("{variable}={} is not a file or not on PATH", given.to_string_lossy()))
        }
        None => {
            find_on_path(default).unwrap_or_else(|| panic!("{default} not found on PATH: {install}, or set {variable}"))
        }
    }
}

/// A file of the repository, as text.
pub fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}

/// A capture's bytes (`tests/data/esl-captures/<name>`).
pub fn capture_bytes(name: &str) -> Vec<u8> {
    let path = capture(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read capture {}: {e}", path.display()))
}

/// Waits until the simulator has sent at least `at_least` events.
pub fn wait_sent(sim: &Simulator, at_least: u64) {
    wait_until(Duration::from_secs(60), &format!("{at_least} events sent"), || sim.stats().events_sent >= at_least);
}

/// Waits for every event the simulator sent to be in the events stream (read through `conn`,
/// which finds the primary holding it now), lets a late duplicate show, stops the agent
/// cleanly, and checks the stream: each event exactly once, in per-call order.
pub fn finish(agent: &mut Agent, sim: &Simulator, mut conn: impl FnMut() -> ::redis::Connection) {
    assert!(sim.wait_done(Duration::from_secs(90)), "simulator sent everything");
    let sent = sim.stats().events_sent;
    wait_until(Duration::from_secs(120), "every event in Redis", || xlen(&mut conn(), EVENTS) >= sent);
    std::thread::sleep(Duration::from_millis(500)); // a late duplicate would show up here
    assert_eq!(agent.stop(Duration::from_secs(15)), 0, "clean exit");
    assert_exactly_once_in_order(&read_stream(&mut conn(), EVENTS), sent);
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Polls `condition` every 10 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Path of `esl-captures/<name>` (the real FreeSWITCH captures).
pub fn capture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/esl-captures").join(name)
}

/// A child process with its stdout and stderr in a file; dropped = killed.
pub struct Agent {
    child: Option<Child>,
    status: Option<ExitStatus>,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Agent {
    /// Runs the built `eslstream` binary with `args` and only the environment `env` (plus
    /// `PATH`), in an empty temporary working directory (so no stray `.env` is read).
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Agent {
        Self::spawn(Path::new(env!("CARGO_BIN_EXE_eslstream")), args, env)
    }

    /// Runs any program the same way (the harness tests use it on `sleep`).
    pub fn spawn(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Agent {
        let dir = tempfile::Builder::new().prefix("eslstream-agent-").tempdir().expect("temp dir");
        let log = dir.path().join("output.log");
        let file = std::fs::File::create(&log).expect("create log");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        Agent { child: Some(child), status: None, dir, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("agent was started")
    }

    /// The working directory (for a spool, a `.env`...).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the child wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (a graceful shutdown request).
    pub fn term(&self) {
        if self.status.is_none() {
            signal(self.pid(), libc::SIGTERM);
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let (Some(child), None) = (self.child.as_mut(), self.status) {
            let _ = child.kill();
            self.status = child.wait().ok();
        }
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        }
        self.status
    }

    /// Waits for the exit; `Some(code)` (128 + signal when killed by one), `None` on timeout.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(exit_code(status));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM and wait; panics with the child's output if it does not exit within `timeout`.
    pub fn stop(&mut self, timeout: Duration) -> i32 {
        self.term();
        match self.wait_timeout(timeout) {
            Some(code) => code,
            None => {
                self.kill();
                panic!("process did not exit within {timeout:?} of SIGTERM; output:\n{}", self.output());
            }
        }
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- output of the child process ---\n{}", self.output());
        }
    }
}

/// The events stream key (default configuration).
pub const EVENTS: &str = "freeswitch:telephony:events";
/// The jobs stream key (default configuration).
pub const JOBS: &str = "freeswitch:telephony:background-jobs";

/// Environment for an agent between a simulator and a Redis: every event to the events
/// stream, quick reconnects and retries, health on `health_port`, spool in `spool_dir`.
pub fn agent_env(
    esl: std::net::SocketAddr,
    redis_url: &str,
    spool_dir: &Path,
    health_port: u16,
) -> Vec<(String, String)> {
    [
        ("ESL_HOST", esl.ip().to_string()),
        ("ESL_PORT", esl.port().to_string()),
        ("REDIS_URL", redis_url.to_string()),
        ("EVENTS_TO_PUSH", "ALL".into()),
        ("EVENTS_TO_PUBLISH", "".into()),
        ("EVENTS_MAX_LEN", "0".into()),
        ("SPOOL_DIR", spool_dir.display().to_string()),
        ("HEALTH_BIND", "127.0.0.1".into()),
        ("HEALTH_PORT", health_port.to_string()),
        ("ESL_RECONNECT_DELAY", "100ms".into()),
        ("ESL_MAX_RECONNECT_DELAY", "500ms".into()),
        ("REDIS_REMOTE_DIAL_TIMEOUT", "500ms".into()),
        ("REDIS_REMOTE_WRITE_TIMEOUT", "1s".into()),
        ("WRITER_RETRY_PAUSE_AFTER", "50ms".into()),
        ("WRITER_RETRY_TTL", "1s".into()),
        ("SHUTDOWN_TIMEOUT", "5s".into()),
        ("METRICS_PRINT_INTERVAL", "0".into()),
        ("LOG_LEVEL", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Starts the agent binary with `env` plus `extra` (later values win).
pub fn start_agent(env: &[(String, String)], extra: &[(&str, &str)]) -> Agent {
    let mut all: Vec<(String, String)> = env.to_vec();
    for (k, v) in extra {
        all.retain(|(name, _)| name != k);
        all.push((k.to_string(), v.to_string()));
    }
    let refs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Agent::start(&[], &refs)
}

/// GET on the agent's HTTP port: (status, body).
pub fn http(port: u16, path: &str) -> Option<(u16, String)> {
    eslstream::http::http_get(&format!("http://127.0.0.1:{port}{path}"), Duration::from_secs(2)).ok()
}

/// The agent's `/health` document (`None` while it does not answer).
pub fn health_json(port: u16) -> Option<serde_json::Value> {
    let (_, body) = http(port, "/health")?;
    serde_json::from_str(&body).ok()
}

/// Sum of a counter family's samples whose labels contain `label` (e.g. `reason="spool_full"`).
pub fn metric_sum(port: u16, name: &str, label: &str) -> f64 {
    let Some((_, body)) = http(port, "/metrics") else { return f64::NAN };
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits for a child to exit on its own, up to `timeout`.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
