//! The health monitor: every `HEALTH_CHECK_INTERVAL` it pings Redis on its own connection,
//! takes a snapshot of the agent's state, applies the rules and publishes the report.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::envelope::{now_us, Source};
use crate::ops::context::AppContext;
use crate::ops::health::report::*;
use crate::ops::health::rules::*;
use crate::shutdown::Shutdown;
use crate::sink::target::PrimaryConnections;
use crate::sink::{durability, permissions};
use crate::telemetry::metrics::{dropped_by_reason, metrics};

/// The monitor's connections to every primary holding a stream, found again at each check.
/// Each new connection first checks what the user may do ([`permissions::check`]); every
/// check asks whether the server keeps what it is given ([`durability::check`]).
struct RedisProbe {
    conns: PrimaryConnections,
    /// The streams the agent writes (their keys and dedup keys are checked).
    streams: Vec<String>,
    /// What the user may not do, as of the last connection.
    missing: Vec<String>,
    /// Why a primary could lose data on its own, as of the last connection.
    warnings: Vec<String>,
    /// `host:port` of the primaries written to, as of the last check.
    primaries: Vec<String>,
    /// `REDIS_WAIT_REPLICAS`.
    wait_replicas: u32,
}

impl RedisProbe {
    fn ping(&mut self) -> Result<Duration, String> {
        let started = Instant::now();
        let result = self.try_ping();
        if result.is_err() {
            self.conns.forget(None);
        }
        result.map(|()| started.elapsed()).map_err(|e| e.to_string())
    }

    fn try_ping(&mut self) -> redis::RedisResult<()> {
        let primaries = self.conns.resolve(&self.streams)?;
        self.primaries = primaries.iter().map(|p| p.address.clone()).collect();
        let mut fresh = false;
        for p in &primaries {
            fresh |= self.conns.get(&p.address)?.1;
        }
        // On every new connection, and at every check while something is missing (an admin
        // may fix the ACL at any time).
        if fresh || !self.missing.is_empty() {
            let mut missing = Vec::new();
            for p in &primaries {
                let streams: Vec<&str> = p.streams.iter().map(String::as_str).collect();
                let topology = permissions::TopologyCommands::of(self.conns.config());
                let (conn, _) = self.conns.get(&p.address)?;
                missing.extend(permissions::check(conn, &streams, topology)?.iter().map(|m| m.to_string()));
            }
            if missing != self.missing {
                for m in &missing {
                    error!("{m}");
                }
                if missing.is_empty() {
                    info!("the Redis user may run every command the agent uses");
                }
                self.missing = missing;
            }
        }
        // Every check: settings and replicas can change at any time (a failover leaves the new
        // primary without replicas for a while).
        let mut warnings = Vec::new();
        for p in &primaries {
            let (conn, _) = self.conns.get(&p.address)?;
            let found = durability::check(conn, self.wait_replicas)?;
            warnings.extend(found.into_iter().map(|w| format!("{}: {w}", p.address)));
        }
        if warnings != self.warnings {
            for w in warnings.iter().filter(|w| !self.warnings.contains(w)) {
                warn!("Redis could lose or hold back writes: {w}");
            }
            if warnings.is_empty() {
                info!("Redis keeps what it is given again (no durability warning)");
            }
            self.warnings = warnings;
        }
        for p in &primaries {
            let (conn, _) = self.conns.get(&p.address)?;
            redis::cmd("PING").query::<String>(conn)?;
        }
        Ok(())
    }
}

/// The monitor thread's state between checks.
pub(crate) struct HealthMonitor {
    ctx: Arc<AppContext>,
    limits: Limits,
    probe: RedisProbe,
    streaks: Streaks,
    started: Instant,
    /// When the monitor first saw the current ESL connection.
    esl_seen_connected: Option<Instant>,
    /// The drop counter at each check within the drop window, plus the last one before it.
    drop_history: VecDeque<(Instant, u64)>,
    /// The written counter when it last moved, when that was, and the accepted counter then.
    last_written: (u64, Instant, u64),
    last_status: Option<Status>,
}

