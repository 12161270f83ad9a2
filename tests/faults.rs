//! Failure tests that count: each sends N events at a steady rate from a fake event socket
//! while something breaks (Redis killed, paused, out of memory once or on and off, its
//! connection cut; the agent SIGKILLed, also in the middle of an outage, or stopped while
//! behind the switch; the event socket cut mid-frame; the spool full, corrupt, or on a disk
//! that fills up; a Redis user that may not write), then reads the stream back and asserts
//! exactly N entries (or N minus the counted drops), no duplicate `(core_uuid,
//! event_sequence)`, and per-call order.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;

const N: u64 = 20_000;
const RATE: f64 = 4_000.0;

fn simulator(fault: Option<Fault>) -> Simulator {
    Simulator::start(SimulateOptions { rate: Some(RATE), events: Some(N), fault, ..Default::default() }).unwrap()
}

/// Waits until the agent holds nothing in memory and has spooled events.
fn wait_all_spooled(port: u16) {
    wait_until(Duration::from_secs(60), "memory empty, events in the spool", || {
        health_json(port)
            .is_some_and(|h| h["data"]["queue_depth"] == 0 && h["data"]["spool"]["bytes"].as_u64() > Some(0))
    });
}

fn spool_env(sim: &Simulator, redis: &RedisServer, spool: &Path, port: u16) -> Vec<(String, String)> {
    let mut env = agent_env(sim.local_addr(), &redis.url(), spool, port);
    for (k, v) in [("BUFFER_SIZE", "2000"), ("WRITER_RETRY_TTL", "300ms"), ("HEALTH_CHECK_INTERVAL", "200ms")] {
        env.retain(|(name, _)| name != k);
        env.push((k.into(), v.into()));
    }
    env
}

/// A Redis that is down (restart it later), a simulator, a spool directory and a health port.
fn redis_down() -> (RedisServer, Simulator, tempfile::TempDir, u16) {
    let mut redis = RedisServer::start();
    redis.kill();
    (redis, simulator(None), tempfile::tempdir().unwrap(), free_port())
}

#[test]
fn redis_killed_for_five_seconds() {
    let mut redis = RedisServer::start();
    let sim = simulator(None);
    let spool = tempfile::tempdir().unwrap();
    let mut agent = start_agent(&agent_env(sim.local_addr(), &redis.url(), spool.path(), free_port()), &[]);
    wait_sent(&sim, N / 4);
    redis.kill();
    std::thread::sleep(Duration::from_secs(5));
    redis.restart();
    finish(&mut agent, &sim, || redis.connection());
}

#[test]
fn redis_paused_with_client_pause_write() {
    let redis = RedisServer::start();
    let sim = simulator(None);
    let spool = tempfile::tempdir().unwrap();
    let mut agent = start_agent(&agent_env(sim.local_addr(), &redis.url(), spool.path(), free_port()), &[]);
    wait_sent(&sim, N / 4);
    redis.client_pause_write(3000);
    finish(&mut agent, &sim, || redis.connection());
}

#[test]
fn redis_connection_cut_mid_pipeline_repeatedly() {
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", redis.port()).parse().unwrap());
    let sim = simulator(None);
    let spool = tempfile::tempdir().unwrap();
    let mut agent = start_agent(&agent_env(sim.local_addr(), &proxy.redis_url(), spool.path(), free_port()), &[]);
    wait_sent(&sim, 1000);
    for round in 0..12 {
        std::thread::sleep(Duration::from_millis(300));
        if round % 2 == 0 {
            proxy.cut_all();
        } else {
            proxy.cut_after_bytes(40_000); // inside a pipelined batch
        }
    }
    assert!(proxy.accepted() > 4, "the agent reconnected after the cuts");
    finish(&mut agent, &sim, || redis.connection());
}

