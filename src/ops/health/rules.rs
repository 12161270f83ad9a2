//! The health rules: what each check looks at, and how the checks make a status.

use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::source::outbox::{OutboxView, Role};

/// FreeSWITCH sends a HEARTBEAT event every 20 s.
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(20);
/// How long a connected socket may stay silent: 2.5 heartbeat intervals.
pub(crate) const ESL_SILENCE_TOLERANCE: Duration = Duration::from_secs(50);
/// The queue and the spool fail their checks at this fill level, before anything is dropped.
pub(crate) const HIGH_WATER_PERCENT: u64 = 90;
/// The oldest outbox row may wait this long before the `outbox` check fails.
pub(crate) const OUTBOX_MAX_AGE: Duration = Duration::from_secs(30);
/// A drop keeps the `drops` check failing for this long.
pub(crate) const DROP_WINDOW: Duration = Duration::from_secs(15 * 60);

/// The overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Healthy,
    Degraded,
    Unhealthy,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Degraded => "degraded",
            Status::Unhealthy => "unhealthy",
        }
    }

    /// The value of the `eslstream_health_status` gauge.
    pub(crate) fn gauge_value(self) -> i64 {
        match self {
            Status::Healthy => 0,
            Status::Degraded => 1,
            Status::Unhealthy => 2,
        }
    }
}

/// What the monitor saw at one check: the whole input of the decision.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
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
    /// Why the spool cannot write now, if it cannot (disk full, I/O error).
    pub spool_fault: Option<String>,
    /// What the Redis user may not do (each with the rule that grants it).
    pub missing_permissions: Vec<String>,
    /// Events taken in while none was written, and for how long (only once that lasted
    /// [`Limits::progress_window`]).
    pub unwritten: Option<(u64, Duration)>,
    /// The outbox relay's state, when the agent relays an outbox.
    pub outbox: Option<OutboxView>,
}

/// The thresholds the checks compare against.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// `ESL_ENABLED`: without an event socket there is no `esl` check.
    pub esl_enabled: bool,
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
    /// `HEALTH_CHECK_INTERVAL` x `HEALTH_MAX_RETRIES`: events arriving and none written for
    /// this long is a failed `progress` check.
    pub progress_window: Duration,
}

