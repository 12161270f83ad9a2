//! Hot-standby pairs (`HA_GROUP`): two agents beside one switch, both reading its event
//! socket (FreeSWITCH sends every event to every listener), one writing.
//!
//! The active agent holds a lease in Redis: `eslstream:ha:{<group>}:lease`, set with `NX` and
//! an expiry of `HA_LEASE_TTL`, renewed every quarter of it, its value the holder's
//! `HA_AGENT_ID` and an *epoch*. Epochs only grow: each is the larger of the Redis clock in
//! milliseconds and the last epoch plus one (`eslstream:ha:{<group>}:epoch`), so a Redis
//! that lost its keys, or a clock set back, still hands out a larger one.
//!
//! The standby parses every event like the active one and keeps the last `HA_REPLAY_WINDOW`
//! of them (at most `HA_REPLAY_MAX_BYTES`) in memory instead of writing them. When the lease
//! is free (released at once by a graceful stop, expired after a crash), it takes it, hands
//! its window to the pipeline through the checking path (what the old active wrote is skipped
//! by key; the rest fills the gap, in order, before any live event), and carries on as active.
//!
//! Every ESL write carries the lease's epoch ([`Fence`]); Redis refuses, atomically with the
//! write, one whose epoch is older than an epoch that already wrote to that stream, so an
//! active that lost its lease without knowing it (paused longer than the TTL, cut off from
//! Redis) never writes after the other took over. Locally an epoch counts only until three
//! quarters of the TTL after the renewal that granted it was sent.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tracing::{info, warn};

use crate::ack::AckStatus;
use crate::config::{HaConfig, RedisConfig};
use crate::envelope::{now_us, Envelope};
use crate::pipeline::fence::Fence;
use crate::shutdown::Shutdown;
use crate::sink::redis::keys::{fence_key, lease_keys, takeover_trip_key};
use crate::sink::redis::FENCE_CHECK;
use crate::sink::target::connect_primary_for;
use crate::source::{Intake, Offer};
use crate::telemetry::logging::RateLimit;
use crate::telemetry::metrics::metrics;

/// Takes the lease if it is free (or renews it if this agent holds it).
/// KEYS: lease, epoch counter. ARGV: agent id, TTL in ms.
/// Returns `{1, epoch}` when held by this agent, `{0, holder}` when by another.
const ACQUIRE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local holder, epoch = string.match(cur, '^(.*) (%d+)$')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, epoch}
  end
  return {0, cur}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local epoch = math.max(now, last + 1)
redis.call('SET', KEYS[2], epoch)
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. epoch, 'PX', ARGV[2])
return {1, tostring(epoch)}
"#;

/// Deletes the lease if this agent holds it. KEYS: lease. ARGV: agent id.
const RELEASE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and string.match(cur, '^(.*) %d+$') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

static LEASE_WARN: RateLimit = RateLimit::new(Duration::from_secs(10));

/// This agent's role in its pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Active,
    Standby,
}

/// What `/health` shows of the pair (`data.ha`).
#[derive(Debug, Clone, Serialize)]
pub struct PairView {
    pub group: String,
    pub agent_id: String,
    pub role: Role,
    /// Who holds the lease (`<agent id> <epoch>`), as last seen.
    pub lease_holder: Option<String>,
    pub epoch: Option<u64>,
    /// The standby's replay window: events held and the seconds they span.
    pub window_events: usize,
    pub window_seconds: f64,
    pub window_bytes: u64,
    pub takeovers: u64,
}

/// The events a standby keeps, oldest first, bounded in age and bytes.
struct Window {
    events: VecDeque<Envelope>,
    bytes: u64,
}

impl Window {
    fn push(&mut self, envelope: Envelope, max_age: Duration, max_bytes: u64) {
        self.bytes += envelope.body.len() as u64;
        self.events.push_back(envelope);
        let oldest_kept = now_us() - max_age.as_micros() as i64;
        while let Some(front) = self.events.front() {
            if front.parsed_at_us >= oldest_kept && self.bytes <= max_bytes {
                break;
            }
            self.bytes -= front.body.len() as u64;
            self.events.pop_front();
        }
    }

    fn seconds(&self) -> f64 {
        match (self.events.front(), self.events.back()) {
            (Some(a), Some(b)) => (b.parsed_at_us - a.parsed_at_us) as f64 / 1e6,
            _ => 0.0,
        }
    }
}

/// The gate every switch event passes: written when active, kept when standby.
struct Gate {
    role: Role,
    window: Window,
}

/// One agent's side of a pair.
pub struct Pair {
    config: HaConfig,
    redis: RedisConfig,
    /// The switch's streams (events, jobs): their fences are raised at takeover.
    streams: Vec<String>,
    fence: Arc<Fence>,
    intake: Arc<Intake>,
    gate: Mutex<Gate>,
    view: Mutex<PairView>,
}