/// At a low rate the reader writes each event itself (its lane is idle). Redis then stops
/// answering, like a partition: the reader gives up on the reply within its short timeout and
/// hands the event to the writer's retries, so it keeps reading the switch meanwhile, and
/// every event still arrives exactly once, in order.
#[test]
fn redis_stalls_while_the_reader_writes_events_itself() {
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", redis.port()).parse().unwrap());
    let sim =
        Simulator::start(SimulateOptions { rate: Some(500.0), events: Some(3000), ..Default::default() }).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = start_agent(&agent_env(sim.local_addr(), &proxy.redis_url(), spool.path(), port), &[]);
    wait_until(Duration::from_secs(30), "the reader writing events itself", || {
        metric_sum(port, "eslstream_writes_now_total", "") >= 100.0
    });
    let received = || metric_sum(port, "eslstream_events_received_total", "");
    proxy.set_blocked(true);
    let before = received();
    std::thread::sleep(Duration::from_secs(2));
    let during = received() - before;
    proxy.set_blocked(false);
    // 1,000 events were sent in those two seconds; a reader stuck on Redis reads none.
    assert!(during >= 700.0, "the reader kept reading while Redis stalled: {during} events");
    // The attempt under way when Redis stalled may be a writer's, whose timeout (longer than
    // the reader's) can end just after the stall does: its failure is counted then.
    wait_until(Duration::from_secs(10), "the stalled write counted as retried", || {
        metric_sum(port, "eslstream_write_retries_total", "") >= 1.0
    });
    finish(&mut agent, &sim, || redis.connection());
}

/// At a low rate the reader writes each event itself. Its connection is cut, answers held back,
/// Redis stopped and killed, over and over: what was not acknowledged goes to the writer's
/// retries (marked as maybe written) ahead of anything newer, and every event arrives exactly
/// once, in order; afterwards the reader writes events itself again.
#[test]
fn the_readers_own_writes_survive_cuts_stalls_and_a_kill() {
    let mut redis = RedisServer::start();
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", redis.port()).parse().unwrap());
    let sim =
        Simulator::start(SimulateOptions { rate: Some(800.0), events: Some(8000), ..Default::default() }).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = start_agent(&agent_env(sim.local_addr(), &proxy.redis_url(), spool.path(), port), &[]);
    let writes_now = || metric_sum(port, "eslstream_writes_now_total", "");
    wait_until(Duration::from_secs(30), "the reader writing events itself", || writes_now() >= 200.0);
    for round in 0..8 {
        std::thread::sleep(Duration::from_millis(250));
        match round % 4 {
            0 => proxy.cut_all(),
            1 => {
                proxy.set_blocked(true); // answers held back past the 100 ms reply timeout
                std::thread::sleep(Duration::from_millis(300));
                proxy.set_blocked(false);
            }
            2 => {
                redis.pause();
                std::thread::sleep(Duration::from_millis(300));
                redis.resume();
            }
            _ => {
                redis.kill();
                std::thread::sleep(Duration::from_millis(200));
                redis.restart();
            }
        }
    }
    let before = writes_now();
    wait_until(Duration::from_secs(30), "the reader writing events itself again", || writes_now() >= before + 100.0);
    assert!(metric_sum(port, "eslstream_write_retries_total", "") >= 4.0, "the failed writes were retried");
    finish(&mut agent, &sim, || redis.connection());
}

#[test]
fn redis_out_of_memory_until_the_limit_is_raised() {
    let redis = RedisServer::start();
    let sim = simulator(None);
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = start_agent(&agent_env(sim.local_addr(), &redis.url(), spool.path(), port), &[]);
    wait_sent(&sim, N / 4);
    let info = redis.cli(&["INFO", "memory"]);
    let used: u64 =
        info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).unwrap();
    redis.set_maxmemory(used + (1 << 20));
    std::thread::sleep(Duration::from_secs(4));
    assert!(metric_sum(port, "eslstream_write_retries_total", "") > 0.0, "writes were refused and retried");
    redis.set_maxmemory(0);
    finish(&mut agent, &sim, || redis.connection());
}

