//! Prometheus metrics: one process-wide registry, names prefixed `eslstream_`, base units.
//!
//! Every component records into [`metrics()`]; `/metrics` renders [`render`]. Latency histograms
//! use buckets from 50 µs to 10 s, fine enough to tell 100 µs from 1 ms.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets in seconds: 50 µs … 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

/// Every metric the agent exports.
pub struct Metrics {
    pub registry: Registry,
    /// Events taken in, by source (`esl`, `http`, `outbox`).
    pub events_received: IntCounterVec,
    /// Entries acknowledged by Redis, by stream, event name and source.
    pub events_written: IntCounterVec,
    /// Events that will never reach Redis, by stream, reason and source.
    pub events_dropped: IntCounterVec,
    /// Events Redis refused for good, kept as dead letters, by stream and source.
    pub dead_lettered: IntCounterVec,
    /// Events received but not routed to any stream (not in EVENTS_TO_PUBLISH/PUSH).
    pub events_filtered: IntCounter,
    /// Writes that Redis reported as already present (idempotency key seen before).
    pub duplicates_suppressed: IntCounter,
    /// Event values whose percent-decoding was not valid UTF-8 (kept with U+FFFD).
    pub lossy_decodes: IntCounter,
    /// Frames the ESL client could not parse (the connection is re-made).
    pub esl_protocol_errors: IntCounter,
    pub esl_connected: IntGauge,
    pub esl_reconnections: IntCounter,
    /// Redis connections currently open, one per writer.
    pub redis_connected: IntGauge,
    pub redis_reconnections: IntCounter,
    /// Batches fewer replicas than `REDIS_WAIT_REPLICAS` confirmed in time (retried).
    pub redis_wait_timeouts: IntCounter,
    /// Failed write attempts that were retried, by kind of failure.
    pub write_retries: IntCounterVec,
    pub batch_size: Histogram,
    /// Times a writer moved events it could not write into the spool.
    pub spills: IntCounter,
    /// Seconds the reader waited for room in memory (instead of spooling) while the switch
    /// was less than 250 ms behind.
    pub reader_wait: prometheus::Counter,
    /// Events the reader wrote itself because their lane was idle (no hand-off to a writer).
    pub writes_now: IntCounter,
    /// Events waiting in memory (channels and overflow), per lane.
    pub queue_depth: IntGaugeVec,
    /// Events held in memory past the channels, per lane.
    pub overflow_depth: IntGaugeVec,
    pub reader_latency: Histogram,
    pub writer_latency: Histogram,
    pub total_latency: Histogram,
    pub write_duration: HistogramVec,
    /// Trimmer passes (one per `TRIM_INTERVAL`, over every stream).
    pub trim_runs: IntCounter,
    /// Entries removed by the trimmer, by stream.
    pub trimmed_entries: IntCounterVec,
    pub trim_duration: Histogram,
    /// Trimmer passes that failed (Redis down, refused the command, ...).
    pub trim_errors: IntCounter,
    /// Bytes and events in the durable spool (copied from `AgentState` when scraped).
    pub spool_bytes: IntGauge,
    pub spool_events: IntGauge,
    /// `SPOOL_MAX_BYTES` (0: no spool), so a rule can compare `eslstream_spool_bytes` with it.
    pub spool_max_bytes: IntGauge,
    /// Dead letters stored now under `SPOOL_DIR/dlq` (copied from the store when scraped).
    pub dead_letters: IntGauge,
    /// 1 when the health monitor's last `PING` succeeded, 0 when it failed.
    pub redis_up: IntGauge,
    /// 1 for each source this agent reads (`esl` unless `ESL_ENABLED=false`), 0 for the others.
    pub source_enabled: IntGaugeVec,
    /// Result of the last health check: 0 healthy, 1 degraded, 2 unhealthy.
    pub health_status: IntGauge,
    /// Round trip of the health monitor's last `PING` (absent until one succeeded).
    pub redis_ping: prometheus::Gauge,
    /// Connections open to the admin HTTP port.
    pub http_connections: IntGauge,
    /// New admin HTTP connections closed at once, by reason (`per_peer`, `full`).
    pub http_rejected: IntCounterVec,
    /// Admin HTTP connections closed by the server, by reason (`timeout`: no complete request
    /// head in time; `evicted`: the oldest idle one, to make room).
    pub http_closed: IntCounterVec,
    /// `POST /events` answers, by status code and producer.
    pub ingress_requests: IntCounterVec,
    /// `POST /events`: from the request's arrival to its answer.
    pub ingress_duration: Histogram,
    /// Events of `POST /events` by producer and outcome (`accepted`, `duplicate`).
    pub ingress_events: IntCounterVec,
    /// Events handed back to a source that keeps its own (outbox rows stay in their table and
    /// are sent again), by source.
    pub events_deferred: IntCounterVec,
    /// Outbox rows relayed, by outcome (`written`, `duplicate`, `dead_lettered`).
    pub outbox_rows: IntCounterVec,
    /// Rows waiting in the outbox table (as of the relay's last count).
    pub outbox_backlog: IntGauge,
    /// From a row's `created_at` to its entry acknowledged by Redis.
    pub outbox_lag: Histogram,
    /// 1 while this agent's relay is the active one (holds the outbox lock), else 0.
    pub outbox_active: IntGauge,
    /// Connections to PostgreSQL made after the first.
    pub outbox_reconnections: IntCounter,
    /// Hot-standby pair: 1 while this agent is the active one, 0 while standby.
    pub ha_role: IntGauge,
    /// Times this agent took the pair's lease over.
    pub ha_takeovers: IntCounter,
    /// Events of the replay window written at a takeover, by outcome (`written`, `duplicate`).
    pub ha_replayed: IntCounterVec,
    /// Switch events this agent did not write because it held no lease (the active one did).
    pub ha_fenced: IntCounter,
    /// Always 1; the labels say which build is running.
    pub build_info: IntGaugeVec,
    /// When the process started, in seconds since the epoch.
    pub start_time: prometheus::Gauge,
}