impl Pair {
    pub fn new(
        config: HaConfig,
        redis: RedisConfig,
        streams: Vec<String>,
        fence: Arc<Fence>,
        intake: Arc<Intake>,
    ) -> Arc<Pair> {
        let view = PairView {
            group: config.group.clone(),
            agent_id: config.agent_id.clone(),
            role: Role::Standby,
            lease_holder: None,
            epoch: None,
            window_events: 0,
            window_seconds: 0.0,
            window_bytes: 0,
            takeovers: 0,
        };
        metrics().ha_role.set(0);
        Arc::new(Pair {
            config,
            redis,
            streams,
            fence,
            intake,
            gate: Mutex::new(Gate { role: Role::Standby, window: Window { events: VecDeque::new(), bytes: 0 } }),
            view: Mutex::new(view),
        })
    }

    /// A parsed switch event: into the pipeline when active, into the window when standby.
    pub fn offer(&self, envelope: Envelope, offer: Offer) {
        let mut gate = self.gate.lock();
        match gate.role {
            Role::Active => {
                drop(gate);
                self.intake.offer(envelope, offer);
            }
            Role::Standby => gate.window.push(envelope, self.config.replay_window, self.config.replay_max_bytes),
        }
    }

    pub fn view(&self) -> PairView {
        let mut view = self.view.lock().clone();
        let gate = self.gate.lock();
        view.role = gate.role;
        view.window_events = gate.window.events.len();
        view.window_seconds = (gate.window.seconds() * 1000.0).round() / 1000.0;
        view.window_bytes = gate.window.bytes;
        view
    }

    fn keys(&self) -> (String, String) {
        lease_keys(&self.config.group)
    }

    /// The lease thread: takes, renews and loses the lease until shutdown, then releases it.
    pub fn run(self: Arc<Self>, shutdown: Shutdown) {
        let tick = self.config.lease_ttl / 4;
        let mut conn: Option<redis::Connection> = None;
        let acquire = redis::Script::new(ACQUIRE);
        let (lease, epoch_key) = self.keys();
        let ttl_ms = self.config.lease_ttl.as_millis() as u64;
        let mut valid_until = 0i64;
        loop {
            let sent_at = now_us();
            let result = self.connection(&mut conn).and_then(|c| {
                acquire
                    .key(&lease)
                    .key(&epoch_key)
                    .arg(&self.config.agent_id)
                    .arg(ttl_ms)
                    .invoke::<(i64, String)>(c)
                    .map_err(|e| e.to_string())
            });
            match result {
                Ok((1, epoch)) => {
                    let epoch: u64 = epoch.parse().unwrap_or(0);
                    valid_until = sent_at + (self.config.lease_ttl.as_micros() as i64) * 3 / 4;
                    self.fence.grant(epoch);
                    self.view.lock().lease_holder = Some(format!("{} {epoch}", self.config.agent_id));
                    if self.gate.lock().role == Role::Standby {
                        self.take_over(epoch);
                    }
                }
                Ok((_, holder)) => {
                    self.view.lock().lease_holder = Some(holder.clone());
                    if self.gate.lock().role == Role::Active || self.fence.current().is_some() {
                        // Known lost: what this agent still holds is the other's to write.
                        self.fence.revoke();
                        self.step_down(&format!("the lease is held by {holder}"));
                    }
                }
                Err(e) => {
                    conn = None;
                    if let Some(suppressed) = LEASE_WARN.check() {
                        warn!(error = %e, suppressed, "cannot reach Redis for the pair's lease");
                    }
                    // Still active while the last renewal lasts.
                    if self.gate.lock().role == Role::Active && now_us() >= valid_until {
                        self.step_down(&format!("the lease could not be renewed: {e}"));
                    }
                }
            }
            if !shutdown.sleep(tick) {
                break;
            }
        }
        self.release(&mut conn);
    }

