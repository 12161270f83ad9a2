//! Redis beyond one server, with real servers on loopback: a Redis Cluster whose primary
//! holding the events stream is SIGKILLed mid-run (its replica takes over) and whose stream
//! slot is migrated mid-run; a Sentinel-managed primary SIGKILLed mid-run; `rediss://` with a
//! private CA and with mutual TLS; a Redis that could evict the streams. Each run that writes
//! reads the stream back and asserts exactly N entries, no duplicate
//! `(core_uuid, event_sequence)`, and per-call order.

mod support;

use std::time::{Duration, Instant};

use support::topology::*;
use support::*;

const N: u64 = 20_000;
const RATE: f64 = 4_000.0;

fn simulator(events: u64, rate: f64) -> Simulator {
    Simulator::start(SimulateOptions { rate: Some(rate), events: Some(events), ..Default::default() }).unwrap()
}

/// [`support::finish`], saying how many batches `WAIT` did not confirm in time.
fn finish_counting_waits(agent: &mut Agent, sim: &Simulator, port: u16, mut conn: impl FnMut() -> ::redis::Connection) {
    assert!(sim.wait_done(Duration::from_secs(90)), "simulator sent everything");
    let sent = sim.stats().events_sent;
    wait_until(Duration::from_secs(120), "every event in Redis", || xlen(&mut conn(), EVENTS) >= sent);
    let timeouts = metric_sum(port, "eslstream_redis_wait_timeouts_total", "");
    eprintln!("{sent} events written; {timeouts} batches not confirmed by WAIT in time, retried");
    finish(agent, sim, conn);
}

/// The agent's environment for `sim`, writing through `url` (plus the topology's variables).
fn env(sim: &Simulator, url: &str, spool: &tempfile::TempDir, port: u16) -> Vec<(String, String)> {
    let mut env = agent_env(sim.local_addr(), url, spool.path(), port);
    env.retain(|(k, _)| k != "HEALTH_CHECK_INTERVAL");
    env.push(("HEALTH_CHECK_INTERVAL".into(), "200ms".into()));
    env
}

#[test]
fn cluster_primary_killed_mid_run_with_wait_replicas() {
    let mut cluster = RedisCluster::start(3, 1);
    let sim = simulator(N, RATE);
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("redis://127.0.0.1:{}/", cluster.nodes[0].port());
    let seeds = cluster.seeds();
    let mut agent = start_agent(
        &env(&sim, &url, &spool, port),
        &[("REDIS_CLUSTER_NODES", &seeds), ("REDIS_WAIT_REPLICAS", "1"), ("REDIS_WAIT_TIMEOUT", "500ms")],
    );
    wait_sent(&sim, N / 4);
    let primary = cluster.primary_for(EVENTS);
    let replica = cluster.replica_of(primary);
    wait_replica_synced(&cluster.nodes[primary], &cluster.nodes[replica]);
    let killed_at = Instant::now();
    cluster.nodes[primary].kill();
    wait_until(Duration::from_secs(30), "the replica promoted", || is_primary(&cluster.nodes[replica]));
    let promoted = killed_at.elapsed();
    let mut new_primary = cluster.nodes[replica].connection();
    let at_promotion = xlen(&mut new_primary, EVENTS);
    let resumed = time_until(killed_at, Duration::from_secs(30), "writes on the new primary", || {
        xlen(&mut new_primary, EVENTS) > at_promotion
    });
    // Back as the new primary's replica: WAIT can be satisfied again.
    cluster.nodes[primary].restart();
    eprintln!("cluster failover: replica promoted {promoted:?} after the kill, writing resumed after {resumed:?}");
    finish_counting_waits(&mut agent, &sim, port, || cluster.connection_for(EVENTS));
    assert_eq!(cluster.primary_for(EVENTS), replica, "the stream stayed on the promoted replica");
}