/// Registers a freshly built metric and hands it back; names are fixed at compile time, so a
/// bad or repeated one is a programming error.
fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, built: prometheus::Result<M>) -> M {
    let metric = built.expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help))
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn float_gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Gauge {
    register(registry, prometheus::Gauge::new(name, help))
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register(registry, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())))
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let write_duration = register(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "eslstream_redis_write_duration_seconds",
                    "Round trip of one pipelined write to Redis",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["outcome"],
            ),
        );
        Metrics {
            events_received: counter_vec(
                &r,
                "eslstream_events_received_total",
                "Events taken in from a source",
                &["source"],
            ),
            events_written: counter_vec(
                &r,
                "eslstream_events_written_total",
                "Entries acknowledged by Redis",
                &["stream", "event", "source"],
            ),
            events_dropped: counter_vec(
                &r,
                "eslstream_events_dropped_total",
                "Events that will never reach Redis",
                &["stream", "reason", "source"],
            ),
            dead_lettered: counter_vec(
                &r,
                "eslstream_dead_lettered_total",
                "Events Redis refused for good, kept as dead letters",
                &["stream", "source"],
            ),
            events_filtered: counter(&r, "eslstream_events_filtered_total", "Events received but routed to no stream"),
            duplicates_suppressed: counter(
                &r,
                "eslstream_duplicates_suppressed_total",
                "Writes skipped because the idempotency key was already written",
            ),
            lossy_decodes: counter(
                &r,
                "eslstream_lossy_decodes_total",
                "Events whose decoded values were not valid UTF-8 (kept with U+FFFD)",
            ),
            esl_protocol_errors: counter(
                &r,
                "eslstream_esl_protocol_errors_total",
                "Unparseable ESL input (the connection is re-made)",
            ),
            esl_connected: gauge(&r, "eslstream_esl_connected", "1 while the event socket is connected and subscribed"),
            esl_reconnections: counter(&r, "eslstream_esl_reconnections_total", "Event socket connections re-made"),
            redis_connected: gauge(&r, "eslstream_redis_connections", "Open Redis connections (one per writer)"),
            redis_reconnections: counter(
                &r,
                "eslstream_redis_reconnections_total",
                "Redis connections re-made after a failure",
            ),
            redis_wait_timeouts: counter(
                &r,
                "eslstream_redis_wait_timeouts_total",
                "Batches that fewer replicas than REDIS_WAIT_REPLICAS confirmed within REDIS_WAIT_TIMEOUT (retried)",
            ),
            write_retries: counter_vec(
                &r,
                "eslstream_write_retries_total",
                "Write attempts that failed and were retried",
                &["kind"],
            ),
            spills: counter(&r, "eslstream_spills_total", "Times a writer moved unwritable events to the spool"),
            reader_wait: register(
                &r,
                prometheus::Counter::new(
                    "eslstream_reader_wait_seconds_total",
                    "Seconds the reader waited for room in memory instead of spooling",
                ),
            ),
            writes_now: counter(
                &r,
                "eslstream_writes_now_total",
                "Events written by the ESL reader itself because their lane was idle",
            ),
            batch_size: histogram(
                &r,
                "eslstream_batch_size",
                "Events per pipelined write",
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0],
            ),
            queue_depth: gauge_vec(&r, "eslstream_queue_depth", "Events waiting in memory, per writer lane", &["lane"]),
            overflow_depth: gauge_vec(
                &r,
                "eslstream_overflow_depth",
                "Events held in the memory overflow past the channel, per lane",
                &["lane"],
            ),
            reader_latency: histogram(
                &r,
                "eslstream_reader_latency_seconds",
                "Event timestamp to parsed",
                LATENCY_BUCKETS,
            ),
            writer_latency: histogram(
                &r,
                "eslstream_writer_latency_seconds",
                "Parsed to acknowledged by Redis",
                LATENCY_BUCKETS,
            ),
            total_latency: histogram(
                &r,
                "eslstream_total_latency_seconds",
                "Event timestamp to acknowledged by Redis",
                LATENCY_BUCKETS,
            ),
            write_duration,
            trim_runs: counter(&r, "eslstream_trim_runs_total", "Trimmer passes over the streams"),
            trimmed_entries: counter_vec(
                &r,
                "eslstream_trimmed_entries_total",
                "Entries removed by the trimmer (older than EVENTS_EXPIRE_TIME / JOBS_EXPIRE_TIME)",
                &["stream"],
            ),
            trim_duration: histogram(
                &r,
                "eslstream_trim_duration_seconds",
                "Time taken by one trimmer pass",
                LATENCY_BUCKETS,
            ),
            trim_errors: counter(&r, "eslstream_trim_errors_total", "Trimmer passes that failed"),
            spool_bytes: gauge(&r, "eslstream_spool_bytes", "Bytes held in the durable spool"),
            spool_events: gauge(&r, "eslstream_spool_events", "Events held in the durable spool"),
            spool_max_bytes: gauge(&r, "eslstream_spool_max_bytes", "SPOOL_MAX_BYTES: the spool's budget (0: no spool)"),
            dead_letters: gauge(&r, "eslstream_dead_letters", "Dead letters stored now (GET /dlq lists them)"),
            redis_up: gauge(&r, "eslstream_redis_up", "1 when the health monitor's last Redis PING succeeded, else 0"),
            source_enabled: gauge_vec(
                &r,
                "eslstream_source_enabled",
                "1 for each source the agent reads, 0 for the others",
                &["source"],
            ),
            health_status: gauge(
                &r,
                "eslstream_health_status",
                "Result of the last health check: 0 healthy, 1 degraded, 2 unhealthy",
            ),
            redis_ping: float_gauge(
                &r,
                "eslstream_redis_ping_seconds",
                "Round trip of the health monitor's last Redis PING",
            ),
            http_connections: gauge(&r, "eslstream_http_connections", "Connections open to the admin HTTP port"),
            http_rejected: counter_vec(
                &r,
                "eslstream_http_connections_rejected_total",
                "New admin HTTP connections closed at once: per_peer (too many from the address), full (all busy)",
                &["reason"],
            ),
            ingress_requests: counter_vec(
                &r,
                "eslstream_http_requests_total",
                "POST /events answers, by status code and producer",
                &["code", "producer"],
            ),
            ingress_duration: histogram(
                &r,
                "eslstream_http_request_duration_seconds",
                "POST /events: from the request's arrival to its answer",
                LATENCY_BUCKETS,
            ),
            ingress_events: counter_vec(
                &r,
                "eslstream_http_events_total",
                "Events of POST /events by producer and outcome (accepted, duplicate)",
                &["producer", "outcome"],
            ),
            http_closed: counter_vec(
                &r,
                "eslstream_http_connections_closed_total",
                "Admin HTTP connections closed by the server: timeout (no complete request head in time), evicted (oldest idle, to make room)",
                &["reason"],
            ),
            events_deferred: counter_vec(
                &r,
                "eslstream_events_deferred_total",
                "Events handed back to a source that keeps its own (outbox rows stay in their table and are sent again)",
                &["source"],
            ),
            outbox_rows: counter_vec(
                &r,
                "eslstream_outbox_rows_total",
                "Outbox rows relayed and removed from the table, by outcome (written, duplicate, dead_lettered)",
                &["outcome"],
            ),
            outbox_backlog: gauge(&r, "eslstream_outbox_backlog_rows", "Rows waiting in the outbox table (last count)"),
            outbox_lag: histogram(
                &r,
                "eslstream_outbox_lag_seconds",
                "From an outbox row's created_at to its entry acknowledged by Redis",
                LATENCY_BUCKETS,
            ),
            outbox_active: gauge(
                &r,
                "eslstream_outbox_active",
                "1 while this agent's relay is the active one for the outbox table, else 0",
            ),
            outbox_reconnections: counter(
                &r,
                "eslstream_outbox_reconnections_total",
                "Connections to PostgreSQL made after the first",
            ),
            ha_role: gauge(&r, "eslstream_ha_role", "Hot-standby pair: 1 while this agent is active, 0 while standby"),
            ha_takeovers: counter(&r, "eslstream_ha_takeovers_total", "Times this agent took the pair's lease over"),
            ha_replayed: counter_vec(
                &r,
                "eslstream_ha_replayed_events_total",
                "Events of the replay window written at a takeover, by outcome (written, duplicate)",
                &["outcome"],
            ),
            ha_fenced: counter(
                &r,
                "eslstream_ha_fenced_total",
                "Switch events not written by this agent because it held no lease (the pair's active agent wrote them)",
            ),
            build_info: gauge_vec(
                &r,
                "eslstream_build_info",
                "Always 1; labelled with the running version",
                &["version"],
            ),
            start_time: float_gauge(
                &r,
                "eslstream_start_time_seconds",
                "Start time of the process in seconds since the Unix epoch",
            ),
            registry: r,
        }
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = Metrics::new();
        m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m.start_time.set(crate::envelope::now_us() as f64 / 1e6);
        // Known label values start at 0, so a rule sees the series before the first event.
        for outcome in ["written", "duplicate", "dead_lettered"] {
            m.outbox_rows.with_label_values(&[outcome]);
        }
        m.events_deferred.with_label_values(&["outbox"]);
        for outcome in ["written", "duplicate"] {
            m.ha_replayed.with_label_values(&[outcome]);
        }
        m
    })
}

