//! The agent's live state, shared by the source, the writers and the health monitor.
//!
//! Plain atomics written on the hot path; read by `/health` and the log summary.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::envelope::{now_us, Source};

/// What every component reports about itself.
#[derive(Default)]
pub struct AgentState {
    /// The event socket is connected, authenticated and subscribed.
    pub esl_connected: AtomicBool,
    /// Wall-clock µs of the last HEARTBEAT event (0: none yet).
    pub last_heartbeat_us: AtomicI64,
    /// Wall-clock µs of the last byte read from the socket.
    pub last_esl_read_us: AtomicI64,
    /// Writers whose Redis connection is currently up.
    pub redis_writers_up: AtomicUsize,
    /// Events written (or found already written) since start.
    pub events_written: AtomicU64,
    /// Events dropped since start (spool full, refused, ...).
    pub events_dropped: AtomicU64,
    /// ESL connections made after the first.
    pub esl_reconnects: AtomicU64,
    /// Events handed to the pipeline (routed to a stream), all sources.
    accepted: AtomicU64,
    /// Events taken in, per source (indexed by [`Source`] order: esl, http, outbox).
    received: [AtomicU64; 3],
    /// Events written (or found already written), per source.
    written: [AtomicU64; 3],
    /// Events dropped, per source.
    dropped: [AtomicU64; 3],
    last_error: Mutex<Option<(i64, String)>>,
}

impl AgentState {
    pub(crate) fn record_error(&self, message: impl Into<String>) {
        *self.last_error.lock() = Some((now_us(), message.into()));
    }

    /// The last error and when it happened (µs since the epoch).
    pub fn last_error(&self) -> Option<(i64, String)> {
        self.last_error.lock().clone()
    }

    /// Counts events dropped from `source`.
    pub(crate) fn add_dropped(&self, source: Source, n: u64) {
        self.events_dropped.fetch_add(n, Ordering::Relaxed);
        self.dropped[source as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts an event handed to the pipeline.
    pub(crate) fn add_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub(crate) fn add_received(&self, source: Source, n: u64) {
        self.received[source as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one event of `source` written (or found already written).
    pub(crate) fn add_written(&self, source: Source) {
        self.events_written.fetch_add(1, Ordering::Relaxed);
        self.written[source as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// (received, written, dropped) of one source since start.
    pub fn source_counts(&self, source: Source) -> (u64, u64, u64) {
        let i = source as usize;
        let load = |a: &[AtomicU64; 3]| a[i].load(Ordering::Relaxed);
        (load(&self.received), load(&self.written), load(&self.dropped))
    }
}