impl Limits {
    pub(crate) fn from_config(config: &Config) -> Limits {
        Limits {
            esl_enabled: config.esl.enabled,
            esl_silence: ESL_SILENCE_TOLERANCE,
            queue_max: config.writer.buffer_size,
            queue_max_bytes: config.writer.buffer_max_bytes,
            spool_max_bytes: config.spool_max_bytes,
            max_retries: config.health_max_retries,
            drop_window: DROP_WINDOW,
            progress_window: config.health_interval * config.health_max_retries,
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// Why it failed (`None` when it holds).
    pub reason: Option<String>,
}

impl Check {
    pub(crate) fn pass(name: &'static str) -> Check {
        Check { name, ok: true, reason: None }
    }

    pub(crate) fn fail(name: &'static str, reason: String) -> Check {
        Check { name, ok: false, reason: Some(reason) }
    }

    fn failed(checks: &[Check], name: &str) -> bool {
        checks.iter().any(|c| c.name == name && !c.ok)
    }
}

/// Runs every check on a snapshot.
pub(crate) fn evaluate(s: &Snapshot, l: &Limits) -> Vec<Check> {
    let esl = l.esl_enabled.then(|| esl_check(s, l));
    let rest = [redis_check(s), permissions_check(s), queue_check(s, l), spool_check(s, l), drops_check(s, l)];
    let outbox = s.outbox.as_ref().map(outbox_check);
    esl.into_iter().chain(rest).chain([progress_check(s)]).chain(outbox).collect()
}

fn outbox_check(o: &OutboxView) -> Check {
    let error = o.last_error.as_deref().unwrap_or("none yet");
    match o.role {
        Role::Misconfigured => Check::fail("outbox", format!("outbox table {}: {error}", o.table)),
        Role::Connecting | Role::Stopped => {
            Check::fail("outbox", format!("outbox: not connected to PostgreSQL (last error: {error})"))
        }
        Role::Standby => Check::pass("outbox"),
        Role::Active => match o.oldest_row_age_seconds {
            Some(age) if age > OUTBOX_MAX_AGE.as_secs_f64() => Check::fail(
                "outbox",
                format!(
                    "outbox: the oldest of {} waiting rows is {age:.0}s old (a long-running transaction holds the relay back, or Redis is not taking writes)",
                    o.backlog_rows.unwrap_or(0)
                ),
            ),
            _ => Check::pass("outbox"),
        },
    }
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

fn permissions_check(s: &Snapshot) -> Check {
    match s.missing_permissions.as_slice() {
        [] => Check::pass("permissions"),
        missing => Check::fail("permissions", missing.join("; ")),
    }
}

fn progress_check(s: &Snapshot) -> Check {
    match s.unwritten {
        Some((events, since)) => Check::fail(
            "progress",
            format!("{events} events arrived in the last {since:.0?} and none was written to Redis"),
        ),
        None => Check::pass("progress"),
    }
}

fn spool_check(s: &Snapshot, l: &Limits) -> Check {
    if let Some(fault) = &s.spool_fault {
        return Check::fail("spool", format!("spool: {fault}"));
    }
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
pub(crate) struct Streaks {
    pub esl: u32,
    pub redis: u32,
    /// Checks in a row that were not healthy (reported as `recovery_attempts`).
    pub any: u32,
}

impl Streaks {
    /// Counts this round's results in.
    pub(crate) fn update(&mut self, checks: &[Check]) {
        let bump = |n: u32, failed: bool| if failed { n.saturating_add(1) } else { 0 };
        self.esl = bump(self.esl, Check::failed(checks, "esl"));
        self.redis = bump(self.redis, Check::failed(checks, "redis"));
        self.any = bump(self.any, checks.iter().any(|c| !c.ok));
    }
}

/// The verdict for this round's checks, given the streaks already updated with them.
pub(crate) fn decide(checks: &[Check], streaks: &Streaks, limits: &Limits) -> Status {
    if checks.iter().all(|c| c.ok) {
        return Status::Healthy;
    }
    let esl_down = streaks.esl >= limits.max_retries;
    // The user may not write: nothing will be written until someone changes the ACL.
    let not_allowed = Check::failed(checks, "permissions");
    // The last buffer before drops: the spool, or the memory queue when the spool is off.
    let last_buffer = if limits.spool_max_bytes > 0 { "spool" } else { "queue" };
    let redis_down_and_full = streaks.redis >= limits.max_retries && Check::failed(checks, last_buffer);
    if esl_down || redis_down_and_full || not_allowed {
        Status::Unhealthy
    } else {
        Status::Degraded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            esl_enabled: true,
            esl_silence: ESL_SILENCE_TOLERANCE,
            queue_max: 1000,
            queue_max_bytes: 1 << 20,
            spool_max_bytes: 1 << 20,
            max_retries: 3,
            drop_window: DROP_WINDOW,
            progress_window: Duration::from_secs(15),
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
            spool_fault: None,
            missing_permissions: Vec::new(),
            unwritten: None,
            outbox: None,
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
        assert_eq!(names, ["esl", "redis", "permissions", "queue", "spool", "drops", "progress"]);
        assert!(checks.iter().all(|c| c.ok && c.reason.is_none()));
        assert_eq!(verdict(&fine(), 5).0, Status::Healthy);
    }

    #[test]
    fn a_spool_that_cannot_write_missing_permissions_and_no_progress_are_named() {
        let disk = Snapshot { spool_fault: Some("No space left on device (os error 28)".into()), ..fine() };
        let (status, failing, _) = verdict(&disk, 1);
        assert_eq!(status, Status::Degraded);
        assert_eq!(failing, [("spool", "spool: No space left on device (os error 28)".to_owned())]);

        let acl = Snapshot { missing_permissions: vec!["may not run BITFIELD".into()], ..fine() };
        let (status, failing, _) = verdict(&acl, 1);
        assert_eq!(status, Status::Unhealthy, "nothing can be written until the ACL changes");
        assert_eq!(failing[0].0, "permissions");

        let stuck = Snapshot { unwritten: Some((1200, Duration::from_secs(15))), ..fine() };
        let (status, failing, _) = verdict(&stuck, 1);
        assert_eq!(status, Status::Degraded);
        assert_eq!(
            failing,
            [("progress", "1200 events arrived in the last 15s and none was written to Redis".to_owned())]
        );
    }

    #[test]
    fn without_an_event_socket_esl_is_not_checked() {
        let l = Limits { esl_enabled: false, ..limits() };
        let down = Snapshot { esl_connected: false, esl_error: Some("refused".into()), ..fine() };
        let checks = evaluate(&down, &l);
        let names: Vec<_> = checks.iter().map(|c| c.name).collect();
        assert_eq!(names, ["redis", "permissions", "queue", "spool", "drops", "progress"]);
        let mut streaks = Streaks::default();
        for _ in 0..5 {
            streaks.update(&checks);
        }
        assert_eq!(decide(&checks, &streaks, &l), Status::Healthy);
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
}
