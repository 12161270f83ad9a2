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
    /// Events parsed off a source, by source (`esl`, `http`).
    pub events_received: IntCounterVec,
    /// Entries acknowledged by Redis, by stream and event name.
    pub events_written: IntCounterVec,
    /// Events that will never reach Redis, by stream and reason.
    pub events_dropped: IntCounterVec,
    /// Events Redis refused for good, kept as dead letters, by stream.
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
    /// Failed write attempts that were retried, by kind of failure.
    pub write_retries: IntCounterVec,
    pub batch_size: Histogram,
    /// Times a writer moved events it could not write into the spool.
    pub spills: IntCounter,
    /// Events waiting in memory (channels and overflow), per lane.
    pub queue_depth: IntGaugeVec,
    /// Events held in memory past the channels, per lane.
    pub overflow_depth: IntGaugeVec,
    pub reader_latency: Histogram,
    pub writer_latency: Histogram,
    pub total_latency: Histogram,
    pub write_duration: HistogramVec,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())).expect("valid metric");
    registry.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let write_duration = HistogramVec::new(
            HistogramOpts::new("eslstream_redis_write_duration_seconds", "Round trip of one pipelined write to Redis")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["outcome"],
        )
        .expect("valid metric");
        r.register(Box::new(write_duration.clone())).expect("unique metric");
        Metrics {
            events_received: counter_vec(
                &r,
                "eslstream_events_received_total",
                "Events parsed off a source",
                &["source"],
            ),
            events_written: counter_vec(
                &r,
                "eslstream_events_written_total",
                "Entries acknowledged by Redis",
                &["stream", "event"],
            ),
            events_dropped: counter_vec(
                &r,
                "eslstream_events_dropped_total",
                "Events that will never reach Redis",
                &["stream", "reason"],
            ),
            dead_lettered: counter_vec(
                &r,
                "eslstream_dead_lettered_total",
                "Events Redis refused for good, kept as dead letters",
                &["stream"],
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
            write_retries: counter_vec(
                &r,
                "eslstream_write_retries_total",
                "Write attempts that failed and were retried",
                &["kind"],
            ),
            spills: counter(&r, "eslstream_spills_total", "Times a writer moved unwritable events to the spool"),
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
            registry: r,
        }
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
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
