//! The admin port's connection limits: whatever a client does (hundreds of idle connections,
//! a slow-loris trickle of header bytes), `/health` and `/metrics` keep answering at once, so
//! an orchestrator never restarts a working agent because its probe was crowded out.
//!
//! - **One deadline for a request head.** A connection must deliver a complete request head
//!   within [`HEADER_TIMEOUT`] of being accepted or of its previous answer (hyper's header-read
//!   timeout, which starts whenever the server begins waiting for a head and is not extended
//!   by bytes trickling in). So one rule closes a keep-alive connection left idle, a
//!   connection that never says anything, and a slow-loris client.
//! - **Per address.** One client address holds at most [`MAX_CONNECTIONS_PER_PEER`]
//!   connections; a further one is closed at once (`reason="per_peer"`). A client on this host
//!   (its address is the one it connected to: 127.0.0.1 → 127.0.0.1 for the Docker/Kubernetes
//!   exec probe and `eslstream health`, `::1`, or the host's own address) is never refused
//!   for it: its own oldest idle connection is closed instead, so a local crowd cannot lock
//!   out the local probe.
//! - **In all.** At most [`MAX_CONNECTIONS`] are open. A connection arriving at the cap is
//!   admitted and the oldest *idle* connection (waiting for a request head, not inside a
//!   handler) is closed to make room; only when every connection is inside a handler is the
//!   newcomer closed (`reason="full"`).
//!
//! Why evict the oldest idle connection rather than keep a reserve of slots for `/health`:
//! a connection's purpose is unknown until its request head arrives, and that is exactly what
//! an idle or slow crowd never sends, so a reserve would be filled by the crowd like any other
//! slot. Eviction needs no guess. The newest connection is the last to go, so a probe that
//! sends its request right away is answered; a well-behaved client loses at most an idle
//! keep-alive connection, which it re-opens; an answer in progress is never cut. Connections
//! stay inside a handler only while it works: `/health` and `/metrics` answer in microseconds,
//! and the slow handlers (`/dlq`) answer strangers with 401/403 at once, so a crowd cannot make
//! every connection busy.
//!
//! [`Connections`] is the bookkeeping only (no sockets): the server asks it on every accept and
//! tells it when a connection ends.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// Connections open at once; at the cap the oldest idle one makes room for a new one.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections one client address may hold; more are closed at once (except from this host).
pub const MAX_CONNECTIONS_PER_PEER: usize = 32;
/// A connection must send a complete request head within this of being accepted or of its
/// previous answer: the keep-alive idle timeout and the slow-client cut in one.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The limits a server runs with (the constants above unless a test says otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub max_connections: usize,
    pub max_per_peer: usize,
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            max_per_peer: MAX_CONNECTIONS_PER_PEER,
            header_timeout: HEADER_TIMEOUT,
        }
    }
}

/// Whether a client is on this host: its address is the one it connected to.
pub(crate) fn is_same_host(peer: IpAddr, local: IpAddr) -> bool {
    peer.to_canonical() == local.to_canonical()
}

/// Why a new connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its address already holds [`Limits::max_per_peer`] connections.
    PerPeer,
    /// [`Limits::max_connections`] are open and every one is inside a handler.
    Full,
}

impl Refused {
    /// The `reason` label of `eslstream_http_connections_rejected_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refused::PerPeer => "per_peer",
            Refused::Full => "full",
        }
    }

    /// What happened, for the log.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Refused::PerPeer => "too many connections from this address",
            Refused::Full => "every connection is busy being answered",
        }
    }

    pub(crate) const ALL: [Refused; 2] = [Refused::PerPeer, Refused::Full];
}

/// What the server and one connection's task share: whether a handler is running on it, and
/// the signal that closes it.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    busy: AtomicBool,
    close: Notify,
}

impl Slot {
    /// Marks the connection as inside a handler until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> Busy {
        self.busy.store(true, Ordering::Relaxed);
        Busy(self.clone())
    }

    fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }

    /// Asks the connection's task to close it (kept if the task is not waiting yet).
    pub(crate) fn close(&self) {
        self.close.notify_one();
    }

    /// Resolves once [`Slot::close`] was called.
    pub(crate) async fn closed(&self) {
        self.close.notified().await
    }
}

/// A handler is running on the connection while this lives.
pub(crate) struct Busy(Arc<Slot>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Relaxed);
    }
}

/// A connection admitted by [`Connections::admit`].
#[derive(Debug)]
pub(crate) struct Admitted {
    pub id: u64,
    pub slot: Arc<Slot>,
    /// The idle connection closed to make room for it, if one was: its address and slot.
    pub evicted: Option<(IpAddr, Arc<Slot>)>,
}

struct Open {
    peer: IpAddr,
    slot: Arc<Slot>,
}

/// The open connections, oldest first, and how many each address holds.
pub(crate) struct Connections {
    limits: Limits,
    next_id: u64,
    open: BTreeMap<u64, Open>,
    per_peer: HashMap<IpAddr, usize>,
}

impl Connections {
    pub(crate) fn new(limits: Limits) -> Connections {
        Connections { limits, next_id: 0, open: BTreeMap::new(), per_peer: HashMap::new() }
    }

