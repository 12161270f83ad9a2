//! Acknowledgements: how a source that asked learns, exactly once per event, what became of
//! it (the model is vector's finalizers and batch notifiers).
//!
//! A source that wants to know makes an [`AckBatch`] of `n` tokens, puts one [`AckToken`] on
//! each envelope, and keeps the [`AckReceiver`]. Whoever settles an event resolves its token:
//! the writer (written, duplicate, dead-lettered), the spool once the record is fsynced
//! (spooled), or the pipeline when there is no room (dropped; deferred, for a source that
//! keeps its events itself). A token resolves once: it is
//! consumed by [`AckToken::resolve`], and one dropped unresolved (a bug, or a forced shutdown)
//! resolves as dropped, so no receiver waits forever. When the last token of a batch resolves,
//! the receiver gets every outcome in the order the tokens were made.
//!
//! Waiting is the source's business (an HTTP request times out, an outbox batch is retried):
//! a receiver dropped early costs nothing, and a batch's state is freed with its last token.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// What became of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckStatus {
    /// Written to Redis, with the stream entry's id.
    Written(String),
    /// Its idempotency key was already written: nothing was added.
    Duplicate,
    /// In the durable spool, fsynced: it will be written once Redis accepts it.
    Spooled,
    /// Redis refused it for good; kept in the dead-letter store under this id.
    DeadLettered(String),
    /// Kept nowhere, for this reason (`spool_full`, `memory_full`, `spool_error`, ...).
    Dropped(&'static str),
    /// Handed back to a source that keeps its events until they are written (an outbox row
    /// stays in its table): not written, not lost; the source sends it again later.
    Deferred,
}

impl AckStatus {
    /// Whether the event is safe: in Redis, known to be there, or on disk to be written.
    pub(crate) fn is_durable(&self) -> bool {
        matches!(self, AckStatus::Written(_) | AckStatus::Duplicate | AckStatus::Spooled)
    }

    pub fn label(&self) -> &'static str {
        match self {
            AckStatus::Written(_) => "written",
            AckStatus::Duplicate => "duplicate",
            AckStatus::Spooled => "spooled",
            AckStatus::DeadLettered(_) => "dead_lettered",
            AckStatus::Dropped(_) => "dropped",
            AckStatus::Deferred => "deferred",
        }
    }
}

struct Shared {
    outcomes: Mutex<Vec<Option<AckStatus>>>,
    remaining: AtomicUsize,
    done: Mutex<Option<oneshot::Sender<Vec<AckStatus>>>>,
}

/// Makes the tokens of one batch and the receiver of their outcomes.
pub(crate) struct AckBatch;

impl AckBatch {
    /// `n` tokens, in order, and the receiver that gets their `n` outcomes in that order
    /// (at once, for `n == 0`).
    pub(crate) fn make(n: usize) -> (Vec<AckToken>, AckReceiver) {
        let (tx, rx) = oneshot::channel();
        if n == 0 {
            let _ = tx.send(Vec::new());
            return (Vec::new(), AckReceiver(rx));
        }
        let shared = Arc::new(Shared {
            outcomes: Mutex::new(vec![None; n]),
            remaining: AtomicUsize::new(n),
            done: Mutex::new(Some(tx)),
        });
        let tokens = (0..n).map(|index| AckToken { shared: Some(shared.clone()), index }).collect();
        (tokens, AckReceiver(rx))
    }
}

/// One event's claim on its batch's outcome list; resolve it exactly once.
pub struct AckToken {
    shared: Option<Arc<Shared>>,
    index: usize,
}

impl std::fmt::Debug for AckToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckToken").field("index", &self.index).finish()
    }
}

impl AckToken {
    /// Records what became of the event; the last of its batch hands the outcomes over.
    pub(crate) fn resolve(mut self, status: AckStatus) {
        self.set(status);
    }

    fn set(&mut self, status: AckStatus) {
        let Some(shared) = self.shared.take() else { return };
        shared.outcomes.lock()[self.index] = Some(status);
        if shared.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let outcomes = std::mem::take(&mut *shared.outcomes.lock());
            let outcomes = outcomes.into_iter().map(|o| o.unwrap_or(AckStatus::Dropped("lost"))).collect();
            if let Some(tx) = shared.done.lock().take() {
                let _ = tx.send(outcomes); // the source may have stopped waiting
            }
        }
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        // Settled nowhere: say so rather than leave the source waiting.
        self.set(AckStatus::Dropped("lost"));
    }
}

/// The outcomes of a batch, once every token resolved.
pub struct AckReceiver(oneshot::Receiver<Vec<AckStatus>>);

impl AckReceiver {
    /// Waits up to `timeout`; `None` when not every event was settled by then (the events
    /// still go their way; the outcomes are simply not reported).
    pub async fn wait(self, timeout: std::time::Duration) -> Option<Vec<AckStatus>> {
        tokio::time::timeout(timeout, self.0).await.ok().and_then(Result::ok)
    }

    /// The same, for a thread outside any runtime.
    pub fn wait_blocking(mut self, timeout: std::time::Duration) -> Option<Vec<AckStatus>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.0.try_recv() {
                Ok(outcomes) => return Some(outcomes),
                Err(oneshot::error::TryRecvError::Closed) => return None,
                Err(oneshot::error::TryRecvError::Empty) if std::time::Instant::now() >= deadline => return None,
                Err(oneshot::error::TryRecvError::Empty) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn outcomes_arrive_in_token_order_once_all_resolved() {
        let (mut tokens, rx) = AckBatch::make(3);
        let third = tokens.pop().unwrap();
        let second = tokens.pop().unwrap();
        let first = tokens.pop().unwrap();
        third.resolve(AckStatus::Spooled);
        first.resolve(AckStatus::Written("1-0".into()));
        drop(second); // never settled: reported as dropped, not waited for
        let got = rx.wait_blocking(Duration::from_secs(1)).unwrap();
        assert_eq!(got, [AckStatus::Written("1-0".into()), AckStatus::Dropped("lost"), AckStatus::Spooled]);
    }

    #[test]
    fn an_unsettled_batch_times_out_and_a_late_resolve_is_harmless() {
        let (mut tokens, rx) = AckBatch::make(1);
        assert!(rx.wait_blocking(Duration::from_millis(20)).is_none());
        tokens.pop().unwrap().resolve(AckStatus::Duplicate);
        let (_, empty) = AckBatch::make(0);
        assert_eq!(empty.wait_blocking(Duration::ZERO), Some(vec![]));
    }
}