#[test]
fn agent_sigkilled_while_draining_the_spool() {
    let (mut redis, sim, spool, port) = redis_down();
    let env = spool_env(&sim, &redis, spool.path(), port);
    let mut agent = start_agent(&env, &[]);
    assert!(sim.wait_done(Duration::from_secs(60)));
    wait_all_spooled(port);
    redis.restart();
    let mut conn = redis.connection();
    wait_until(Duration::from_secs(60), "draining started", || xlen(&mut conn, EVENTS) >= N / 4);
    agent.kill();
    let written_before = xlen(&mut conn, EVENTS);
    assert!(written_before < sim.stats().events_sent, "killed while draining");
    let port2 = free_port();
    let port2 = port2.to_string();
    let mut agent = start_agent(&env, &[("HEALTH_PORT", &port2)]);
    finish(&mut agent, &sim, || redis.connection());
}

#[test]
fn event_socket_dropped_mid_frame_repeatedly() {
    let redis = RedisServer::start();
    let sim = simulator(Some(Fault { after_events: 3000, mid_frame: true, repeat: true }));
    let spool = tempfile::tempdir().unwrap();
    let mut agent = start_agent(&agent_env(sim.local_addr(), &redis.url(), spool.path(), free_port()), &[]);
    assert!(sim.wait_done(Duration::from_secs(90)));
    assert!(sim.stats().total_connections >= 6, "the agent reconnected after every cut");
    finish(&mut agent, &sim, || redis.connection());
}

#[test]
fn full_spool_drops_exactly_what_it_counts() {
    let (mut redis, sim, spool, port) = redis_down();
    let mut agent = start_agent(&spool_env(&sim, &redis, spool.path(), port), &[("SPOOL_MAX_BYTES", "4MiB")]);
    assert!(sim.wait_done(Duration::from_secs(60)));
    let sent = sim.stats().events_sent;
    wait_until(Duration::from_secs(30), "drops counted", || {
        metric_sum(port, "eslstream_events_dropped_total", "spool_full") > 0.0
    });
    // Every event read off the socket and placed (or counted as dropped) before counting.
    wait_until(Duration::from_secs(30), "every event read", || {
        metric_sum(port, "eslstream_events_received_total", "esl") >= sent as f64
    });
    std::thread::sleep(Duration::from_secs(1));
    let h = health_json(port).expect("the agent still answers /health");
    assert_ne!(h["status"], "healthy", "{h}");
    assert!(agent.is_running());
    redis.restart();
    let mut conn = redis.connection();
    let dropped = metric_sum(port, "eslstream_events_dropped_total", "") as u64;
    assert_eq!(h["data"]["dropped"]["total"].as_u64(), Some(dropped));
    assert!(dropped > 0 && dropped < sent, "some dropped ({dropped} of {sent})");
    wait_until(Duration::from_secs(60), "everything spooled is written", || xlen(&mut conn, EVENTS) >= sent - dropped);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(agent.stop(Duration::from_secs(15)), 0);
    assert_exactly_once_in_order(&read_stream(&mut conn, EVENTS), sent - dropped);
}

fn newest_segment(spool: &Path) -> PathBuf {
    let mut segments: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(spool)
        .unwrap()
        .filter_map(|d| d.ok())
        .filter(|d| d.file_name().to_string_lossy().starts_with("lane-"))
        .flat_map(|lane| std::fs::read_dir(lane.path()).unwrap().filter_map(|d| d.ok()))
        .filter(|f| f.path().extension().is_some_and(|x| x == "seg"))
        .map(|f| (f.metadata().unwrap().modified().unwrap(), f.path()))
        .collect();
    segments.sort();
    segments.pop().expect("a spool segment").1
}

