//! Hot-standby pairs end to end: two agent processes beside one simulated switch that sends
//! every event to both (as FreeSWITCH does), a real Redis, and the faults a pair must survive.
//! Every scenario sends 30,000 events at 3,000/s and ends with exactly that many entries, no
//! `(core_uuid, event_sequence)` twice, each call's events in order.

mod support;

use std::time::{Duration, Instant};

use support::*;

const N: u64 = 30_000;
const RATE: f64 = 3_000.0;

/// One agent of the pair: its health port, its spool, and the running process.
struct Member {
    id: &'static str,
    port: u16,
    spool: tempfile::TempDir,
    agent: Option<Agent>,
    /// Earlier runs of this member, kept so that a failure prints their output too.
    earlier: Vec<Agent>,
}

impl Member {
    fn new(id: &'static str) -> Member {
        Member { id, port: free_port(), spool: tempfile::tempdir().unwrap(), agent: None, earlier: Vec::new() }
    }

    fn env(&self, sim: &Simulator, redis: &RedisServer) -> Vec<(String, String)> {
        let mut env = agent_env(sim.local_addr(), &redis.url(), self.spool.path(), self.port);
        for (k, v) in [
            ("HA_GROUP", "sw1"),
            ("HA_AGENT_ID", self.id),
            ("HA_LEASE_TTL", "2s"),
            ("HEALTH_CHECK_INTERVAL", "200ms"),
            ("SHUTDOWN_TIMEOUT", "5s"),
        ] {
            env.retain(|(name, _)| name != k);
            env.push((k.into(), v.into()));
        }
        env
    }

    /// Starts the agent and waits until it reads the switch in the expected role.
    fn start(&mut self, sim: &Simulator, redis: &RedisServer, role: &str) {
        if let Some(earlier) = self.agent.replace(start_agent(&self.env(sim, redis), &[])) {
            self.earlier.push(earlier);
        }
        let port = self.port;
        wait_until(Duration::from_secs(40), &format!("{} to be {role} and connected", self.id), || {
            health_json(port).is_some_and(|h| h["data"]["ha"]["role"] == role && h["data"]["esl"]["connected"] == true)
        });
    }

    fn role(&self) -> String {
        health_json(self.port).and_then(|h| h["data"]["ha"]["role"].as_str().map(str::to_owned)).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.agent.as_ref().expect("running").pid()
    }

    fn kill(&mut self) {
        if let Some(agent) = self.agent.as_mut() {
            agent.kill();
        }
    }

    fn stop(&mut self) -> i32 {
        self.agent.as_mut().expect("running").stop(Duration::from_secs(15))
    }
}

/// A switch for a pair: it starts sending once both agents listen.
fn switch() -> Simulator {
    Simulator::start(SimulateOptions { events: Some(N), rate: Some(RATE), min_listeners: 2, ..Default::default() })
        .unwrap()
}

/// A, active, and B, standby, both reading `sim`.
fn pair(sim: &Simulator, redis: &RedisServer) -> (Member, Member) {
    let (mut a, mut b) = (Member::new("agent-a"), Member::new("agent-b"));
    a.start(sim, redis, "active");
    b.start(sim, redis, "standby");
    (a, b)
}

/// Waits for `who` to become active; returns how long that took from `since`.
fn wait_active(who: &Member, since: Instant) -> Duration {
    wait_until(Duration::from_secs(40), &format!("{} to take over", who.id), || who.role() == "active");
    since.elapsed()
}

/// Every event the switch sent is in Redis once, in per-call order.
fn assert_all_written(sim: &Simulator, redis: &RedisServer) {
    assert!(sim.wait_done(Duration::from_secs(90)), "the switch finished sending");
    let sent = sim.stats().events_sent;
    let mut conn = redis.connection();
    let deadline = Instant::now() + Duration::from_secs(60);
    while xlen(&mut conn, EVENTS) < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1)); // anything more would be a duplicate
    assert_exactly_once_in_order(&read_stream(&mut conn, EVENTS), sent);
}

