//! What `/health` serves ([`HealthReport`]) and where the monitor leaves the latest one
//! ([`HealthBoard`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;

use crate::ops::health::rules::{Check, Status};

/// The `/health` document: the reference's fields, then ours.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HealthReport {
    pub status: Status,
    pub data: HealthData,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct HealthData {
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
    /// Each source: whether it runs, and what it took in, wrote and dropped since start.
    pub sources: BTreeMap<&'static str, SourceHealth>,
    /// The outbox relay (`null` unless `OUTBOX_DATABASE_URL` is set): role (`active`,
    /// `standby`, `connecting`, `misconfigured`), backlog and the oldest row's age.
    pub outbox: Option<crate::source::outbox::OutboxView>,
    /// This agent's side of a hot-standby pair (`null` unless `HA_GROUP` is set): its role,
    /// the lease holder and epoch, the replay window held.
    pub ha: Option<crate::ha::PairView>,
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
pub(crate) struct EslHealth {
    pub connected: bool,
    pub last_heartbeat: Option<String>,
    /// RFC 3339 time of the last byte read from the socket.
    pub last_data: Option<String>,
    pub reconnects: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct SourceHealth {
    pub enabled: bool,
    pub received: u64,
    pub written: u64,
    pub dropped: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RedisHealth {
    /// The monitor's `PING` succeeded.
    pub connected: bool,
    pub ping_ms: Option<f64>,
    /// Writers whose connection is up (writers connect when they have something to write).
    pub writers_up: usize,
    /// `host:port` of the primaries holding the streams (one, or one per cluster node).
    pub primaries: Vec<String>,
    /// Why a primary could lose data on its own (`maxmemory-policy`, persistence off), or
    /// that this could not be checked; empty when it keeps what it is given.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct SpoolHealth {
    pub bytes: u64,
    pub events: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct DroppedHealth {
    pub total: u64,
    pub by_reason: BTreeMap<String, u64>,
}

impl HealthReport {
    /// What `/health` answers before the first check has completed.
    pub(crate) fn starting() -> HealthReport {
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
                sources: BTreeMap::new(),
                outbox: None,
                ha: None,
                redis: RedisHealth {
                    connected: false,
                    ping_ms: None,
                    writers_up: 0,
                    primaries: Vec::new(),
                    warnings: Vec::new(),
                },
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

    pub(crate) fn is_healthy(&self) -> bool {
        self.status == Status::Healthy
    }

    /// Failing checks as one line, for logs.
    pub(crate) fn reasons(&self) -> String {
        let reasons: Vec<&str> = self.data.checks.iter().filter_map(|c| c.reason.as_deref()).collect();
        reasons.join("; ")
    }
}

/// Where the monitor publishes its latest report and `/health` reads it.
pub(crate) struct HealthBoard {
    latest: RwLock<Arc<HealthReport>>,
}

impl Default for HealthBoard {
    fn default() -> Self {
        HealthBoard { latest: RwLock::new(Arc::new(HealthReport::starting())) }
    }
}

impl HealthBoard {
    pub(crate) fn latest(&self) -> Arc<HealthReport> {
        self.latest.read().clone()
    }

    pub(crate) fn publish(&self, report: HealthReport) {
        *self.latest.write() = Arc::new(report);
    }
}

pub(crate) fn timestamp(us: i64) -> Option<String> {
    (us > 0).then(|| rfc3339(us))
}

/// Formats microseconds since the Unix epoch as RFC 3339 UTC with milliseconds,
/// e.g. `2024-01-15T10:00:00.000Z`.
pub(crate) fn rfc3339(us: i64) -> String {
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