#[test]
fn corrupt_spool_tail_is_truncated_and_the_rest_delivered() {
    let (mut redis, sim, spool, port) = redis_down();
    let env = spool_env(&sim, &redis, spool.path(), port);
    let mut agent = start_agent(&env, &[("SHUTDOWN_TIMEOUT", "1s")]);
    assert!(sim.wait_done(Duration::from_secs(60)));
    wait_all_spooled(port);
    assert_eq!(agent.stop(Duration::from_secs(15)), 0, "SIGTERM with Redis down still exits 0");
    // A torn record: a header promising 4096 bytes, and only a few of them.
    let segment = newest_segment(spool.path());
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[0, 16, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
    std::fs::write(&segment, bytes).unwrap();
    redis.restart();
    let port2 = free_port().to_string();
    let mut agent = start_agent(&env, &[("HEALTH_PORT", &port2)]);
    let sent = sim.stats().events_sent;
    let mut conn = redis.connection();
    wait_until(Duration::from_secs(60), "spooled events delivered", || xlen(&mut conn, EVENTS) >= sent);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(agent.stop(Duration::from_secs(15)), 0);
    assert!(agent.output().contains("truncated"), "the repair is logged");
    assert_exactly_once_in_order(&read_stream(&mut conn, EVENTS), sent);
}

/// A real small file system for the spool: a tmpfs of `size` mounted on a temporary directory
/// (root is needed, as CI has); unmounted when dropped. Fails the test, with the reason, when
/// it cannot be made: a disk-full test that skipped would prove nothing.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::Builder::new().prefix("eslstream-small-disk-").tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs for the disk-full test (it needs root, as CI runs): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn failing_reasons(h: &serde_json::Value) -> Vec<String> {
    let checks = h["data"]["checks"].as_array().cloned().unwrap_or_default();
    checks.iter().filter_map(|c| c["reason"].as_str().map(str::to_owned)).collect()
}

#[test]
fn disk_full_under_the_spool_is_a_state_and_lanes_never_stall() {
    let disk = SmallDisk::mount("2m");
    let (mut redis, sim, _spool, port) = redis_down();
    let mut agent = start_agent(&spool_env(&sim, &redis, disk.path(), port), &[]);
    // Redis down, events flowing: the spool fills the disk, memory fills, the rest is dropped.
    wait_until(Duration::from_secs(30), "/health names the full disk", || {
        health_json(port)
            .is_some_and(|h| failing_reasons(&h).iter().any(|r| r.contains("spool: No space left on device")))
    });
    wait_sent(&sim, N / 2);
    redis.restart();
    let sent_at_restart = sim.stats().events_sent;
    assert!(sim.wait_done(Duration::from_secs(60)), "simulator sent everything");
    let sent = sim.stats().events_sent;
    let mut conn = redis.connection();
    // received = written + dropped + held, exactly, and nothing stays held.
    let accounted = |conn: &mut ::redis::Connection| {
        let dropped = metric_sum(port, "eslstream_events_dropped_total", "") as u64;
        (xlen(conn, EVENTS), dropped)
    };
    wait_until(Duration::from_secs(60), "every event written or counted as dropped", || {
        let (written, dropped) = accounted(&mut conn);
        written + dropped >= sent
    });
    std::thread::sleep(Duration::from_millis(500));
    let received = metric_sum(port, "eslstream_events_received_total", "esl") as u64;
    let (written, dropped) = accounted(&mut conn);
    println!("disk full: sent {sent}, received {received}, written {written}, dropped {dropped}, held 0");
    assert_eq!(received, sent, "every event was read off the socket");
    assert_eq!(written + dropped, received, "received = written + dropped (nothing held any more)");
    assert!(dropped > 0, "a 2 MiB disk cannot hold the outage");
    assert!(written >= sent - sent_at_restart, "everything sent after Redis came back was written");
    let h = health_json(port).expect("health");
    assert_eq!(h["data"]["dropped"]["total"].as_u64(), Some(dropped), "{h}");
    assert_eq!(agent.stop(Duration::from_secs(15)), 0);
    let log = agent.output();
    assert_exactly_once_in_order(&read_stream(&mut conn, EVENTS), written);
    let lines = log.lines().count();
    let spool_lines = log.lines().filter(|l| l.contains("spool")).count();
    println!("disk full: {lines} log lines, {spool_lines} about the spool");
    assert!(log.contains("cannot write to the spool"), "the failing state is logged");
    assert!(log.contains("the spool can write again"), "so is the recovery");
    assert!(lines < 200, "one line per state change, not one per event ({lines} lines):\n{log}");
}

