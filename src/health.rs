//! Health: the monitor that looks at the agent every `HEALTH_CHECK_INTERVAL`, the pure rules
//! that turn what it saw into `healthy` / `degraded` / `unhealthy`, and the report `/health`
//! serves.
//!
//! Five checks, each with a reason when it fails:
//! 1. `esl`: the socket is connected, and something (a HEARTBEAT or any other data) arrived
//!    within [`ESL_SILENCE_TOLERANCE`] (2.5 of FreeSWITCH's 20 s heartbeats); a socket connected
//!    for less than that is not yet expected to have spoken.
//! 2. `redis`: Redis answers `PING` on the monitor's own connection within
//!    `min(REDIS_REMOTE_WRITE_TIMEOUT, HEALTH_CHECK_INTERVAL)`.
//! 3. `queue`: the memory queue is below [`HIGH_WATER_PERCENT`] of `BUFFER_SIZE`.
//! 4. `spool`: the spool is below [`HIGH_WATER_PERCENT`] of `SPOOL_MAX_BYTES` (always holds
//!    when the spool is off, `SPOOL_MAX_BYTES=0`).
//! 5. `drops`: no event was dropped within [`DROP_WINDOW`] (the total since start is always
//!    reported; the counter `eslstream_events_dropped_total` keeps every drop for alerting).
//!
//! Status: `healthy` (HTTP 200) when every check holds. `unhealthy` when the agent cannot do
//! its job: ESL has failed `HEALTH_MAX_RETRIES` checks in a row (nothing is being read), or
//! Redis has failed `HEALTH_MAX_RETRIES` checks in a row while the last buffer is nearly full
//! (the spool, or the memory queue when the spool is off: events are about to be lost). Anything else failing is `degraded`: the agent is working around it
//! (buffering, spooling, reconnecting). Both answer HTTP 503.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::{Config, RedisConfig};
use crate::envelope::now_us;
use crate::http::AppContext;
use crate::metrics::{dropped_by_reason, metrics};
use crate::shutdown::Shutdown;

/// FreeSWITCH sends a HEARTBEAT event every 20 s.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(20);
/// How long a connected socket may stay silent: 2.5 heartbeat intervals.
pub const ESL_SILENCE_TOLERANCE: Duration = Duration::from_secs(50);
/// The queue and the spool fail their checks at this fill level, before anything is dropped.
pub const HIGH_WATER_PERCENT: u64 = 90;
/// A drop keeps the `drops` check failing for this long.
pub const DROP_WINDOW: Duration = Duration::from_secs(15 * 60);

/// The overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Degraded,
    Unhealthy,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Degraded => "degraded",
            Status::Unhealthy => "unhealthy",
        }
    }

    /// The value of the `eslstream_health_status` gauge.
    pub fn gauge_value(self) -> i64 {
        match self {
            Status::Healthy => 0,
            Status::Degraded => 1,
            Status::Unhealthy => 2,
        }
    }
}

/// What the monitor saw at one check: the whole input of the decision.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub esl_connected: bool,
    /// How long the socket has been connected, as far as the monitor knows.
    pub esl_connected_for: Duration,
    /// Time since the last HEARTBEAT or byte read, whichever is later (`None`: neither yet).
    pub esl_silent_for: Option<Duration>,
    /// The last error the ESL client recorded, if any.
    pub esl_error: Option<String>,
    /// The monitor's `PING`: its round trip, or why it failed.
    pub redis_ping: Result<Duration, String>,
    pub queue_depth: usize,
    /// Bytes of the events waiting in memory.
    pub queue_bytes: u64,
    pub spool_bytes: u64,
    pub dropped_total: u64,
    /// Events dropped within [`Limits::drop_window`].
    pub dropped_recently: u64,
}

/// The thresholds the checks compare against.
#[derive(Debug, Clone)]
pub struct Limits {
    pub esl_silence: Duration,
    /// `BUFFER_SIZE`.
    pub queue_max: usize,
    /// `BUFFER_MAX_BYTES`.
    pub queue_max_bytes: u64,
    /// `SPOOL_MAX_BYTES`.
    pub spool_max_bytes: u64,
    /// `HEALTH_MAX_RETRIES`: failed checks in a row before ESL or Redis counts as down for good.
    pub max_retries: u32,
    pub drop_window: Duration,
}

