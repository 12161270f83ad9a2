//! The wall clock as events carry it: microseconds since the Unix epoch, and the seconds
//! between two such readings (for latency metrics).

/// Microseconds since the Unix epoch, by the wall clock.
pub fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Seconds between two microsecond timestamps, never negative (clocks may disagree slightly).
pub(crate) fn seconds_between(from_us: i64, to_us: i64) -> f64 {
    (to_us - from_us).max(0) as f64 / 1e6
}