#[test]
fn sigkill_during_an_outage_loses_under_one_percent() {
    const RATE: f64 = 3_000.0;
    let mut redis = RedisServer::start();
    let sim = Simulator::start(SimulateOptions { rate: Some(RATE), events: Some(N), ..Default::default() }).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let env = agent_env(sim.local_addr(), &redis.url(), spool.path(), free_port());
    let mut agent = start_agent(&env, &[]);
    wait_sent(&sim, N / 4);
    redis.kill();
    let sent_at_outage = sim.stats().events_sent;
    wait_sent(&sim, sent_at_outage + 9_000); // three seconds of outage
    agent.kill();
    let outage = sim.stats().events_sent - sent_at_outage;
    redis.restart();
    let port2 = free_port().to_string();
    let mut agent = start_agent(&env, &[("HEALTH_PORT", &port2)]);
    assert!(sim.wait_done(Duration::from_secs(60)), "simulator sent everything");
    let sent = sim.stats().events_sent;
    let mut conn = redis.connection();
    // Settled: the count stops moving once the spool and memory are drained.
    let mut last = u64::MAX;
    wait_until(Duration::from_secs(60), "the stream stops growing", || {
        let now = xlen(&mut conn, EVENTS);
        let settled = now == last && now > 0;
        last = now;
        std::thread::sleep(Duration::from_millis(500));
        settled
    });
    assert_eq!(agent.stop(Duration::from_secs(15)), 0);
    let entries = read_stream(&mut conn, EVENTS);
    let lost = sent - entries.len() as u64;
    println!(
        "SIGKILL in an outage: {outage} events sent during the outage, {lost} lost ({:.3}%)",
        lost as f64 * 100.0 / outage as f64
    );
    assert!(lost * 100 < outage, "lost {lost} of the {outage} sent during the outage");
    assert_exactly_once(&entries, entries.len() as u64);
}

#[test]
fn a_redis_user_that_may_not_write_is_unhealthy_named_and_recovers() {
    let redis = RedisServer::start();
    redis.cli(&["ACL", "SETUSER", "narrow", "on", ">pw", "~*", "+@all", "-bitfield", "-setbit"]);
    let url = format!("redis://narrow:pw@127.0.0.1:{}", redis.port());
    let sim =
        Simulator::start(SimulateOptions { rate: Some(1000.0), events: Some(3000), ..Default::default() }).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent =
        start_agent(&agent_env(sim.local_addr(), &url, spool.path(), port), &[("HEALTH_CHECK_INTERVAL", "200ms")]);
    wait_until(Duration::from_secs(20), "/health unhealthy, naming BITFIELD", || {
        health_json(port).is_some_and(|h| {
            h["status"] == "unhealthy"
                && failing_reasons(&h).iter().any(|r| r.contains("BITFIELD") && r.contains("+bitfield"))
        })
    });
    let mut conn = redis.connection();
    assert_eq!(xlen(&mut conn, EVENTS), 0, "nothing can be written without BITFIELD");
    wait_until(Duration::from_secs(20), "/health says nothing is written", || {
        health_json(port).is_some_and(|h| failing_reasons(&h).iter().any(|r| r.contains("none was written")))
    });
    // The administrator grants it: the agent notices and writes everything, once, in order.
    redis.cli(&["ACL", "SETUSER", "narrow", "+bitfield", "+setbit"]);
    assert!(sim.wait_done(Duration::from_secs(30)));
    let sent = sim.stats().events_sent;
    wait_until(Duration::from_secs(60), "every event in Redis", || xlen(&mut conn, EVENTS) >= sent);
    wait_until(Duration::from_secs(20), "the permissions check passes", || {
        health_json(port).is_some_and(|h| !failing_reasons(&h).iter().any(|r| r.contains("may not run")))
    });
    assert_eq!(agent.stop(Duration::from_secs(15)), 0);
    assert!(agent.output().contains("may not run BITFIELD"), "one error names the command");
    assert_exactly_once_in_order(&read_stream(&mut conn, EVENTS), sent);
}

