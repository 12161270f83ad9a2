//! How far behind the switch the reader is, and so how long it may hold the socket.
//!
//! When a lane's memory is full the reader may wait for room instead of spilling to the spool,
//! but only while the switch is not kept waiting for long: FreeSWITCH queues events for a
//! listener that does not read (100,000 per listener, dropped past that). An event's lag is
//! its age when parsed (`now - Event-Date-Timestamp`) beyond the smallest age seen on this
//! connection, which takes out a constant offset between the two clocks. The reader waits
//! until the event's lag would reach [`MAX_LAG`], then spools: at 20,000 events/s that is
//! 5,000 events (5% of the switch's queue) at most, and less in fact, since part of the lag is
//! the socket buffers between the two (several MB on loopback: ~70 ms at 150 MB/s), which do
//! not hold the switch's queue. With 100 ms the buffers alone pushed a saturated reader to the
//! spool within a second. A clock step backwards makes every later event
//! look late, so the reader spools sooner, the safe side.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// How far behind the switch the reader lets itself fall before it spools instead of waiting.
pub(crate) const MAX_LAG: Duration = Duration::from_millis(250);

/// The reader's lag behind one switch connection.
#[derive(Debug)]
pub(crate) struct Lag {
    /// The smallest age seen since the connection was made, in microseconds.
    min_age_us: AtomicI64,
}

impl Default for Lag {
    fn default() -> Self {
        Lag { min_age_us: AtomicI64::new(i64::MAX) }
    }
}

impl Lag {
    /// A new connection: the clocks' offset is learnt again.
    pub(crate) fn reset(&self) {
        self.min_age_us.store(i64::MAX, Ordering::Relaxed);
    }

    /// Until when the reader may wait for room for an event stamped `timestamp_us` and parsed
    /// at `parsed_at_us` (wall clock) = `now`; `None` when it is already [`MAX_LAG`] late.
    pub(crate) fn wait_until(&self, timestamp_us: i64, parsed_at_us: i64, now: Instant) -> Option<Instant> {
        let age = parsed_at_us.saturating_sub(timestamp_us);
        let min = self.min_age_us.fetch_min(age, Ordering::Relaxed).min(age);
        let lag = age.saturating_sub(min);
        let left = MAX_LAG.as_micros() as i64 - lag;
        (left > 0).then(|| now + Duration::from_micros(left as u64))
    }

    /// When an event stamped `timestamp_us` was made, on this host's wall clock, by this
    /// connection's reckoning: its stamp plus the smallest age seen (the clocks' offset and the
    /// quickest way from the switch to here). `None` before the first event.
    pub(crate) fn made_at(&self, timestamp_us: i64) -> Option<i64> {
        let min = self.min_age_us.load(Ordering::Relaxed);
        (min != i64::MAX).then(|| timestamp_us.saturating_add(min))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_only_while_the_lag_is_small() {
        let lag = Lag::default();
        let now = Instant::now();
        // A switch clock 5 s behind: the offset is learnt from the first event.
        let first = lag.wait_until(1_000_000, 6_000_000, now).unwrap();
        assert_eq!(first - now, MAX_LAG);
        let later = lag.wait_until(2_000_000, 7_030_000, now).unwrap();
        assert_eq!(later - now, MAX_LAG - Duration::from_millis(30), "30 ms behind");
        let behind = MAX_LAG.as_micros() as i64;
        assert!(lag.wait_until(3_000_000, 8_000_000 + behind, now).is_none(), "MAX_LAG behind: spool");
        // A smaller age resets the baseline; after a reconnect it is learnt again.
        assert!(lag.wait_until(4_000_000, 8_500_000, now).is_some());
        assert!(lag.wait_until(5_000_000, 10_000_000, now).is_none());
        lag.reset();
        assert_eq!(lag.made_at(6_000_000), None, "no offset learnt yet");
        assert!(lag.wait_until(5_000_000, 10_000_000, now).is_some());
        // Offset 5 s: an event stamped 6 s was made at 11 s here.
        assert_eq!(lag.made_at(6_000_000), Some(11_000_000));
    }
}
