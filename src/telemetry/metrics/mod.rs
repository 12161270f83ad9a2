//! Prometheus metrics: one process-wide registry, names prefixed `eslstream_`, base units.
//!
//! Every component records into its own group of [`metrics()`] ([`groups`]); `/metrics`
//! renders [`render`]. Latency histograms
//! use buckets from 50 µs to 10 s, fine enough to tell 100 µs from 1 ms.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

mod groups;

pub(crate) use groups::*;

/// Latency buckets in seconds: 50 µs … 10 s. One at 2 ms, so the share of `POST /events`
/// answered within its 2 ms target is read exactly (the dashboard's "Answered within 2 ms").
pub(crate) const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.002, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

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

/// Every metric the agent exports, by component.
pub struct Metrics {
    pub registry: Registry,
    pub events: EventMetrics,
    pub esl: EslMetrics,
    pub lanes: LaneMetrics,
    pub writer: WriterMetrics,
    pub latency: LatencyMetrics,
    pub trim: TrimMetrics,
    pub spool: SpoolMetrics,
    pub health: HealthMetrics,
    pub http: HttpMetrics,
    pub ingress: IngressMetrics,
    pub outbox: OutboxMetrics,
    pub ha: HaMetrics,
    pub process: ProcessMetrics,
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        Metrics {
            events: EventMetrics::new(&r),
            esl: EslMetrics::new(&r),
            lanes: LaneMetrics::new(&r),
            writer: WriterMetrics::new(&r),
            latency: LatencyMetrics::new(&r),
            trim: TrimMetrics::new(&r),
            spool: SpoolMetrics::new(&r),
            health: HealthMetrics::new(&r),
            http: HttpMetrics::new(&r),
            ingress: IngressMetrics::new(&r),
            outbox: OutboxMetrics::new(&r),
            ha: HaMetrics::new(&r),
            process: ProcessMetrics::new(&r),
            registry: r,
        }
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = Metrics::new();
        m.process.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m.process.start_time.set(crate::telemetry::clock::now_us() as f64 / 1e6);
        // Known label values start at 0, so a rule sees the series before the first event.
        for outcome in ["written", "duplicate", "dead_lettered"] {
            m.outbox.rows.with_label_values(&[outcome]);
        }
        m.events.deferred.with_label_values(&["outbox"]);
        for outcome in ["written", "duplicate"] {
            m.ha.replayed.with_label_values(&[outcome]);
        }
        m
    })
}

/// A histogram's cumulative bucket counts, `(upper bound, observations at or below it)`,
/// ending with the `+Inf` bucket (the total count).
pub(crate) fn cumulative_buckets(histogram: &Histogram) -> Vec<(f64, u64)> {
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
pub(crate) fn bucket_delta(now: &[(f64, u64)], before: &[(f64, u64)]) -> Vec<(f64, u64)> {
    now.iter()
        .enumerate()
        .map(|(i, &(bound, count))| (bound, count.saturating_sub(before.get(i).map_or(0, |b| b.1))))
        .collect()
}

/// Dropped events since start summed per reason, from `eslstream_events_dropped_total`.
pub(crate) fn dropped_by_reason() -> std::collections::BTreeMap<String, u64> {
    use prometheus::core::Collector;
    let mut out = std::collections::BTreeMap::new();
    for family in metrics().events.dropped.collect() {
        for metric in family.get_metric() {
            let reason = metric.get_label().iter().find(|l| l.name() == "reason").map(|l| l.value());
            let value = metric.get_counter().get_value();
            *out.entry(reason.unwrap_or("unknown").to_owned()).or_insert(0) += value.max(0.0) as u64;
        }
    }
    out
}

/// The registry in Prometheus text format.
pub(crate) fn render() -> String {
    let mut out = Vec::new();
    TextEncoder::new().encode(&metrics().registry.gather(), &mut out).expect("text encoding to a Vec");
    String::from_utf8(out).expect("Prometheus text is UTF-8")
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
        let buckets = cumulative_buckets(&metrics().latency.total);
        assert_eq!(buckets.first().map(|b| b.0), Some(0.00005));
        assert_eq!(buckets[buckets.len() - 2].0, 10.0);
        assert!(buckets.iter().any(|b| b.0 == 0.0001) && buckets.iter().any(|b| b.0 == 0.001));
    }
}