#[test]
fn the_active_killed_mid_run_and_restarted_later_as_standby() {
    let redis = RedisServer::start();
    let sim = switch();
    let (mut a, b) = pair(&sim, &redis);
    wait_sent(&sim, N / 10);
    // A standby connected to the switch and to Redis is healthy, and holds a window.
    let (status, body) = http(b.port, "/health").unwrap();
    assert_eq!(status, 200, "{body}");
    let standby = health_json(b.port).unwrap();
    assert_eq!(standby["data"]["ha"]["lease_holder"].as_str().map(|h| h.starts_with("agent-a ")), Some(true));
    assert!(standby["data"]["ha"]["window_events"].as_u64() > Some(0), "{standby}");
    wait_sent(&sim, N / 3);
    let killed = Instant::now();
    a.kill();
    let took = wait_active(&b, killed);
    eprintln!("SIGKILL: the standby took over {took:?} after the active was killed");
    wait_sent(&sim, N * 2 / 3);
    a.start(&sim, &redis, "standby");
    assert_all_written(&sim, &redis);
    assert_eq!(metric_sum(b.port, "eslstream_ha_takeovers_total", ""), 1.0);
    assert!(
        metric_sum(b.port, "eslstream_ha_replayed_events_total", "outcome=\"written\"") > 0.0,
        "the gap was filled"
    );
    assert_eq!(a.role(), "standby");
    assert_eq!(metric_sum(a.port, "eslstream_ha_role", ""), 0.0);
    assert_eq!(metric_sum(b.port, "eslstream_ha_role", ""), 1.0);
}

#[test]
fn the_active_stopped_with_sigterm_mid_run_hands_over_at_once() {
    let redis = RedisServer::start();
    let sim = switch();
    let (mut a, b) = pair(&sim, &redis);
    wait_sent(&sim, N / 3);
    let stopped = Instant::now();
    a.agent.as_ref().unwrap().term();
    let took = wait_active(&b, stopped);
    assert_eq!(a.stop(), 0);
    eprintln!("SIGTERM: the standby took over {took:?} after the active was asked to stop");
    assert_all_written(&sim, &redis);
    assert!(a.agent.as_ref().unwrap().output().contains("released the pair's lease"));
}

#[test]
fn an_active_paused_past_its_lease_is_fenced_when_it_wakes() {
    let redis = RedisServer::start();
    let sim = switch();
    let (a, b) = pair(&sim, &redis);
    wait_sent(&sim, N / 3);
    let paused = Instant::now();
    signal(a.pid(), libc::SIGSTOP);
    let took = wait_active(&b, paused);
    std::thread::sleep(Duration::from_secs(6).saturating_sub(paused.elapsed()));
    signal(a.pid(), libc::SIGCONT);
    wait_until(Duration::from_secs(10), "the woken agent to step down", || a.role() == "standby");
    eprintln!("SIGSTOP for 6 s: the standby took over {took:?} after the pause began");
    assert_all_written(&sim, &redis);
    let out = a.agent.as_ref().unwrap().output();
    assert!(out.contains("standby: this agent no longer writes"), "{out}");
}

#[test]
fn redis_restarted_while_the_pair_runs() {
    let mut redis = RedisServer::start();
    let sim = switch();
    let (a, b) = pair(&sim, &redis);
    wait_sent(&sim, N / 3);
    redis.kill();
    std::thread::sleep(Duration::from_secs(2));
    redis.restart();
    assert_all_written(&sim, &redis);
    let roles = [a.role(), b.role()];
    assert!(roles.contains(&"active".to_owned()) && roles.contains(&"standby".to_owned()), "{roles:?}");
}

#[test]
fn a_rolling_upgrade_twice_loses_nothing() {
    let redis = RedisServer::start();
    let sim = switch();
    let (mut a, mut b) = pair(&sim, &redis);
    wait_sent(&sim, N / 10);
    let mut takeovers = Vec::new();
    for _ in 0..2 {
        // The standby first, then the active: the restarted standby covers the hand-over.
        let (active, standby) = if a.role() == "active" { (&mut a, &mut b) } else { (&mut b, &mut a) };
        assert_eq!(standby.stop(), 0);
        standby.start(&sim, &redis, "standby");
        let stopped = Instant::now();
        active.agent.as_ref().unwrap().term();
        takeovers.push(wait_active(standby, stopped));
        assert_eq!(active.stop(), 0);
        // Behind the switch or not, it read what was made before the stop: B did not have it
        // all (B subscribed just now).
        let out = active.agent.as_ref().unwrap().output();
        assert!(out.contains("stopping: read"), "{out}");
        active.start(&sim, &redis, "standby");
    }
    eprintln!("rolling upgrade: takeovers after SIGTERM of the active: {takeovers:?}");
    assert_all_written(&sim, &redis);
}
