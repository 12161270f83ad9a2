//! The write fence of a hot-standby pair (`HA_GROUP`): whether this agent may write the
//! switch's events now, and with which lease epoch.
//!
//! The pair's lease ([`super::Pair`]) grants an epoch, a number that grows with
//! every takeover. The writers read it for every batch of ESL events: with one, the write
//! carries it, and Redis refuses it atomically when a newer epoch has already written to that
//! stream (a paused or cut-off active that wakes up after the other agent took over); that is
//! the safety, whatever the local clocks say. The epoch is revoked once this agent knows
//! another holds the lease (then its live events are the other's to write). Other sources'
//! events are not fenced: each agent is their only writer.

use std::sync::atomic::{AtomicU64, Ordering};

/// Shared by the pair's lease thread (which grants and revokes) and the writers (which read).
#[derive(Debug)]
pub(crate) struct Fence {
    group: String,
    epoch: AtomicU64,
}

impl Fence {
    pub(crate) fn new(group: &str) -> Fence {
        Fence { group: group.to_owned(), epoch: AtomicU64::new(0) }
    }

    /// `HA_GROUP`.
    pub(crate) fn group(&self) -> &str {
        &self.group
    }

    /// The epoch writes carry now: the last one granted, unless revoked.
    pub(crate) fn current(&self) -> Option<u64> {
        Some(self.epoch.load(Ordering::Acquire)).filter(|e| *e > 0)
    }

    /// This agent took (or renewed) the lease with `epoch`.
    pub(crate) fn grant(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Release);
    }

    /// Another agent holds the lease (or this one released it).
    pub(crate) fn revoke(&self) {
        self.epoch.store(0, Ordering::Release);
    }

    /// A write carrying `epoch` was refused: revokes it, unless this agent has been granted
    /// another epoch since (it took the lease again while that write was on its way). Returns
    /// the epoch writes carry now, if any.
    pub(crate) fn refused(&self, epoch: u64) -> Option<u64> {
        let _ = self.epoch.compare_exchange(epoch, 0, Ordering::AcqRel, Ordering::Acquire);
        self.current()
    }
}

impl crate::sink::writer::WriteFence for Fence {
    fn group(&self) -> &str {
        Fence::group(self)
    }

    fn current(&self) -> Option<u64> {
        Fence::current(self)
    }

    fn refused(&self, epoch: u64) -> Option<u64> {
        Fence::refused(self, epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_counts_until_revoked() {
        let f = Fence::new("sw1");
        assert_eq!((f.current(), f.group()), (None, "sw1"));
        f.grant(7);
        assert_eq!(f.current(), Some(7));
        f.grant(9);
        assert_eq!(f.current(), Some(9));
        f.revoke();
        assert_eq!(f.current(), None);
        // A refusal revokes the epoch it carried, not one granted since.
        f.grant(11);
        assert_eq!(f.refused(11), None);
        f.grant(12);
        f.grant(13);
        assert_eq!(f.refused(12), Some(13), "took the lease again meanwhile");
        assert_eq!(f.current(), Some(13));
    }
}