impl Limits {
    pub fn from_config(config: &Config) -> Limits {
        Limits {
            esl_silence: ESL_SILENCE_TOLERANCE,
            queue_max: config.writer.buffer_size,
            queue_max_bytes: config.writer.buffer_max_bytes,
            spool_max_bytes: config.spool_max_bytes,
            max_retries: config.health_max_retries,
            drop_window: DROP_WINDOW,
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// Why it failed (`None` when it holds).
    pub reason: Option<String>,
}

impl Check {
    fn pass(name: &'static str) -> Check {
        Check { name, ok: true, reason: None }
    }

    fn fail(name: &'static str, reason: String) -> Check {
        Check { name, ok: false, reason: Some(reason) }
    }

    fn failed(checks: &[Check], name: &str) -> bool {
        checks.iter().any(|c| c.name == name && !c.ok)
    }
}

/// Runs every check on a snapshot.
pub fn evaluate(s: &Snapshot, l: &Limits) -> Vec<Check> {
    vec![esl_check(s, l), redis_check(s), queue_check(s, l), spool_check(s, l), drops_check(s, l)]
}

fn esl_check(s: &Snapshot, l: &Limits) -> Check {
    if !s.esl_connected {
        let reason = match &s.esl_error {
            Some(e) => format!("ESL not connected (last error: {e})"),
            None => "ESL not connected yet".to_owned(),
        };
        return Check::fail("esl", reason);
    }
    // Data from an earlier connection does not count: quiet time is at most the time connected.
    let quiet = s.esl_silent_for.unwrap_or(Duration::MAX).min(s.esl_connected_for);
    if quiet > l.esl_silence {
        return Check::fail(
            "esl",
            format!(
                "ESL connected but nothing received for {}s (no HEARTBEAT and no data; FreeSWITCH sends a HEARTBEAT every {}s)",
                quiet.as_secs(),
                HEARTBEAT_INTERVAL.as_secs()
            ),
        );
    }
    Check::pass("esl")
}

fn redis_check(s: &Snapshot) -> Check {
    match &s.redis_ping {
        Ok(_) => Check::pass("redis"),
        Err(e) => Check::fail("redis", format!("Redis PING failed: {e}")),
    }
}

fn over_high_water(value: u64, max: u64) -> bool {
    value.saturating_mul(100) >= max.saturating_mul(HIGH_WATER_PERCENT)
}

fn queue_check(s: &Snapshot, l: &Limits) -> Check {
    if over_high_water(s.queue_depth as u64, l.queue_max as u64) {
        return Check::fail(
            "queue",
            format!(
                "memory queue holds {} events, {}% of BUFFER_SIZE={} (Redis slow or down?)",
                s.queue_depth,
                s.queue_depth as u64 * 100 / (l.queue_max as u64).max(1),
                l.queue_max
            ),
        );
    }
    if over_high_water(s.queue_bytes, l.queue_max_bytes) {
        return Check::fail(
            "queue",
            format!(
                "memory queue holds {} bytes, {}% of BUFFER_MAX_BYTES={} (Redis slow or down?)",
                s.queue_bytes,
                s.queue_bytes * 100 / l.queue_max_bytes.max(1),
                l.queue_max_bytes
            ),
        );
    }
    Check::pass("queue")
}

fn spool_check(s: &Snapshot, l: &Limits) -> Check {
    if l.spool_max_bytes > 0 && over_high_water(s.spool_bytes, l.spool_max_bytes) {
        return Check::fail(
            "spool",
            format!(
                "spool holds {} bytes, {}% of SPOOL_MAX_BYTES={} (events are dropped when it is full)",
                s.spool_bytes,
                s.spool_bytes.saturating_mul(100) / l.spool_max_bytes.max(1),
                l.spool_max_bytes
            ),
        );
    }
    Check::pass("spool")
}

fn drops_check(s: &Snapshot, l: &Limits) -> Check {
    if s.dropped_recently > 0 {
        return Check::fail(
            "drops",
            format!(
                "{} events dropped in the last {}m ({} since start; see dropped.by_reason)",
                s.dropped_recently,
                l.drop_window.as_secs() / 60,
                s.dropped_total
            ),
        );
    }
    Check::pass("drops")
}

/// Failed checks in a row, per check that can escalate, and overall.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streaks {
    pub esl: u32,
    pub redis: u32,
    /// Checks in a row that were not healthy (reported as `recovery_attempts`).
    pub any: u32,
}

impl Streaks {
    /// Counts this round's results in.
    pub fn update(&mut self, checks: &[Check]) {
        let bump = |n: u32, failed: bool| if failed { n.saturating_add(1) } else { 0 };
        self.esl = bump(self.esl, Check::failed(checks, "esl"));
        self.redis = bump(self.redis, Check::failed(checks, "redis"));
        self.any = bump(self.any, checks.iter().any(|c| !c.ok));
    }
}

/// The verdict for this round's checks, given the streaks already updated with them.
pub fn decide(checks: &[Check], streaks: &Streaks, limits: &Limits) -> Status {
    if checks.iter().all(|c| c.ok) {
        return Status::Healthy;
    }
    let esl_down = streaks.esl >= limits.max_retries;
    // The last buffer before drops: the spool, or the memory queue when the spool is off.
    let last_buffer = if limits.spool_max_bytes > 0 { "spool" } else { "queue" };
    let redis_down_and_full = streaks.redis >= limits.max_retries && Check::failed(checks, last_buffer);
    if esl_down || redis_down_and_full {
        Status::Unhealthy
    } else {
        Status::Degraded
    }
}

/// The `/health` document: the reference's fields, then ours.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub status: Status,
    pub data: HealthData,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthData {
    /// RFC 3339 time of the last HEARTBEAT (`null`: none yet).
    pub last_heartbeat: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// Checks in a row that were not healthy (0 when healthy).
    pub recovery_attempts: u32,
    pub is_healthy: bool,
    /// RFC 3339 time of the check this report comes from (`null`: none has run yet).
    pub last_check: Option<String>,
    pub esl: EslHealth,
    pub redis: RedisHealth,
    pub queue_depth: usize,
    pub queue_bytes: u64,
    pub spool: SpoolHealth,
    pub dropped: DroppedHealth,
    /// Events Redis refused for good, kept for inspection and retry (`GET /dlq`).
    pub dead_letters: u64,
    pub checks: Vec<Check>,
    pub version: &'static str,
    pub uptime_seconds: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EslHealth {
    pub connected: bool,
    pub last_heartbeat: Option<String>,
    /// RFC 3339 time of the last byte read from the socket.
    pub last_data: Option<String>,
    pub reconnects: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RedisHealth {
    /// The monitor's `PING` succeeded.
    pub connected: bool,
    pub ping_ms: Option<f64>,
    /// Writers whose connection is up (writers connect when they have something to write).
    pub writers_up: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpoolHealth {
    pub bytes: u64,
    pub events: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DroppedHealth {
    pub total: u64,
    pub by_reason: BTreeMap<String, u64>,
}

impl HealthReport {
    /// What `/health` answers before the first check has completed.
    pub fn starting() -> HealthReport {
        let check = Check::fail("startup", "the first health check has not completed yet".to_owned());
        HealthReport {
            status: Status::Unhealthy,
            data: HealthData {
                last_heartbeat: None,
                last_error: None,
                last_error_at: None,
                recovery_attempts: 0,
                is_healthy: false,
                last_check: None,
                esl: EslHealth { connected: false, last_heartbeat: None, last_data: None, reconnects: 0 },
                redis: RedisHealth { connected: false, ping_ms: None, writers_up: 0 },
                queue_depth: 0,
                queue_bytes: 0,
                spool: SpoolHealth { bytes: 0, events: 0 },
                dropped: DroppedHealth { total: 0, by_reason: BTreeMap::new() },
                dead_letters: 0,
                checks: vec![check],
                version: env!("CARGO_PKG_VERSION"),
                uptime_seconds: 0,
            },
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.status == Status::Healthy
    }

    /// Failing checks as one line, for logs.
    pub fn reasons(&self) -> String {
        let reasons: Vec<&str> = self.data.checks.iter().filter_map(|c| c.reason.as_deref()).collect();
        reasons.join("; ")
    }
}

/// Where the monitor publishes its latest report and `/health` reads it.
pub struct HealthBoard {
    latest: RwLock<Arc<HealthReport>>,
}

impl Default for HealthBoard {
    fn default() -> Self {
        HealthBoard { latest: RwLock::new(Arc::new(HealthReport::starting())) }
    }
}

impl HealthBoard {
    pub fn latest(&self) -> Arc<HealthReport> {
        self.latest.read().clone()
    }

    pub fn publish(&self, report: HealthReport) {
        *self.latest.write() = Arc::new(report);
    }
}

/// Opens a Redis connection whose connect, read and write each give up after `timeout`.
pub fn connect_redis(config: &RedisConfig, timeout: Duration) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(config.url.as_str())?;
    let conn = client.get_connection_with_timeout(config.dial_timeout.min(timeout))?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    Ok(conn)
}

/// The monitor's own Redis connection, re-made after any failure.
struct RedisProbe {
    config: RedisConfig,
    timeout: Duration,
    conn: Option<redis::Connection>,
}

impl RedisProbe {
    fn ping(&mut self) -> Result<Duration, String> {
        let started = Instant::now();
        let result = self.try_ping();
        if result.is_err() {
            self.conn = None;
        }
        result.map(|()| started.elapsed()).map_err(|e| e.to_string())
    }

    fn try_ping(&mut self) -> redis::RedisResult<()> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(connect_redis(&self.config, self.timeout)?),
        };
        redis::cmd("PING").query::<String>(conn).map(drop)
    }
}

/// The monitor thread's state between checks.
pub struct HealthMonitor {
    ctx: Arc<AppContext>,
    limits: Limits,
    probe: RedisProbe,
    streaks: Streaks,
    started: Instant,
    /// When the monitor first saw the current ESL connection.
    esl_seen_connected: Option<Instant>,
    /// The drop counter at each check within the drop window, plus the last one before it.
    drop_history: VecDeque<(Instant, u64)>,
    last_status: Option<Status>,
}

impl HealthMonitor {
    pub fn new(ctx: Arc<AppContext>) -> HealthMonitor {
        let config = &ctx.config;
        let probe = RedisProbe {
            config: config.redis.clone(),
            timeout: config.redis.write_timeout.min(config.health_interval),
            conn: None,
        };
        HealthMonitor {
            limits: Limits::from_config(config),
            ctx,
            probe,
            streaks: Streaks::default(),
            started: Instant::now(),
            esl_seen_connected: None,
            drop_history: VecDeque::new(),
            last_status: None,
        }
    }

    /// Checks now, then every `HEALTH_CHECK_INTERVAL` until shutdown.
    pub fn run(mut self, shutdown: Shutdown) {
        loop {
            self.check_once();
            if !shutdown.sleep(self.ctx.config.health_interval) {
                break;
            }
        }
    }

    /// One round: gather, evaluate, publish, log a change of status.
    pub fn check_once(&mut self) {
        let ping = self.probe.ping();
        let snapshot = self.snapshot(ping);
        let checks = evaluate(&snapshot, &self.limits);
        self.streaks.update(&checks);
        let status = decide(&checks, &self.streaks, &self.limits);
        let report = self.report(&snapshot, checks, status);
        self.log_change(&report);
        metrics().health_status.set(status.gauge_value());
        if let Ok(ping) = snapshot.redis_ping {
            metrics().redis_ping.set(ping.as_secs_f64());
        }
        self.ctx.health.publish(report);
    }

    fn snapshot(&mut self, redis_ping: Result<Duration, String>) -> Snapshot {
        let now = Instant::now();
        let esl_connected = self.ctx.state.esl_connected.load(Ordering::Acquire);
        self.esl_seen_connected = if esl_connected { Some(self.esl_seen_connected.unwrap_or(now)) } else { None };
        let state = &self.ctx.state;
        let last_alive =
            state.last_heartbeat_us.load(Ordering::Relaxed).max(state.last_esl_read_us.load(Ordering::Relaxed));
        let esl_silent_for = (last_alive > 0).then(|| micros_ago(last_alive));
        let esl_error = self.ctx.state.last_error().and_then(|(_, e)| e.strip_prefix("ESL: ").map(str::to_owned));

        let dropped_total = self.ctx.state.events_dropped.load(Ordering::Relaxed);
        let dropped_recently = self.dropped_within_window(now, dropped_total);

        Snapshot {
            esl_connected,
            esl_connected_for: self.esl_seen_connected.map_or(Duration::ZERO, |at| now.duration_since(at)),
            esl_silent_for,
            esl_error,
            redis_ping,
            queue_depth: self.ctx.pipeline.depth(),
            queue_bytes: self.ctx.pipeline.memory_bytes(),
            spool_bytes: self.ctx.spool.used(),
            dropped_total,
            dropped_recently,
        }
    }

    /// Drops since the start of the window: the counter now minus its value at the last check
    /// before the window began (0 while the monitor is younger than the window).
    fn dropped_within_window(&mut self, now: Instant, total: u64) -> u64 {
        let window = self.limits.drop_window;
        self.drop_history.push_back((now, total));
        while self.drop_history.len() > 1 && now.duration_since(self.drop_history[1].0) >= window {
            self.drop_history.pop_front();
        }
        let base = match self.drop_history.front() {
            Some(&(at, value)) if now.duration_since(at) >= window => value,
            _ => 0,
        };
        total.saturating_sub(base)
    }

    fn report(&self, s: &Snapshot, checks: Vec<Check>, status: Status) -> HealthReport {
        let heartbeat = timestamp(self.ctx.state.last_heartbeat_us.load(Ordering::Relaxed));
        let last_error = self.ctx.state.last_error();
        let ping_ms = s.redis_ping.as_ref().ok().map(|d| (d.as_secs_f64() * 1e6).round() / 1e3);
        HealthReport {
            status,
            data: HealthData {
                last_heartbeat: heartbeat.clone(),
                last_error_at: last_error.as_ref().map(|(at, _)| rfc3339(*at)),
                last_error: last_error.map(|(_, e)| e),
                recovery_attempts: self.streaks.any,
                is_healthy: status == Status::Healthy,
                last_check: Some(rfc3339(now_us())),
                esl: EslHealth {
                    connected: s.esl_connected,
                    last_heartbeat: heartbeat,
                    last_data: timestamp(self.ctx.state.last_esl_read_us.load(Ordering::Relaxed)),
                    reconnects: self.ctx.state.esl_reconnects.load(Ordering::Relaxed),
                },
                redis: RedisHealth {
                    connected: s.redis_ping.is_ok(),
                    ping_ms,
                    writers_up: self.ctx.state.redis_writers_up.load(Ordering::Relaxed),
                },
                queue_depth: s.queue_depth,
                queue_bytes: s.queue_bytes,
                spool: SpoolHealth { bytes: s.spool_bytes, events: self.ctx.spool.events() },
                dead_letters: self.ctx.dead_letters.len(),
                dropped: DroppedHealth { total: s.dropped_total, by_reason: dropped_by_reason() },
                checks,
                version: env!("CARGO_PKG_VERSION"),
                uptime_seconds: self.started.elapsed().as_secs(),
            },
        }
    }

    fn log_change(&mut self, report: &HealthReport) {
        if self.last_status == Some(report.status) {
            return;
        }
        match report.status {
            Status::Healthy => info!(status = "healthy", "health: all checks pass"),
            // The first check runs as the agent starts, before ESL can have connected.
            status if self.last_status.is_none() => {
                info!(status = status.as_str(), reasons = %report.reasons(), "health: starting")
            }
            status => warn!(status = status.as_str(), reasons = %report.reasons(), "health: not healthy"),
        }
        self.last_status = Some(report.status);
    }
}

fn micros_ago(at_us: i64) -> Duration {
    Duration::from_micros(now_us().saturating_sub(at_us).max(0) as u64)
}

fn timestamp(us: i64) -> Option<String> {
    (us > 0).then(|| rfc3339(us))
}

/// Formats microseconds since the Unix epoch as RFC 3339 UTC with milliseconds,
/// e.g. `2024-01-15T10:00:00.000Z`.
pub fn rfc3339(us: i64) -> String {
    let ms = us.div_euclid(1000);
    let secs = ms.div_euclid(1000);
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = crate::civil::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60,
        ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            esl_silence: ESL_SILENCE_TOLERANCE,
            queue_max: 1000,
            queue_max_bytes: 1 << 20,
            spool_max_bytes: 1 << 20,
            max_retries: 3,
            drop_window: DROP_WINDOW,
        }
    }

    /// Everything fine: connected for a minute, a heartbeat 5 s ago, Redis answering.
    fn fine() -> Snapshot {
        Snapshot {
            esl_connected: true,
            esl_connected_for: Duration::from_secs(60),
            esl_silent_for: Some(Duration::from_secs(5)),
            esl_error: None,
            redis_ping: Ok(Duration::from_micros(300)),
            queue_depth: 10,
            queue_bytes: 10_000,
            spool_bytes: 0,
            dropped_total: 0,
            dropped_recently: 0,
        }
    }

    fn failing(checks: &[Check]) -> Vec<(&'static str, String)> {
        checks.iter().filter(|c| !c.ok).map(|c| (c.name, c.reason.clone().unwrap_or_default())).collect()
    }

    /// Evaluates `rounds` identical snapshots in a row, as the monitor would.
    fn verdict(s: &Snapshot, rounds: u32) -> (Status, Vec<(&'static str, String)>, Streaks) {
        let mut streaks = Streaks::default();
        let mut checks = Vec::new();
        for _ in 0..rounds {
            checks = evaluate(s, &limits());
            streaks.update(&checks);
        }
        (decide(&checks, &streaks, &limits()), failing(&checks), streaks)
    }

    #[test]
    fn all_checks_pass_when_everything_is_fine() {
        let checks = evaluate(&fine(), &limits());
        let names: Vec<_> = checks.iter().map(|c| c.name).collect();
        assert_eq!(names, ["esl", "redis", "queue", "spool", "drops"]);
        assert!(checks.iter().all(|c| c.ok && c.reason.is_none()));
        assert_eq!(verdict(&fine(), 5).0, Status::Healthy);
    }

    #[test]
    fn esl_down_is_degraded_then_unhealthy_after_max_retries() {
        let s = Snapshot {
            esl_connected: false,
            esl_connected_for: Duration::ZERO,
            esl_error: Some("cannot connect to 127.0.0.1:8021: Connection refused".into()),
            ..fine()
        };
        let (status, failed, _) = verdict(&s, 1);
        assert_eq!(status, Status::Degraded);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, "esl");
        assert!(failed[0].1.contains("Connection refused"), "{}", failed[0].1);
        assert_eq!(verdict(&s, 2).0, Status::Degraded);
        let (status, _, streaks) = verdict(&s, 3);
        assert_eq!(status, Status::Unhealthy);
        assert_eq!(streaks, Streaks { esl: 3, redis: 0, any: 3 });
    }

    #[test]
    fn silence_counts_only_past_the_tolerance_and_since_connecting() {
        // Just connected, nothing received yet: not expected to have spoken.
        let s = Snapshot { esl_connected_for: Duration::from_secs(10), esl_silent_for: None, ..fine() };
        assert_eq!(verdict(&s, 1).0, Status::Healthy);
        // Data long ago, but from an earlier connection made 10 s ago: still fine.
        let s = Snapshot { esl_connected_for: Duration::from_secs(10), esl_silent_for: Some(Duration::MAX), ..fine() };
        assert_eq!(verdict(&s, 1).0, Status::Healthy);
        // Connected for a while, nothing for 2.5 heartbeats and more.
        let s = Snapshot { esl_silent_for: Some(Duration::from_secs(51)), ..fine() };
        let (status, failed, _) = verdict(&s, 1);
        assert_eq!(status, Status::Degraded);
        assert!(failed[0].1.contains("nothing received for 51s"), "{}", failed[0].1);
        // Connected long ago, never any data.
        let s = Snapshot { esl_connected_for: Duration::from_secs(120), esl_silent_for: None, ..fine() };
        assert_eq!(failing(&evaluate(&s, &limits()))[0].0, "esl");
    }

    #[test]
    fn redis_down_is_degraded_until_the_spool_is_nearly_full() {
        let s = Snapshot { redis_ping: Err("Connection refused (os error 111)".into()), ..fine() };
        let (status, failed, _) = verdict(&s, 10);
        assert_eq!(status, Status::Degraded);
        assert_eq!(failed, vec![("redis", "Redis PING failed: Connection refused (os error 111)".to_owned())]);
        let full = Snapshot { spool_bytes: 1_000_000, ..s };
        assert_eq!(verdict(&full, 2).0, Status::Degraded);
        let (status, failed, _) = verdict(&full, 3);
        assert_eq!(status, Status::Unhealthy);
        assert_eq!(failed[1].0, "spool");
        assert!(failed[1].1.contains("95% of SPOOL_MAX_BYTES=1048576"), "{}", failed[1].1);
    }

    #[test]
    fn without_a_spool_the_queue_is_the_last_buffer() {
        let no_spool = Limits { spool_max_bytes: 0, ..limits() };
        let s = Snapshot { redis_ping: Err("timed out".into()), queue_depth: 950, ..fine() };
        let mut streaks = Streaks::default();
        let mut checks = Vec::new();
        for round in 1..=3 {
            checks = evaluate(&s, &no_spool);
            streaks.update(&checks);
            let expected = if round < 3 { Status::Degraded } else { Status::Unhealthy };
            assert_eq!(decide(&checks, &streaks, &no_spool), expected, "round {round}");
        }
        assert_eq!(failing(&checks).iter().map(|f| f.0).collect::<Vec<_>>(), ["redis", "queue"]);
        // With a spool, a full memory queue alone does not make Redis trouble fatal.
        assert_eq!(decide(&evaluate(&s, &limits()), &streaks, &limits()), Status::Degraded);
    }

    #[test]
    fn queue_and_drops_degrade() {
        let s = Snapshot { queue_depth: 899, ..fine() };
        assert_eq!(verdict(&s, 1).0, Status::Healthy);
        let s = Snapshot { queue_depth: 900, ..fine() };
        let (status, failed, _) = verdict(&s, 5);
        assert_eq!(status, Status::Degraded);
        assert!(failed[0].1.contains("900 events, 90% of BUFFER_SIZE=1000"), "{}", failed[0].1);
        // The byte bound counts too (a few big events can fill memory).
        let s = Snapshot { queue_bytes: 1 << 20, ..fine() };
        let (status, failed, _) = verdict(&s, 5);
        assert_eq!(status, Status::Degraded);
        assert!(failed[0].1.contains("1048576 bytes, 100% of BUFFER_MAX_BYTES=1048576"), "{}", failed[0].1);

        let s = Snapshot { dropped_total: 40, dropped_recently: 0, ..fine() };
        assert_eq!(verdict(&s, 1).0, Status::Healthy);
        let s = Snapshot { dropped_total: 40, dropped_recently: 12, ..fine() };
        let (status, failed, _) = verdict(&s, 5);
        assert_eq!(status, Status::Degraded);
        assert_eq!(failed[0].1, "12 events dropped in the last 15m (40 since start; see dropped.by_reason)");
    }

    #[test]
    fn streaks_reset_on_success() {
        let mut streaks = Streaks::default();
        let down = evaluate(&Snapshot { esl_connected: false, ..fine() }, &limits());
        streaks.update(&down);
        streaks.update(&down);
        streaks.update(&evaluate(&fine(), &limits()));
        assert_eq!(streaks, Streaks::default());
    }

    #[test]
    fn rfc3339_formats_utc_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_705_312_800_123_456), "2024-01-15T10:00:00.123Z");
        assert_eq!(rfc3339(951_782_400_000_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(4_102_444_799_999_000), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn starting_report_is_unhealthy_with_a_reason() {
        let r = HealthReport::starting();
        assert_eq!(r.status, Status::Unhealthy);
        assert!(!r.is_healthy());
        assert_eq!(r.reasons(), "the first health check has not completed yet");
    }
}
