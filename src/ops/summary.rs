//! The summary log line, every `METRICS_PRINT_INTERVAL` (0 = off): write rate since the last
//! line, written and dropped totals, p99 total latency over the interval (estimated from the
//! histogram's buckets), and queue and spool depth. What an operator reads at 3 a.m. without
//! Prometheus at hand.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::info;

use crate::ops::context::AppContext;
use crate::shutdown::Shutdown;
use crate::telemetry::metrics::{bucket_delta, cumulative_buckets, metrics, quantile};

/// The figures of one summary line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Summary {
    /// Events written per second since the previous line.
    pub rate: f64,
    pub written: u64,
    pub dropped: u64,
    /// p99 of `eslstream_total_latency_seconds` over the interval, in ms (`None`: no events).
    pub p99_total_ms: Option<f64>,
    pub queue_depth: usize,
    pub spool_bytes: u64,
    pub spool_events: u64,
}

/// Produces a [`Summary`] per interval from the counters' movement since the previous one.
pub(crate) struct Summarizer {
    ctx: Arc<AppContext>,
    last_at: Instant,
    last_written: u64,
    last_buckets: Vec<(f64, u64)>,
}

impl Summarizer {
    pub(crate) fn new(ctx: Arc<AppContext>) -> Summarizer {
        let last_written = ctx.state.events_written.load(Ordering::Relaxed);
        Summarizer {
            ctx,
            last_at: Instant::now(),
            last_written,
            last_buckets: cumulative_buckets(&metrics().latency.total),
        }
    }

    /// The figures since the previous call (or since `new`).
    pub(crate) fn take(&mut self) -> Summary {
        let now = Instant::now();
        let written = self.ctx.state.events_written.load(Ordering::Relaxed);
        let buckets = cumulative_buckets(&metrics().latency.total);
        let elapsed = now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        let summary = Summary {
            rate: written.saturating_sub(self.last_written) as f64 / elapsed,
            written,
            dropped: self.ctx.state.events_dropped.load(Ordering::Relaxed),
            p99_total_ms: quantile(&bucket_delta(&buckets, &self.last_buckets), 0.99).map(|s| s * 1e3),
            queue_depth: self.ctx.pipeline.depth(),
            spool_bytes: self.ctx.spool.used(),
            spool_events: self.ctx.spool.events(),
        };
        (self.last_at, self.last_written, self.last_buckets) = (now, written, buckets);
        summary
    }

    /// Logs a line every `interval` until shutdown; returns at once when `interval` is 0.
    pub(crate) fn run(mut self, interval: Duration, shutdown: Shutdown) {
        if interval.is_zero() {
            return;
        }
        while shutdown.sleep(interval) {
            let s = self.take();
            let round = |x: f64| (x * 100.0).round() / 100.0;
            info!(
                rate_per_sec = round(s.rate),
                written = s.written,
                dropped = s.dropped,
                p99_total_ms = s.p99_total_ms.map(round),
                queue_depth = s.queue_depth,
                spool_bytes = s.spool_bytes,
                spool_events = s.spool_events,
                "summary"
            );
        }
    }
}