#[test]
fn cluster_slot_of_the_stream_migrated_mid_run() {
    let cluster = RedisCluster::start(3, 0);
    let sim = simulator(N, RATE);
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("redis://127.0.0.1:{}/", cluster.nodes[0].port());
    let seeds = cluster.seeds();
    let mut agent = start_agent(&env(&sim, &url, &spool, port), &[("REDIS_CLUSTER_NODES", &seeds)]);
    wait_sent(&sim, N / 4);
    wait_until(Duration::from_secs(30), "entries in the stream", || {
        xlen(&mut cluster.connection_for(EVENTS), EVENTS) > 0
    });
    let from = cluster.primary_for(EVENTS);
    let to = (from + 1) % cluster.nodes.len();
    cluster.migrate_slot_of(EVENTS, to);
    assert_eq!(cluster.primary_for(EVENTS), to, "the slot moved");
    // The health monitor follows the stream to its new primary.
    let address = format!("127.0.0.1:{}", cluster.nodes[to].port());
    wait_until(Duration::from_secs(30), "/health naming the new primary", || {
        health_json(port).is_some_and(|h| {
            h["data"]["redis"]["primaries"].as_array().is_some_and(|p| p.iter().any(|a| a == address.as_str()))
        })
    });
    finish_counting_waits(&mut agent, &sim, port, || cluster.connection_for(EVENTS));
    let out = agent.output();
    assert!(out.contains("cluster slot map read again"), "the writers followed the move:\n{out}");
}

#[test]
fn sentinel_primary_killed_mid_run_with_wait_replicas() {
    let mut set = SentinelSet::start();
    let sim = simulator(N, RATE);
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let sentinels = set.addresses();
    let mut agent = start_agent(
        &env(&sim, "redis://127.0.0.1:1/", &spool, port),
        &[
            ("REDIS_SENTINELS", &sentinels),
            ("REDIS_SENTINEL_MASTER", MASTER_NAME),
            ("REDIS_WAIT_REPLICAS", "1"),
            ("REDIS_WAIT_TIMEOUT", "500ms"),
        ],
    );
    wait_sent(&sim, N / 4);
    wait_until(Duration::from_secs(30), "entries on the primary", || xlen(&mut set.primary.connection(), EVENTS) > 0);
    wait_replica_synced(&set.primary, &set.replica);
    let killed_at = Instant::now();
    set.primary.kill();
    // What the replica holds once its primary is gone: every entry past it is the agent's, on
    // the new primary (the agent may find the new primary before this test sees the promotion,
    // so the count is taken here, not then).
    let at_kill = xlen(&mut set.replica.connection(), EVENTS);
    let replica_port = set.replica.port();
    wait_until(Duration::from_secs(60), "the sentinels naming the replica", || {
        set.named_primary_port() == Some(replica_port)
    });
    let promoted = killed_at.elapsed();
    // A connection made after the promotion (the sentinels disconnect the clients of the
    // replica they promote).
    let mut new_primary = set.replica.connection();
    let resumed = time_until(killed_at, Duration::from_secs(60), "writes on the new primary", || {
        xlen(&mut new_primary, EVENTS) > at_kill
    });
    // Alone, the new primary confirms nothing: /health says so.
    let warned =
        |h: &serde_json::Value| h["data"]["redis"]["warnings"].to_string().contains("0 replicas are connected");
    wait_until(Duration::from_secs(30), "/health warning that no replica can confirm", || {
        health_json(port).is_some_and(|h| warned(&h))
    });
    // The sentinels make the old primary a replica of the new one: WAIT can be satisfied.
    set.primary.restart();
    let address = format!("127.0.0.1:{replica_port}");
    wait_until(Duration::from_secs(30), "/health naming the new primary", || {
        health_json(port).is_some_and(|h| h["data"]["redis"]["primaries"] == serde_json::json!([address]))
    });
    eprintln!("sentinel failover: replica promoted {promoted:?} after the kill, writing resumed after {resumed:?}");
    wait_until(Duration::from_secs(60), "the warning gone once the old primary is a replica", || {
        health_json(port).is_some_and(|h| !warned(&h))
    });
    finish_counting_waits(&mut agent, &sim, port, || set.replica.connection());
    let out = agent.output();
    assert!(out.contains(&format!("127.0.0.1:{replica_port}")), "the log names the new primary:\n{out}");
}

/// A replica that stops answering: no batch is confirmed, so none counts as written (each
/// `WAIT` that times out is counted and its batch retried); once it is back, every event is
/// there exactly once.
#[test]
fn wait_replicas_holds_batches_until_a_replica_confirms() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
    wait_replica_synced(&primary, &replica);
    let sim = simulator(N / 2, RATE);
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = start_agent(
        &env(&sim, &primary.url(), &spool, port),
        &[("REDIS_WAIT_REPLICAS", "1"), ("REDIS_WAIT_TIMEOUT", "200ms")],
    );
    wait_sent(&sim, N / 8);
    let written = || metric_sum(port, "eslstream_events_written_total", "");
    replica.pause();
    std::thread::sleep(Duration::from_millis(500)); // batches already confirmed settle
    let before = written();
    wait_until(Duration::from_secs(30), "WAIT timeouts counted", || {
        metric_sum(port, "eslstream_redis_wait_timeouts_total", "") >= 3.0
    });
    assert_eq!(written(), before, "nothing counts as written while no replica confirms");
    replica.resume();
    assert!(sim.wait_done(Duration::from_secs(90)), "simulator sent everything");
    let sent = sim.stats().events_sent;
    wait_until(Duration::from_secs(60), "every event in Redis", || xlen(&mut primary.connection(), EVENTS) >= sent);
    // Each retried batch found its entries there: they count as written, not as duplicates.
    assert_eq!(metric_sum(port, "eslstream_duplicates_suppressed_total", ""), 0.0);
    finish_counting_waits(&mut agent, &sim, port, || primary.connection());
}

