//! Shutdown signalling shared by threads and async tasks.
//!
//! One [`Shutdown`] is cloned into every component. `trigger()` (from SIGINT/SIGTERM or a test)
//! flips it once; threads notice through [`Shutdown::is_triggered`] or wake early from
//! [`Shutdown::sleep`], async tasks await [`Shutdown::wait`]. A second, later stage,
//! [`Shutdown::force`], tells writers that the drain deadline has passed.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

struct Inner {
    triggered: AtomicBool,
    /// When it was triggered (wall clock, µs; 0 before).
    triggered_at_us: AtomicI64,
    forced: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    watch: watch::Sender<bool>,
}

/// A cloneable shutdown signal.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (watch, _) = watch::channel(false);
        Shutdown {
            inner: Arc::new(Inner {
                triggered: AtomicBool::new(false),
                triggered_at_us: AtomicI64::new(0),
                forced: AtomicBool::new(false),
                lock: Mutex::new(()),
                wake: Condvar::new(),
                watch,
            }),
        }
    }

    /// Starts the shutdown: sources stop reading, writers drain.
    pub fn trigger(&self) {
        if !self.inner.triggered.swap(true, Ordering::AcqRel) {
            self.inner.triggered_at_us.store(crate::telemetry::clock::now_us(), Ordering::Release);
            self.inner.watch.send_replace(true);
        }
        let _guard = self.inner.lock.lock();
        self.inner.wake.notify_all();
    }

    /// The drain deadline has passed: writers stop retrying and hand off what they hold.
    pub(crate) fn force(&self) {
        self.inner.forced.store(true, Ordering::Release);
        self.trigger();
    }

    pub(crate) fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::Acquire)
    }

    /// When the shutdown was triggered (wall clock, µs), if it was.
    pub(crate) fn triggered_at_us(&self) -> Option<i64> {
        Some(self.inner.triggered_at_us.load(Ordering::Acquire)).filter(|at| *at > 0)
    }

    pub(crate) fn is_forced(&self) -> bool {
        self.inner.forced.load(Ordering::Acquire)
    }

    /// Sleeps up to `duration`; returns `false` early if shutdown was triggered.
    pub fn sleep(&self, duration: Duration) -> bool {
        let mut guard = self.inner.lock.lock();
        if self.is_triggered() {
            return false;
        }
        self.inner.wake.wait_for(&mut guard, duration);
        !self.is_triggered()
    }

    /// Resolves once shutdown is triggered.
    pub async fn wait(&self) {
        let mut rx = self.inner.watch.subscribe();
        let _ = rx.wait_for(|t| *t).await;
    }
}

/// SIGINT or SIGTERM arrived (see [`stop_on_signals`]).
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// For the foreground commands (`simulate`, `tail`): SIGINT and SIGTERM set a flag the command
/// polls ([`stop_requested`]) instead of ending the process, so it can finish cleanly.
pub fn stop_on_signals() {
    let handler = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Whether SIGINT or SIGTERM arrived since [`stop_on_signals`].
pub fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_wakes_on_trigger() {
        let s = Shutdown::new();
        let t = s.clone();
        let h = std::thread::spawn(move || t.sleep(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        s.trigger();
        assert!(!h.join().unwrap());
        assert!(s.is_triggered() && !s.is_forced());
    }
}
