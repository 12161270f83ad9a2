//! What all lanes' spools share: the byte budget (`SPOOL_MAX_BYTES`), the counts `/health`
//! and the metrics read, the fault that says why the spool cannot write; and why an append
//! was refused ([`SpoolError`]).

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// The byte budget shared by all lanes' spools (`SPOOL_MAX_BYTES`).
#[derive(Debug)]
pub struct SpoolBudget {
    pub max_bytes: u64,
    pub(super) used: AtomicU64,
    pub(super) events: AtomicU64,
    /// Lanes whose spool cannot write now, and the latest such error.
    pub(super) failing_lanes: AtomicUsize,
    pub(super) fault: Mutex<Option<String>>,
    /// Events lost because their spool files were deleted while the agent ran.
    pub(super) lost: AtomicU64,
}

impl SpoolBudget {
    pub fn new(max_bytes: u64) -> Arc<SpoolBudget> {
        Arc::new(SpoolBudget {
            max_bytes,
            used: AtomicU64::new(0),
            events: AtomicU64::new(0),
            failing_lanes: AtomicUsize::new(0),
            fault: Mutex::new(None),
            lost: AtomicU64::new(0),
        })
    }

    /// Why the spool cannot write now (`None` while every lane's spool can).
    pub fn fault(&self) -> Option<String> {
        if self.failing_lanes.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.fault.lock().clone()
    }

    /// Bytes on disk across all lanes.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Events spooled and not yet read back, across all lanes.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Events lost since start because the spool files holding them were deleted while the
    /// agent ran (also counted in `eslstream_events_dropped_total{reason="spool_lost"}`).
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// Why an event could not be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool is full ({used} of {max} bytes)")]
    Full { used: u64, max: u64 },
    #[error("spool I/O error: {0}")]
    Io(#[from] io::Error),
    /// Events queued behind a batch are newer than the batch's spooled part: the batch cannot
    /// go back to the spool ahead of them (it stays with the writer).
    #[error("newer events are queued behind the batch; it stays in memory")]
    Behind,
}

impl SpoolError {
    /// The drop reason for an event this error kept out: `spool_full` when there is no room
    /// (the budget, or the file system: ENOSPC, EDQUOT), else `spool_error`.
    pub fn reason(&self) -> &'static str {
        match self {
            SpoolError::Full { .. } => "spool_full",
            SpoolError::Io(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) => "spool_full",
            SpoolError::Io(_) | SpoolError::Behind => "spool_error",
        }
    }
}