    /// The lease's connection: to the primary holding the lease key (TLS, Sentinel and
    /// Cluster as for the writers), with a quarter of the TTL to answer.
    fn connection<'a>(&self, conn: &'a mut Option<redis::Connection>) -> Result<&'a mut redis::Connection, String> {
        if conn.is_none() {
            let (lease, _) = self.keys();
            let c = connect_primary_for(&self.redis, &lease, self.config.lease_ttl / 4).map_err(|e| e.to_string())?;
            *conn = Some(c);
        }
        Ok(conn.as_mut().expect("connected above"))
    }

    /// Raises the fence of every stream of the switch to `epoch`, so that from now on the old
    /// active cannot write to any of them, whether or not this agent has written there yet.
    fn raise_fences(&self, epoch: u64) {
        for stream in &self.streams {
            let fence = fence_key(stream, &self.config.group);
            let trip = takeover_trip_key(stream, &self.config.group);
            let raised = connect_primary_for(&self.redis, &fence, self.config.lease_ttl).and_then(|mut c| {
                redis::cmd("EVAL")
                    .arg(FENCE_CHECK)
                    .arg(2)
                    .arg(&fence)
                    .arg(&trip)
                    .arg(epoch)
                    .arg(crate::sink::redis::DEDUP_TTL_SECS)
                    .query::<i64>(&mut c)
            });
            match raised {
                Ok(1) => {}
                Ok(_) => warn!(stream, epoch, "a newer lease epoch already wrote to this stream"),
                Err(e) => warn!(stream, error = %e, "cannot raise the stream's fence; the replay raises it"),
            }
        }
    }

    /// Becomes active: the window goes to the pipeline first (checking path), in order, then
    /// live events follow it.
    fn take_over(&self, epoch: u64) {
        let started = Instant::now();
        self.raise_fences(epoch);
        let mut gate = self.gate.lock();
        let seconds = gate.window.seconds();
        let mut window: Vec<Envelope> = gate.window.events.drain(..).collect();
        gate.window.bytes = 0;
        let events = window.len();
        for envelope in &mut window {
            envelope.maybe_written = true;
        }
        let receiver = self.intake.submit_acked(window);
        gate.role = Role::Active;
        drop(gate);
        metrics().ha_role.set(1);
        metrics().ha_takeovers.inc();
        {
            let mut view = self.view.lock();
            view.takeovers += 1;
            view.epoch = Some(epoch);
        }
        info!(group = %self.config.group, epoch, replaying = events, window_seconds = seconds, took = ?started.elapsed(), "took the pair's lease: active; the replay window goes first");
        // Count what the replay filled in, off this thread (the lease must keep being renewed).
        let _ = std::thread::Builder::new().name("ha-replay".into()).spawn(move || {
            let Some(outcomes) = receiver.wait_blocking(Duration::from_secs(120)) else { return };
            let (mut written, mut duplicate) = (0u64, 0u64);
            for outcome in &outcomes {
                match outcome {
                    AckStatus::Written(_) => written += 1,
                    AckStatus::Duplicate => duplicate += 1,
                    _ => {}
                }
            }
            metrics().ha_replayed.with_label_values(&["written"]).inc_by(written);
            metrics().ha_replayed.with_label_values(&["duplicate"]).inc_by(duplicate);
            info!(written, duplicate, "replay window written: the gap filled, the rest already there");
        });
    }

    /// Becomes standby: no new event is written; the window starts from now.
    fn step_down(&self, why: &str) {
        let mut gate = self.gate.lock();
        if gate.role == Role::Standby {
            return;
        }
        gate.role = Role::Standby;
        drop(gate);
        metrics().ha_role.set(0);
        self.view.lock().epoch = None;
        warn!(group = %self.config.group, why, "standby: this agent no longer writes the switch's events");
    }

    /// Gives the lease up at shutdown (the other agent takes over at its next try).
    fn release(&self, conn: &mut Option<redis::Connection>) {
        if self.gate.lock().role != Role::Active {
            return;
        }
        let (lease, _) = self.keys();
        let released = self.connection(conn).and_then(|c| {
            redis::Script::new(RELEASE)
                .key(&lease)
                .arg(&self.config.agent_id)
                .invoke::<i64>(c)
                .map_err(|e| e.to_string())
        });
        self.fence.revoke();
        match released {
            Ok(_) => info!(group = %self.config.group, "released the pair's lease"),
            Err(e) => warn!(error = %e, "cannot release the pair's lease; it expires by itself"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{BodyFormat, EventId, IdempotencyKey, Source, StreamTarget};

    fn event(seq: u64, at_us: i64, bytes: usize) -> Envelope {
        let key = IdempotencyKey { producer: "core".into(), id: EventId::Seq(seq) };
        let body = bytes::Bytes::from(vec![b'x'; bytes]);
        Envelope {
            parsed_at_us: at_us,
            ..Envelope::new(Source::Esl, StreamTarget::new("s", 0, "events"), BodyFormat::EslPlain, body, key)
        }
    }

    #[test]
    fn the_window_keeps_the_newest_events_within_its_age_and_bytes() {
        let mut w = Window { events: VecDeque::new(), bytes: 0 };
        let now = now_us();
        for seq in 0..10 {
            w.push(event(seq, now - 20_000_000 + seq as i64 * 1_000_000, 100), Duration::from_millis(15_500), 1 << 20);
        }
        // Events of 20..11 s ago: those older than 15.5 s went.
        let seqs: Vec<u64> = w.events.iter().map(|e| e.key.id.seq().unwrap()).collect();
        assert_eq!(seqs, [5, 6, 7, 8, 9]);
        assert_eq!(w.bytes, 500);
        w.push(event(10, now, 450), Duration::from_millis(15_500), 1000);
        let seqs: Vec<u64> = w.events.iter().map(|e| e.key.id.seq().unwrap()).collect();
        assert_eq!(seqs, [5, 6, 7, 8, 9, 10], "950 bytes fit in 1000");
        w.push(event(11, now, 450), Duration::from_millis(15_500), 1000);
        assert!(w.bytes <= 1000);
        assert_eq!(w.events.back().unwrap().key.id.seq(), Some(11));
        assert!(w.seconds() >= 0.0);
    }
}