/// A histogram's cumulative bucket counts, `(upper bound, observations at or below it)`,
/// ending with the `+Inf` bucket (the total count).
pub fn cumulative_buckets(histogram: &Histogram) -> Vec<(f64, u64)> {
    use prometheus::core::Collector;
    let mut out = Vec::new();
    for family in histogram.collect() {
        for metric in family.get_metric() {
            let h = metric.get_histogram();
            out.extend(h.get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())));
            out.push((f64::INFINITY, h.get_sample_count()));
        }
    }
    out
}

/// Estimates the `q` quantile (0..=1) from cumulative bucket counts, interpolating linearly
/// inside the bucket, as Prometheus' `histogram_quantile` does. `None` without observations.
/// Observations above the last finite bound are reported as that bound.
pub fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let (mut lower_bound, mut lower_count) = (0.0, 0u64);
    for &(bound, count) in buckets {
        if count as f64 >= rank && count > lower_count {
            if bound.is_infinite() {
                return Some(lower_bound);
            }
            let fraction = (rank - lower_count as f64) / (count - lower_count) as f64;
            return Some(lower_bound + (bound - lower_bound) * fraction);
        }
        lower_bound = if bound.is_finite() { bound } else { lower_bound };
        lower_count = count;
    }
    Some(lower_bound)
}