    /// Connections open now.
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }

    /// Decides on a new connection from `peer` (`same_host`: see [`is_same_host`]). An evicted
    /// connection is already forgotten here; the caller closes it through its slot.
    pub(crate) fn admit(&mut self, peer: IpAddr, same_host: bool) -> Result<Admitted, Refused> {
        let peer = peer.to_canonical();
        let mut evicted = None;
        if self.per_peer.get(&peer).copied().unwrap_or(0) >= self.limits.max_per_peer {
            if !same_host {
                return Err(Refused::PerPeer);
            }
            // Its own oldest idle connection makes room; if all of them are busy, it is let in
            // above the per-address cap (the global cap still holds).
            evicted = self.evict_oldest_idle(Some(peer));
        }
        if evicted.is_none() && self.open.len() >= self.limits.max_connections {
            evicted = Some(self.evict_oldest_idle(None).ok_or(Refused::Full)?);
        }
        let id = self.next_id;
        self.next_id += 1;
        let slot = Arc::new(Slot::default());
        self.open.insert(id, Open { peer, slot: slot.clone() });
        *self.per_peer.entry(peer).or_insert(0) += 1;
        Ok(Admitted { id, slot, evicted })
    }

    /// Forgets a connection that ended; false if it was already gone (evicted).
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        let Some(open) = self.open.remove(&id) else {
            return false;
        };
        if let Some(held) = self.per_peer.get_mut(&open.peer) {
            *held -= 1;
            if *held == 0 {
                self.per_peer.remove(&open.peer);
            }
        }
        true
    }

    /// Removes the oldest connection not inside a handler (of `peer` only, if given).
    fn evict_oldest_idle(&mut self, peer: Option<IpAddr>) -> Option<(IpAddr, Arc<Slot>)> {
        let id = self
            .open
            .iter()
            .find(|(_, open)| peer.is_none_or(|p| open.peer == p) && !open.slot.is_busy())
            .map(|(id, _)| *id)?;
        let open = self.open.get(&id).map(|open| (open.peer, open.slot.clone()));
        self.remove(id);
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an IP address")
    }

    fn small() -> Connections {
        Connections::new(Limits { max_connections: 4, max_per_peer: 2, header_timeout: HEADER_TIMEOUT })
    }

    #[test]
    fn same_host_means_the_address_it_connected_to() {
        assert!(is_same_host(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(is_same_host(ip("::1"), ip("::1")));
        assert!(is_same_host(ip("::ffff:127.0.0.1"), ip("127.0.0.1")));
        assert!(is_same_host(ip("192.0.2.2"), ip("192.0.2.2")));
        assert!(!is_same_host(ip("127.0.0.2"), ip("127.0.0.1")));
        assert!(!is_same_host(ip("10.0.0.7"), ip("10.0.0.5")));
    }

    #[test]
    fn a_remote_address_over_its_cap_is_refused_and_others_still_get_in() {
        let mut c = small();
        let first = c.admit(ip("10.0.0.7"), false).expect("first");
        c.admit(ip("10.0.0.7"), false).expect("second");
        assert_eq!(c.admit(ip("10.0.0.7"), false).unwrap_err(), Refused::PerPeer);
        assert_eq!(c.admit(ip("::ffff:10.0.0.7"), false).unwrap_err(), Refused::PerPeer, "the same address");
        assert!(c.admit(ip("10.0.0.8"), false).expect("another address").evicted.is_none());
        assert!(c.remove(first.id));
        assert!(!c.remove(first.id), "already gone");
        assert!(c.admit(ip("10.0.0.7"), false).is_ok(), "room again once one ended");
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let mut c = small();
        let a = c.admit(ip("10.0.0.1"), false).unwrap();
        let _busy = a.slot.enter();
        let b = c.admit(ip("10.0.0.2"), false).unwrap();
        c.admit(ip("10.0.0.3"), false).unwrap();
        c.admit(ip("10.0.0.4"), false).unwrap();
        let e = c.admit(ip("10.0.0.5"), false).expect("admitted at the cap");
        let (peer, slot) = e.evicted.expect("one evicted");
        assert_eq!(peer, ip("10.0.0.2"), "the oldest idle one, not the busy one");
        assert!(Arc::ptr_eq(&slot, &b.slot));
        assert!(!c.remove(b.id), "an evicted connection is already forgotten");
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn when_every_connection_is_busy_a_newcomer_is_refused() {
        let mut c = small();
        let held: Vec<_> = (1..=4).map(|i| c.admit(ip(&format!("10.0.0.{i}")), false).unwrap()).collect();
        let busy: Vec<_> = held.iter().map(|a| a.slot.enter()).collect();
        assert_eq!(c.admit(ip("10.0.0.9"), false).unwrap_err(), Refused::Full);
        assert_eq!(c.admit(ip("127.0.0.1"), true).unwrap_err(), Refused::Full);
        drop(busy);
        assert!(c.admit(ip("10.0.0.9"), false).unwrap().evicted.is_some(), "idle again once the handlers end");
    }

    #[test]
    fn a_same_host_client_over_its_cap_replaces_its_own_oldest_idle_connection() {
        let mut c = small();
        let remote = c.admit(ip("10.0.0.1"), false).unwrap();
        let first = c.admit(ip("127.0.0.1"), true).unwrap();
        let second = c.admit(ip("127.0.0.1"), true).unwrap();
        let third = c.admit(ip("127.0.0.1"), true).expect("never refused for the per-address cap");
        let (peer, slot) = third.evicted.expect("its own oldest idle one made room");
        assert_eq!(peer, ip("127.0.0.1"));
        assert!(Arc::ptr_eq(&slot, &first.slot), "not the remote one, which is older");
        // All of its connections busy: let in above its cap, nothing closed.
        let _busy = (second.slot.enter(), third.slot.enter());
        let fourth = c.admit(ip("127.0.0.1"), true).unwrap();
        assert!(fourth.evicted.is_none());
        assert_eq!(c.len(), 4);
        assert!(c.remove(remote.id));
    }
}