impl HealthMonitor {
    pub(crate) fn new(ctx: Arc<AppContext>) -> HealthMonitor {
        let config = &ctx.config;
        let timeout = config.redis.write_timeout.min(config.health_interval);
        let probe = RedisProbe {
            conns: PrimaryConnections::new(config.redis.clone(), timeout),
            streams: [&config.streams.events_key, &config.streams.jobs_key]
                .into_iter()
                .chain(config.http_ingress.enabled.then_some(&config.http_ingress.stream_key))
                .chain(config.outbox.as_ref().map(|o| &o.stream_key))
                .cloned()
                .collect(),
            missing: Vec::new(),
            warnings: Vec::new(),
            primaries: Vec::new(),
            wait_replicas: config.redis.wait_replicas,
        };
        HealthMonitor {
            limits: Limits::from_config(config),
            ctx,
            probe,
            streaks: Streaks::default(),
            started: Instant::now(),
            esl_seen_connected: None,
            drop_history: VecDeque::new(),
            last_written: (0, Instant::now(), 0),
            last_status: None,
        }
    }

    /// Checks now, then every `HEALTH_CHECK_INTERVAL` until shutdown.
    pub(crate) fn run(mut self, shutdown: Shutdown) {
        loop {
            self.check_once();
            if !shutdown.sleep(self.ctx.config.health_interval) {
                break;
            }
        }
    }

    /// One round: gather, evaluate, publish, log a change of status.
    pub(crate) fn check_once(&mut self) {
        let ping = self.probe.ping();
        let snapshot = self.snapshot(ping);
        let checks = evaluate(&snapshot, &self.limits);
        self.streaks.update(&checks);
        let status = decide(&checks, &self.streaks, &self.limits);
        let report = self.report(&snapshot, checks, status);
        self.log_change(&report);
        metrics().health.status.set(status.gauge_value());
        metrics().health.redis_up.set(i64::from(snapshot.redis_ping.is_ok()));
        if let Ok(ping) = snapshot.redis_ping {
            metrics().health.redis_ping.set(ping.as_secs_f64());
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

        // Events lost with spool files deleted under the agent are drops too (of no known source).
        let dropped_total = self.ctx.state.events_dropped.load(Ordering::Relaxed) + self.ctx.spool.lost();
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
            spool_fault: self.ctx.spool.fault(),
            missing_permissions: self.probe.missing.clone(),
            unwritten: self.unwritten(now),
            outbox: self.ctx.outbox.as_ref().map(|o| o.view()),
        }
    }

    /// Events taken in since the written counter last moved, once it has not moved for the
    /// progress window (whatever the cause: Redis down, refusing, the spool or memory stuck).
    fn unwritten(&mut self, now: Instant) -> Option<(u64, Duration)> {
        let written = self.ctx.state.events_written.load(Ordering::Relaxed);
        let accepted = self.ctx.state.accepted();
        if written != self.last_written.0 {
            self.last_written = (written, now, accepted);
            return None;
        }
        let since = now.duration_since(self.last_written.1);
        let arrived = accepted.saturating_sub(self.last_written.2);
        (arrived > 0 && since >= self.limits.progress_window).then_some((arrived, since))
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
                sources: self.sources(),
                outbox: s.outbox.clone(),
                ha: self.ctx.pair.as_ref().map(|p| p.view()),
                redis: RedisHealth {
                    connected: s.redis_ping.is_ok(),
                    ping_ms,
                    writers_up: self.ctx.state.redis_writers_up.load(Ordering::Relaxed),
                    primaries: self.probe.primaries.clone(),
                    warnings: self.probe.warnings.clone(),
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

    /// Every source, enabled or not, with its counts.
    fn sources(&self) -> std::collections::BTreeMap<&'static str, SourceHealth> {
        Source::ALL
            .into_iter()
            .map(|source| {
                let (received, written, dropped) = self.ctx.state.source_counts(source);
                let enabled = self.ctx.config.reads(source);
                (source.label(), SourceHealth { enabled, received, written, dropped })
            })
            .collect()
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