/// Subtracts an earlier reading of the same histogram's buckets (for a quantile over an interval).
pub fn bucket_delta(now: &[(f64, u64)], before: &[(f64, u64)]) -> Vec<(f64, u64)> {
    now.iter()
        .enumerate()
        .map(|(i, &(bound, count))| (bound, count.saturating_sub(before.get(i).map_or(0, |b| b.1))))
        .collect()
}

/// Dropped events since start summed per reason, from `eslstream_events_dropped_total`.
pub fn dropped_by_reason() -> std::collections::BTreeMap<String, u64> {
    use prometheus::core::Collector;
    let mut out = std::collections::BTreeMap::new();
    for family in metrics().events_dropped.collect() {
        for metric in family.get_metric() {
            let reason = metric.get_label().iter().find(|l| l.name() == "reason").map(|l| l.value());
            let value = metric.get_counter().get_value();
            *out.entry(reason.unwrap_or("unknown").to_owned()).or_insert(0) += value.max(0.0) as u64;
        }
    }
    out
}

/// The registry in Prometheus text format.
pub fn render() -> String {
    let mut out = Vec::new();
    TextEncoder::new().encode(&metrics().registry.gather(), &mut out).expect("text encoding to a Vec");
    String::from_utf8(out).expect("Prometheus text is UTF-8")
}

