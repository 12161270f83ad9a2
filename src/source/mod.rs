//! Sources: where events come from. Each source (the ESL reader in [`esl`], the HTTP ingress
//! in [`http`], the PostgreSQL outbox relay in [`outbox`]) turns what it receives into [`Envelope`]s and hands them to the
//! pipeline through one [`Intake`], the only way in.
//!
//! The intake never waits on Redis. A source that must not wait at all (the ESL reader: the
//! switch drops events for a listener that falls behind) offers events one by one with
//! [`Intake::offer`]; a source that answers its producer only once events are durable submits
//! a batch with [`Intake::submit_acked`] and waits, as long as it chooses, on the receiver.
//! Either way, an event with no room anywhere is counted and logged as dropped here, with its
//! source, and its acknowledgement says so.

pub(crate) mod esl;
pub(crate) mod http;
pub mod outbox;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::error;

use crate::ack::{AckBatch, AckReceiver, AckStatus};
use crate::envelope::{now_us, Envelope, EventId, IdempotencyKey, Source, Text};
use crate::pipeline::{Pipeline, Submitted};
use crate::state::AgentState;
use crate::telemetry::logging::RateLimit;
use crate::telemetry::metrics::metrics;

static FULL_WARN: RateLimit = RateLimit::new(Duration::from_secs(5));

/// How an [`Intake::offer`] may place an event.
#[derive(Debug, Clone, Copy, Default)]
pub struct Offer {
    /// When memory is full, wait for room until then before spooling (the ESL reader, while
    /// the switch is not too far behind).
    pub wait_until: Option<Instant>,
    /// The source has nothing else to do right now: the lane's writer may write the event at
    /// once, on the source's thread, when its lane is idle.
    pub write_now: bool,
}

/// Where a source hands an event: the [`Intake`] itself, or something in front of it (a
/// hot-standby pair's gate keeps a standby's switch events instead of writing them).
pub trait Gate: Send + Sync {
    fn offer(&self, envelope: Envelope, offer: Offer);
}

impl Gate for Intake {
    fn offer(&self, envelope: Envelope, offer: Offer) {
        Intake::offer(self, envelope, offer);
    }
}

/// The pipeline's front door, shared by every source.
pub struct Intake {
    pipeline: Arc<Pipeline>,
    state: Arc<AgentState>,
    /// `eslstream_events_received_total{source}`, per [`Source`] (looked up once).
    received: [prometheus::IntCounter; 3],
}

impl Intake {
    pub fn new(pipeline: Arc<Pipeline>, state: Arc<AgentState>) -> Arc<Intake> {
        let received = Source::ALL.map(|s| metrics().events.received.with_label_values(&[s.label()]));
        Arc::new(Intake { pipeline, state, received })
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Counts `n` events taken in from `source` (whether or not they are then routed or
    /// accepted): `eslstream_events_received_total{source}` and `/health`'s per-source count.
    pub fn received(&self, source: Source, n: u64) {
        self.received[source as usize].inc_by(n);
        self.state.add_received(source, n);
    }

    /// Puts one event on its lane; never waits longer than `offer.wait_until`. Returns whether
    /// the event was kept (written, in memory or spooled); a dropped one is counted here.
    pub(crate) fn offer(&self, envelope: Envelope, offer: Offer) -> bool {
        self.state.add_accepted();
        let submitted = match offer.write_now {
            true => self.pipeline.write_or_submit(envelope, offer.wait_until),
            false => self.pipeline.submit_by(envelope, offer.wait_until),
        };
        match submitted {
            Submitted::Full(envelope, reason) => {
                self.dropped(*envelope, reason);
                false
            }
            _ => true,
        }
    }

    /// Puts every event of a batch on its lane (in order, never waiting), makes sure what was
    /// spooled is on disk, and hands back the receiver of their outcomes: one [`AckStatus`]
    /// per event, in order, once each is written, known as a duplicate, fsynced to the spool,
    /// dead-lettered or dropped.
    pub fn submit_acked(&self, mut envelopes: Vec<Envelope>) -> AckReceiver {
        let (tokens, receiver) = AckBatch::make(envelopes.len());
        for (envelope, token) in envelopes.iter_mut().zip(tokens) {
            envelope.ack = Some(token);
        }
        for envelope in envelopes {
            self.offer(envelope, Offer::default());
        }
        self.pipeline.flush_spools();
        receiver
    }

    /// Writes what sources appended to the spools out (the ESL reader calls it after every
    /// read, so what a read brought in survives a SIGKILL).
    pub fn flush(&self) {
        self.pipeline.flush_spools();
    }

    /// An event with no room anywhere: counted, logged (rate-limited), acknowledged as dropped;
    /// or, when its source keeps it (an outbox row), handed back to be sent again later.
    fn dropped(&self, mut envelope: Envelope, reason: &'static str) {
        let source = envelope.source;
        if source.keeps_its_events() {
            metrics().events.deferred.with_label_values(&[source.label()]).inc();
            if let Some(ack) = envelope.ack.take() {
                ack.resolve(AckStatus::Deferred);
            }
            return;
        }
        metrics().events.dropped.with_label_values(&[envelope.stream.label, reason, source.label()]).inc();
        self.state.add_dropped(source, 1);
        if let Some(ack) = envelope.ack.take() {
            ack.resolve(AckStatus::Dropped(reason));
        }
        if let Some(suppressed) = FULL_WARN.check() {
            error!(reason, source = source.label(), event = %envelope.name, key = %envelope.ordering_key, suppressed, "no room in memory or spool; event dropped");
        }
    }
}

/// Gives events that arrive without an idempotency key one of the agent's own: a producer
/// name unique to this process and a counter. The key is assigned before the event enters the
/// pipeline, so every retry (and the spool) carries the same one. (A producer's blind re-send
/// of such an event is a new event: it can be written twice.)
pub(crate) struct KeyAssigner {
    producer: Text,
    next: AtomicU64,
}

impl Default for KeyAssigner {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyAssigner {
    pub(crate) fn new() -> KeyAssigner {
        KeyAssigner {
            producer: format!("eslstream-{}-{:x}", std::process::id(), now_us()).into(),
            next: AtomicU64::new(1),
        }
    }

    /// A fresh key.
    pub(crate) fn next(&self) -> IdempotencyKey {
        IdempotencyKey { producer: self.producer.clone(), id: EventId::Seq(self.next.fetch_add(1, Ordering::Relaxed)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigned_keys_are_unique() {
        let keys = KeyAssigner::new();
        let (a, b) = (keys.next(), keys.next());
        assert_eq!(a.producer, b.producer);
        assert_ne!(a.id, b.id);
        assert_ne!(KeyAssigner::new().producer, "");
    }
}
