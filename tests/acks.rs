//! Acknowledgements against a real Redis 7.0: a source that submits a batch through the
//! intake learns, once per event, what became of it: `written` (with the entry id that
//! `XRANGE` shows), `duplicate` (also after an agent restart), `spooled` (Redis down: only once
//! the record is on disk), `dead_lettered` (a `WRONGTYPE` key) and `dropped` (spool full).
//! The agent runs in-process with `ESL_ENABLED=false`, as an HTTP-only or outbox-only agent
//! would, and `/health` is 200 without an event socket.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use eslstream::ack::AckStatus;
use eslstream::app::Agent;
use eslstream::config::Config;
use eslstream::envelope::{BodyFormat, Envelope, EventId, IdempotencyKey, Source, StreamTarget};
use support::*;

const STREAM: &str = "freeswitch:telephony:http-events";
/// Longer than any wait below needs: the writer gives up on a down Redis after
/// `WRITER_RETRY_TTL` (1 s here) and spools.
const ACK_WAIT: Duration = Duration::from_secs(20);

fn config(redis_url: &str, spool: &Path, extra: &[(&str, &str)]) -> Config {
    let spool_dir = spool.display().to_string();
    let mut vars: HashMap<String, String> = [
        ("ESL_ENABLED", "false"),
        ("REDIS_URL", redis_url),
        ("HEALTH_BIND", "127.0.0.1"),
        ("HEALTH_PORT", "0"),
        ("HEALTH_CHECK_INTERVAL", "200ms"),
        ("REDIS_REMOTE_WRITE_TIMEOUT", "500ms"),
        ("REDIS_REMOTE_DIAL_TIMEOUT", "500ms"),
        ("WRITER_RETRY_PAUSE_AFTER", "50ms"),
        ("WRITER_RETRY_TTL", "1s"),
        ("METRICS_PRINT_INTERVAL", "0"),
        ("WRITER_WORKERS", "2"),
        ("SPOOL_DIR", spool_dir.as_str()),
        ("SHUTDOWN_TIMEOUT", "3s"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::from_vars(vars).expect("valid test configuration")
}

/// A JSON event from `producer` with the string id `id`, ordered by `call`.
fn event(producer: &str, id: &str, call: &str) -> Envelope {
    let body = Bytes::from(format!(r#"{{"event_type":"order.paid","event_id":"{id}","call_id":"{call}"}}"#));
    let key = IdempotencyKey { producer: producer.into(), id: EventId::Key(id.into()) };
    Envelope {
        name: "order.paid".into(),
        ordering_key: call.into(),
        maybe_written: true,
        ..Envelope::new(Source::Http, StreamTarget::new(STREAM, 0, "http"), BodyFormat::Json, body, key)
    }
}

fn submit(agent: &Agent, events: Vec<Envelope>) -> Vec<AckStatus> {
    agent.intake.submit_acked(events).wait_blocking(ACK_WAIT).expect("every event settled in time")
}

/// `(entry id, event_sequence)` of every entry of `stream`, oldest first.
fn entries(redis: &RedisServer, stream: &str) -> Vec<(String, String)> {
    let reply: Vec<(String, Vec<(String, String)>)> =
        ::redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query(&mut redis.connection()).expect("XRANGE");
    reply
        .into_iter()
        .map(|(id, fields)| {
            let seq = fields.into_iter().find(|(k, _)| k == "event_sequence").map(|(_, v)| v).unwrap_or_default();
            (id, seq)
        })
        .collect()
}

#[test]
fn written_then_duplicate_also_after_a_restart() {
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().expect("temp dir");
    let agent = Agent::start(config(&redis.url(), spool.path(), &[])).expect("agent starts");

    let statuses = submit(&agent, (0..5).map(|i| event("crm", &format!("e{i}"), &format!("call-{}", i % 2))).collect());
    let stored = entries(&redis, STREAM);
    assert_eq!(stored.len(), 5);
    // Each acknowledgement names the entry Redis made for that event.
    for (i, status) in statuses.iter().enumerate() {
        let AckStatus::Written(id) = status else { panic!("event {i}: {status:?}") };
        let (_, seq) = stored.iter().find(|(entry, _)| entry == id).expect("the acknowledged id is in the stream");
        assert_eq!(seq, &format!("e{i}"));
    }

    // The same ids again (and one new): duplicates are acknowledged as such, nothing added.
    let statuses = submit(&agent, vec![event("crm", "e1", "call-1"), event("crm", "e5", "call-1")]);
    assert_eq!(statuses[0], AckStatus::Duplicate);
    assert!(matches!(statuses[1], AckStatus::Written(_)), "{statuses:?}");
    assert!(agent.stop());

    // A new agent process state, same Redis: still a duplicate.
    let agent = Agent::start(config(&redis.url(), spool.path(), &[])).expect("agent restarts");
    let statuses = submit(&agent, vec![event("crm", "e3", "call-1"), event("billing", "e3", "call-1")]);
    assert_eq!(statuses[0], AckStatus::Duplicate);
    assert!(matches!(statuses[1], AckStatus::Written(_)), "another producer's e3 is its own: {statuses:?}");
    assert!(agent.stop());
    assert_eq!(entries(&redis, STREAM).len(), 7);
}

#[test]
fn numeric_ids_resent_are_duplicates_too() {
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().expect("temp dir");
    let agent = Agent::start(config(&redis.url(), spool.path(), &[])).expect("agent starts");
    let numbered = |row: u64| {
        let body = Bytes::from(format!(r#"{{"row":{row}}}"#));
        let key = IdempotencyKey { producer: "db/outbox".into(), id: EventId::Seq(row) };
        let stream = StreamTarget::new(STREAM, 0, "outbox");
        Envelope { maybe_written: true, ..Envelope::new(Source::Outbox, stream, BodyFormat::Json, body, key) }
    };
    let first = submit(&agent, (1..=3).map(numbered).collect());
    assert!(first.iter().all(|s| matches!(s, AckStatus::Written(_))), "{first:?}");
    let again = submit(&agent, (2..=4).map(numbered).collect());
    assert_eq!(&again[..2], [AckStatus::Duplicate, AckStatus::Duplicate]);
    assert!(matches!(again[2], AckStatus::Written(_)), "{again:?}");
    assert!(agent.stop());
    let seqs: Vec<String> = entries(&redis, STREAM).into_iter().map(|(_, s)| s).collect();
    assert_eq!(seqs, ["1", "2", "3", "4"]);
}

#[test]
fn spooled_once_on_disk_while_redis_is_down_then_written_once() {
    let mut redis = RedisServer::start();
    let spool = tempfile::tempdir().expect("temp dir");
    let agent = Agent::start(config(&redis.url(), spool.path(), &[])).expect("agent starts");
    redis.kill();

    const N: usize = 40;
    let statuses = submit(&agent, (0..N).map(|i| event("crm", &format!("s{i}"), &format!("call-{}", i % 3))).collect());
    assert!(statuses.iter().all(|s| *s == AckStatus::Spooled), "{statuses:?}");
    // Acknowledged as spooled: every body is in the spool's files already.
    let on_disk = spool_bytes(spool.path());
    for i in 0..N {
        let needle = format!(r#""event_id":"s{i}""#);
        assert!(memchr::memmem::find(&on_disk, needle.as_bytes()).is_some(), "s{i} is not on disk");
    }

    redis.restart();
    wait_until(Duration::from_secs(20), "the spooled events written", || entries(&redis, STREAM).len() >= N);
    assert!(agent.stop());
    let mut seqs: Vec<String> = entries(&redis, STREAM).into_iter().map(|(_, s)| s).collect();
    assert_eq!(seqs.len(), N, "exactly once");
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), N, "no duplicates");
}

#[test]
fn dead_lettered_when_redis_refuses_the_key() {
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().expect("temp dir");
    let agent = Agent::start(config(&redis.url(), spool.path(), &[])).expect("agent starts");
    redis.cli(&["SET", STREAM, "not a stream"]);
    let statuses = submit(&agent, vec![event("crm", "bad", "call-1")]);
    let AckStatus::DeadLettered(id) = &statuses[0] else { panic!("{statuses:?}") };
    let letter = agent.dead_letters.get(id).expect("store readable").expect("the dead letter exists");
    assert!(letter.error.contains("WRONGTYPE"), "{}", letter.error);
    assert_eq!((letter.core_uuid.as_str(), letter.event_sequence.as_str(), letter.string_id), ("crm", "bad", true));
    assert!(agent.stop());
}

#[test]
fn dropped_when_memory_and_spool_are_full_and_counted_exactly() {
    let mut redis = RedisServer::start();
    let spool = tempfile::tempdir().expect("temp dir");
    let extra = [("SPOOL_MAX_BYTES", "4096"), ("BUFFER_SIZE", "16"), ("WRITER_WORKERS", "1")];
    let agent = Agent::start(config(&redis.url(), spool.path(), &extra)).expect("agent starts");
    redis.kill();

    const N: usize = 300;
    let events = (0..N).map(|i| event("crm", &format!("d{i}"), "call-1")).collect();
    let receiver = agent.intake.submit_acked(events);
    // What memory holds waits for Redis: bring it back once the writer has given up on it.
    std::thread::sleep(Duration::from_secs(2));
    redis.restart();
    let statuses = receiver.wait_blocking(ACK_WAIT).expect("every event settled in time");
    let count = |f: fn(&AckStatus) -> bool| statuses.iter().filter(|s| f(s)).count();
    let dropped = count(|s| *s == AckStatus::Dropped("spool_full"));
    let kept = count(|s| matches!(s, AckStatus::Spooled | AckStatus::Written(_)));
    assert!(dropped > 0, "16 events of memory and a 4 KiB spool cannot hold {N}: {statuses:?}");
    assert_eq!(dropped + kept, N, "every event is written, spooled or dropped: {statuses:?}");
    let (_, _, counted) = agent.state.source_counts(Source::Http);
    assert_eq!(counted, dropped as u64, "every drop is counted, with its source");

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while entries(&redis, STREAM).len() < kept {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {kept} kept events written in 20 s; memory holds {}, the spool {}; statuses {statuses:?}",
            entries(&redis, STREAM).len(),
            agent.pipeline.depth(),
            agent.spool.events(),
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(agent.stop());
    let order: Vec<u64> = entries(&redis, STREAM).iter().map(|(_, s)| s[1..].parse().expect("d<n>")).collect();
    assert_eq!(order.len(), kept, "exactly the kept events, once");
    assert!(order.windows(2).all(|w| w[0] < w[1]), "one call's events in the order sent: {order:?}");
}

#[test]
fn without_an_event_socket_health_is_200_with_redis_up() {
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().expect("temp dir");
    let agent = Agent::start(config(&redis.url(), spool.path(), &[])).expect("agent starts");
    let port = agent.http_addr().port();
    wait_until(Duration::from_secs(10), "/health 200", || http(port, "/health").is_some_and(|(s, _)| s == 200));
    let (_, body) = http(port, "/health").expect("health answers");
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["status"], "healthy");
    let checks: Vec<&str> =
        body["data"]["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert!(!checks.contains(&"esl"), "{checks:?}");
    assert_eq!(body["data"]["sources"]["esl"]["enabled"], false, "{body}");
    assert!(body["data"]["sources"]["http"].is_object(), "{body}");
    assert!(agent.stop());
}

/// Every byte of every spool segment under `dir`.
fn spool_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("spool dir readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "seg") {
                out.extend(std::fs::read(&path).expect("segment readable"));
            }
        }
    }
    out
}