#[test]
fn keys_limited_to_the_stream_names_are_named_with_the_rule_that_grants_them() {
    let redis = RedisServer::start();
    redis.cli(&[
        "ACL",
        "SETUSER",
        "streams-only",
        "on",
        ">pw",
        "~freeswitch:telephony:events",
        "~freeswitch:telephony:background-jobs",
        "+@all",
    ]);
    let url = format!("redis://streams-only:pw@127.0.0.1:{}", redis.port());
    let sim = Simulator::start(SimulateOptions { rate: Some(100.0), events: Some(100), ..Default::default() }).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent =
        start_agent(&agent_env(sim.local_addr(), &url, spool.path(), port), &[("HEALTH_CHECK_INTERVAL", "200ms")]);
    wait_until(Duration::from_secs(20), "/health names the dedup keys' pattern", || {
        health_json(port)
            .is_some_and(|h| failing_reasons(&h).iter().any(|r| r.contains("~{freeswitch:telephony:events}*")))
    });
    agent.kill();
}

#[test]
fn a_value_that_is_not_utf8_is_logged_once_with_its_event() {
    let redis = RedisServer::start();
    let sim = Simulator::start(SimulateOptions { events: Some(0), ..Default::default() }).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let mut agent = start_agent(&agent_env(sim.local_addr(), &redis.url(), spool.path(), free_port()), &[]);
    let mut frames = Vec::new();
    for seq in 1..=3u64 {
        let body = format!("Event-Name: CUSTOM\nEvent-Subclass: probe%3A%3Alossy\nCore-UUID: lossy-core\nEvent-Sequence: {seq}\nUnique-ID: call-lossy\nCaller-Name: %FF%FEx\n\n");
        let mut frame = Vec::new();
        eslstream::esl::encode::event_frame("text/event-plain", body.as_bytes(), &mut frame);
        frames.push(frame);
    }
    std::thread::sleep(Duration::from_millis(500)); // connected and subscribed
    sim.push_frames(frames);
    let mut conn = redis.connection();
    wait_until(Duration::from_secs(20), "the events written", || xlen(&mut conn, EVENTS) >= 3);
    assert_eq!(agent.stop(Duration::from_secs(15)), 0);
    let log = agent.output();
    let lossy: Vec<&str> = log.lines().filter(|l| l.contains("not UTF-8")).collect();
    assert_eq!(lossy.len(), 1, "logged once (rate-limited), not per event:\n{log}");
    assert!(lossy[0].contains("lossy-core"), "with its key: {}", lossy[0]);
}