#[test]
fn tls_with_a_private_ca() {
    let ca = TestCa::new();
    let (redis, url) = tls_redis(&ca, false);
    let ca_cert = ca.path("ca.crt");

    let sim = simulator(2_000, 2_000.0);
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = start_agent(&env(&sim, &url, &spool, port), &[("REDIS_TLS_CA_CERT", &ca_cert)]);
    finish_counting_waits(&mut agent, &sim, port, || redis.connection());

    // Without the CA the server's certificate is unknown: said in the log and in /health.
    let sim = simulator(100, 1_000.0);
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let agent = start_agent(&env(&sim, &url, &spool, port), &[]);
    wait_until(Duration::from_secs(30), "/health naming the certificate problem", || {
        health_json(port).is_some_and(|h| h.to_string().contains("set REDIS_TLS_CA_CERT"))
    });
    wait_until(Duration::from_secs(10), "the log naming the certificate problem", || {
        agent.output().contains("not signed by a known CA; set REDIS_TLS_CA_CERT")
    });
}

#[test]
fn mutual_tls_needs_the_client_certificate() {
    let ca = TestCa::new();
    let (redis, url) = tls_redis(&ca, true);
    let (ca_cert, cert, key) = (ca.path("ca.crt"), ca.path("client.crt"), ca.path("client.key"));

    let sim = simulator(2_000, 2_000.0);
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = start_agent(
        &env(&sim, &url, &spool, port),
        &[("REDIS_TLS_CA_CERT", &ca_cert), ("REDIS_TLS_CERT", &cert), ("REDIS_TLS_KEY", &key)],
    );
    finish_counting_waits(&mut agent, &sim, port, || redis.connection());
    let written = xlen(&mut redis.connection(), EVENTS);

    let sim = simulator(100, 1_000.0);
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let agent = start_agent(&env(&sim, &url, &spool, port), &[("REDIS_TLS_CA_CERT", &ca_cert)]);
    wait_until(Duration::from_secs(30), "/health naming the missing client certificate", || {
        health_json(port).is_some_and(|h| h.to_string().contains("set REDIS_TLS_CERT and REDIS_TLS_KEY"))
    });
    assert!(agent.output().contains("requires a client certificate"), "{}", agent.output());
    assert_eq!(xlen(&mut redis.connection(), EVENTS), written, "nothing written without the client certificate");
}

#[test]
fn a_missing_tls_file_is_a_configuration_error() {
    let mut agent = Agent::start(
        &[],
        &[("REDIS_URL", "rediss://127.0.0.1:6380/"), ("REDIS_TLS_CA_CERT", "/nonexistent/eslstream-ca.pem")],
    );
    assert_eq!(agent.wait_timeout(Duration::from_secs(10)), Some(2), "exit 2 for a configuration error");
    let out = agent.output();
    assert!(out.contains("REDIS_TLS_CA_CERT") && out.contains("/nonexistent/eslstream-ca.pem"), "{out}");
}

#[test]
fn a_redis_that_may_evict_is_reported() {
    let redis = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let sim = simulator(500, 1_000.0);
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = start_agent(&env(&sim, &redis.url(), &spool, port), &[]);
    wait_until(Duration::from_secs(30), "/health warning about the eviction policy", || {
        health_json(port).is_some_and(|h| {
            h["data"]["redis"]["warnings"].as_array().is_some_and(|w| {
                w.iter().any(|w| w.as_str().is_some_and(|w| w.contains("maxmemory-policy is allkeys-lru")))
            })
        })
    });
    assert!(agent.output().contains("maxmemory-policy is allkeys-lru"), "{}", agent.output());
    // A warning, not a refusal: everything is still written.
    finish_counting_waits(&mut agent, &sim, port, || redis.connection());
}