/// Seconds between two microsecond timestamps, never negative (clocks may disagree slightly).
pub fn seconds_between(from_us: i64, to_us: i64) -> f64 {
    (to_us - from_us).max(0) as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_inside_the_bucket() {
        // 100 observations: 90 at or below 1 ms, 10 between 1 ms and 10 ms.
        let buckets = [(0.001, 90), (0.01, 100), (f64::INFINITY, 100)];
        let p50 = quantile(&buckets, 0.5).unwrap();
        assert!((p50 - 0.001 * 50.0 / 90.0).abs() < 1e-12, "{p50}");
        let p99 = quantile(&buckets, 0.99).unwrap();
        assert!((p99 - (0.001 + 0.009 * 0.9)).abs() < 1e-12, "{p99}");
    }

    #[test]
    fn quantile_edge_cases() {
        assert_eq!(quantile(&[], 0.99), None);
        assert_eq!(quantile(&[(0.001, 0), (f64::INFINITY, 0)], 0.99), None);
        // Everything above the last finite bound: reported as that bound.
        assert_eq!(quantile(&[(0.001, 0), (10.0, 0), (f64::INFINITY, 5)], 0.99), Some(10.0));
    }

    #[test]
    fn bucket_delta_subtracts_an_earlier_reading() {
        let before = [(0.001, 5), (f64::INFINITY, 7)];
        let now = [(0.001, 8), (f64::INFINITY, 12)];
        assert_eq!(bucket_delta(&now, &before), vec![(0.001, 3), (f64::INFINITY, 5)]);
    }

    #[test]
    fn latency_histograms_use_seconds_from_50us_to_10s() {
        let buckets = cumulative_buckets(&metrics().total_latency);
        assert_eq!(buckets.first().map(|b| b.0), Some(0.00005));
        assert_eq!(buckets[buckets.len() - 2].0, 10.0);
        assert!(buckets.iter().any(|b| b.0 == 0.0001) && buckets.iter().any(|b| b.0 == 0.001));
    }
}