#[test]
fn the_readme_minimal_acl_rule_is_enough() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let rule = readme.lines().find(|l| l.starts_with("ACL SETUSER eslstream ")).expect("the README gives the rule");
    let redis = RedisServer::start();
    let words: Vec<&str> = rule.split_whitespace().collect();
    assert_eq!(redis.cli(&words).trim(), "OK", "the rule is valid: {rule}");
    let url = format!("redis://eslstream:secret@127.0.0.1:{}", redis.port());
    let sim =
        Simulator::start(SimulateOptions { rate: Some(1000.0), events: Some(2000), ..Default::default() }).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent =
        start_agent(&agent_env(sim.local_addr(), &url, spool.path(), port), &[("HEALTH_CHECK_INTERVAL", "200ms")]);
    assert!(sim.wait_done(Duration::from_secs(30)));
    let sent = sim.stats().events_sent;
    let mut conn = redis.connection();
    wait_until(Duration::from_secs(30), "every event in Redis", || xlen(&mut conn, EVENTS) >= sent);
    let h = health_json(port).expect("health");
    assert!(!failing_reasons(&h).iter().any(|r| r.contains("may not run")), "{h}");
    assert_eq!(agent.stop(Duration::from_secs(15)), 0);
    assert!(!agent.output().contains("may not run"), "{}", agent.output());
    assert_exactly_once_in_order(&read_stream(&mut conn, EVENTS), sent);
}

#[test]
fn an_agent_behind_the_switch_when_stopped_writes_everything_sent_before_the_stop() {
    let redis = RedisServer::start();
    let sim = simulator(None);
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = start_agent(&agent_env(sim.local_addr(), &redis.url(), spool.path(), port), &[]);
    wait_sent(&sim, N / 10);
    // Paused, the agent falls behind: the switch's events wait unread in its socket.
    signal(agent.pid(), libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(500));
    let sent_before_the_stop = sim.stats().events_sent;
    agent.term();
    signal(agent.pid(), libc::SIGCONT);
    assert_eq!(agent.wait_timeout(Duration::from_secs(30)), Some(0), "{}", agent.output());
    let entries = read_stream(&mut redis.connection(), EVENTS);
    assert_exactly_once_in_order(&entries, entries.len() as u64);
    let written: std::collections::HashSet<u64> = entries.iter().map(|e| e.sequence).collect();
    let unread: Vec<u64> = (1..=sent_before_the_stop).filter(|s| !written.contains(s)).collect();
    assert!(
        unread.is_empty(),
        "{} events sent before the stop not written, first {:?}",
        unread.len(),
        &unread[..unread.len().min(5)]
    );
    assert!(
        agent.output().contains("stopping: read every event the switch made before the stop"),
        "{}",
        agent.output()
    );
}

/// Redis refusing writes (out of memory) for a few hundred milliseconds at a time, again and
/// again, with a short `WRITER_RETRY_TTL`: batches move to the spool while part of it is
/// acknowledged, events go in front of it, and it is read back, many times over. (A spill
/// once made the spool read acknowledged records again, written twice, and lose count of
/// the rest, which then stayed unread.)
#[test]
fn redis_out_of_memory_on_and_off_while_batches_spill() {
    let redis = RedisServer::start();
    let sim =
        Simulator::start(SimulateOptions { rate: Some(6_000.0), events: Some(90_000), ..Default::default() }).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = spool_env(&sim, &redis, spool.path(), port);
    let mut agent = start_agent(&env, &[("WRITER_RETRY_TTL", "150ms")]);
    wait_sent(&sim, 3000);
    let mut round = 0u64;
    while !sim.wait_done(Duration::from_millis(1)) {
        let info = redis.cli(&["INFO", "memory"]);
        let used: u64 =
            info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).unwrap();
        redis.set_maxmemory(used + (1 << 18));
        std::thread::sleep(Duration::from_millis(300 + (round * 137) % 500));
        redis.set_maxmemory(0);
        std::thread::sleep(Duration::from_millis(100 + (round * 71) % 300));
        round += 1;
    }
    // That the scenario happened, not what it proves (that is `finish`'s exact count): how
    // many rounds end in spills depends on how busy the host is. Alone, 19 rounds gave 32 to
    // 52 spills; beside the rest of this file on two cores, 12 rounds once gave 7.
    let spills = metric_sum(port, "eslstream_spills_total", "");
    eprintln!("{spills} spills in {round} rounds");
    assert!(spills >= 5.0, "{spills} spills in {round} rounds");
    finish(&mut agent, &sim, || redis.connection());
}
