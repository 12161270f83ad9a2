//! The pair's lease: one thread per agent takes, renews and loses it; the gate every switch
//! event passes (written when active, kept in the window when standby); takeover and step-down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tracing::{info, warn};

use crate::ack::AckStatus;
use crate::config::{HaConfig, RedisConfig};
use crate::envelope::{now_us, Envelope};
use crate::shutdown::Shutdown;
use crate::sink::redis::keys::{fence_key, lease_keys, takeover_trip_key};
use crate::sink::redis::FENCE_CHECK;
use crate::sink::target::connect_primary_for;
use crate::source::{Gate, Intake, Offer};
use crate::telemetry::logging::RateLimit;
use crate::telemetry::metrics::metrics;

use super::window::Window;
use super::Fence;

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
pub(crate) enum Role {
    Active,
    Standby,
}

/// What `/health` shows of the pair (`data.ha`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PairView {
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

/// Where switch events go now: written when active, kept when standby.
struct Switch {
    role: Role,
    window: Window,
}

/// One agent's side of a pair.
pub(crate) struct Pair {
    config: HaConfig,
    redis: RedisConfig,
    /// The switch's streams (events, jobs): their fences are raised at takeover.
    streams: Vec<String>,
    fence: Arc<Fence>,
    intake: Arc<Intake>,
    gate: Mutex<Switch>,
    view: Mutex<PairView>,
}

impl Pair {
    pub(crate) fn new(
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
        metrics().ha.role.set(0);
        Arc::new(Pair {
            config,
            redis,
            streams,
            fence,
            intake,
            gate: Mutex::new(Switch { role: Role::Standby, window: Window::default() }),
            view: Mutex::new(view),
        })
    }

    pub(crate) fn view(&self) -> PairView {
        let mut view = self.view.lock().clone();
        let gate = self.gate.lock();
        view.role = gate.role;
        view.window_events = gate.window.len();
        view.window_seconds = (gate.window.seconds() * 1000.0).round() / 1000.0;
        view.window_bytes = gate.window.bytes();
        view
    }

    fn keys(&self) -> (String, String) {
        lease_keys(&self.config.group)
    }

    /// The lease thread: takes, renews and loses the lease until shutdown, then releases it.
    pub(crate) fn run(self: Arc<Self>, shutdown: Shutdown) {
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
        let mut window = gate.window.take();
        let events = window.len();
        for envelope in &mut window {
            envelope.maybe_written = true;
        }
        let receiver = self.intake.submit_acked(window);
        gate.role = Role::Active;
        drop(gate);
        metrics().ha.role.set(1);
        metrics().ha.takeovers.inc();
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
            metrics().ha.replayed.with_label_values(&["written"]).inc_by(written);
            metrics().ha.replayed.with_label_values(&["duplicate"]).inc_by(duplicate);
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
        metrics().ha.role.set(0);
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

impl Gate for Pair {
    /// A parsed switch event: into the pipeline when active, into the window when standby.
    fn offer(&self, envelope: Envelope, offer: Offer) {
        let mut gate = self.gate.lock();
        match gate.role {
            Role::Active => {
                drop(gate);
                self.intake.offer(envelope, offer);
            }
            Role::Standby => gate.window.push(envelope, self.config.replay_window, self.config.replay_max_bytes),
        }
    }
}
