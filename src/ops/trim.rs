//! The trimmer: every `TRIM_INTERVAL`, removes stream entries older than
//! `EVENTS_EXPIRE_TIME` / `JOBS_EXPIRE_TIME` (0 = keep forever) with
//! `XTRIM <key> MINID ~ <redis TIME - expire>-0 LIMIT <n>`.
//!
//! The cut-off comes from Redis's own clock (`TIME`), not ours, since entry IDs are Redis
//! times. `~` lets Redis remove whole radix-tree nodes only (cheap; a few entries older than the
//! cut-off may stay until the next pass), and `LIMIT` bounds the work of one call so Redis is
//! never blocked long; a pass repeats the call while it removed a full `LIMIT`. The trimmer owns
//! its connection; when Redis is down a pass fails, is counted and logged (rate-limited), and
//! the next pass tries again.
//!
//! Each stream is trimmed on the primary that holds it: the one server, the primary the
//! sentinels name, or, in a cluster, the owner of the stream's slot (found again each pass),
//! with that node's own `TIME`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::config::Config;
use crate::shutdown::Shutdown;
use crate::sink::target::PrimaryConnections;
use crate::telemetry::logging::RateLimit;
use crate::telemetry::metrics::metrics;

/// Entries one `XTRIM` call may remove.
pub(crate) const TRIM_LIMIT: u64 = 10_000;
/// Calls per stream per pass at most (a backlog is worked off over several passes).
pub(crate) const MAX_CALLS_PER_PASS: u32 = 10;

static TRIM_WARN: RateLimit = RateLimit::new(Duration::from_secs(60));

/// One stream to trim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrimTarget {
    /// Metric label: `events`, `jobs`, `http` or `outbox`.
    pub label: &'static str,
    pub key: String,
    pub expire: Duration,
}

/// The streams to trim: those with a non-zero expire time.
pub fn targets(config: &Config) -> Vec<TrimTarget> {
    let s = &config.streams;
    let h = &config.http_ingress;
    let http = h.enabled.then_some(("http", &h.stream_key, h.expire));
    let outbox = config.outbox.as_ref().map(|o| ("outbox", &o.stream_key, o.expire));
    [("events", &s.events_key, s.events_expire), ("jobs", &s.jobs_key, s.jobs_expire)]
        .into_iter()
        .chain(http)
        .chain(outbox)
        .filter(|(_, _, expire)| !expire.is_zero())
        .map(|(label, key, expire)| TrimTarget { label, key: key.clone(), expire })
        .collect()
}

/// The `MINID` threshold: entries with IDs below `<ms>-0` are older than `expire`.
pub(crate) fn min_id(redis_now_ms: u64, expire: Duration) -> String {
    format!("{}-0", redis_now_ms.saturating_sub(expire.as_millis().min(u64::MAX as u128) as u64))
}

/// The trimmer and its connections (one per primary holding a stream).
pub struct Trimmer {
    config: Arc<Config>,
    targets: Vec<TrimTarget>,
    conns: PrimaryConnections,
}

impl Trimmer {
    pub fn new(config: Arc<Config>) -> Trimmer {
        let conns = PrimaryConnections::new(config.redis.clone(), config.redis.write_timeout);
        Trimmer { targets: targets(&config), config, conns }
    }

    /// Trims now, then every `TRIM_INTERVAL`, until shutdown. Returns at once when no stream
    /// expires.
    pub fn run(mut self, shutdown: Shutdown) {
        if self.targets.is_empty() {
            debug!("EVENTS_EXPIRE_TIME and JOBS_EXPIRE_TIME are 0; trimmer not running");
            return;
        }
        loop {
            self.pass();
            if !shutdown.sleep(self.config.streams.trim_interval) {
                break;
            }
        }
    }

    /// One pass over every stream, counted and logged; errors are logged, not returned.
    pub fn pass(&mut self) {
        let started = Instant::now();
        let result = self.trim_all();
        metrics().trim.runs.inc();
        metrics().trim.duration.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(removed) => debug!(?removed, elapsed = ?started.elapsed(), "trimmed streams"),
            Err(e) => {
                self.conns.forget(None);
                metrics().trim.errors.inc();
                if let Some(suppressed) = TRIM_WARN.check() {
                    warn!(error = %e, suppressed, "stream trimming failed; retrying next TRIM_INTERVAL");
                }
            }
        }
    }

    /// Trims every target; returns the entries removed per stream key.
    pub fn trim_all(&mut self) -> redis::RedisResult<Vec<(String, u64)>> {
        let keys: Vec<String> = self.targets.iter().map(|t| t.key.clone()).collect();
        let mut removed = Vec::with_capacity(self.targets.len());
        for primary in self.conns.resolve(&keys)? {
            let (conn, _) = self.conns.get(&primary.address)?;
            let (secs, micros): (u64, u64) = redis::cmd("TIME").query(conn)?;
            let now_ms = secs * 1000 + micros / 1000;
            for target in self.targets.iter().filter(|t| primary.streams.contains(&t.key)) {
                let n = trim_stream(conn, &target.key, &min_id(now_ms, target.expire))?;
                metrics().trim.entries.with_label_values(&[target.label]).inc_by(n);
                removed.push((target.key.clone(), n));
            }
        }
        Ok(removed)
    }
}

/// `XTRIM key MINID ~ min_id LIMIT n`, repeated while a call removed a full `LIMIT`.
fn trim_stream(conn: &mut redis::Connection, key: &str, min_id: &str) -> redis::RedisResult<u64> {
    let mut total = 0;
    for _ in 0..MAX_CALLS_PER_PASS {
        let removed: u64 =
            redis::cmd("XTRIM").arg(key).arg("MINID").arg("~").arg(min_id).arg("LIMIT").arg(TRIM_LIMIT).query(conn)?;
        total += removed;
        if removed < TRIM_LIMIT {
            break;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Config {
        Config::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>())
            .expect("valid config")
    }

    #[test]
    fn zero_expire_skips_the_stream() {
        let c = config(&[("EVENTS_EXPIRE_TIME", "0"), ("JOBS_EXPIRE_TIME", "1m")]);
        assert_eq!(
            targets(&c),
            vec![TrimTarget {
                label: "jobs",
                key: "freeswitch:telephony:background-jobs".into(),
                expire: Duration::from_secs(60)
            }]
        );
        let c = config(&[("EVENTS_EXPIRE_TIME", "0"), ("JOBS_EXPIRE_TIME", "0")]);
        assert!(targets(&c).is_empty());
    }

    #[test]
    fn min_id_is_redis_time_minus_expire() {
        assert_eq!(min_id(1_700_000_600_000, Duration::from_secs(600)), "1700000000000-0");
        assert_eq!(min_id(1000, Duration::from_secs(3600)), "0-0");
    }
}
