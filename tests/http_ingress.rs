//! HTTP ingress against the agent binary and a real server, with a real HTTP/1.1 client over
//! TCP: `202` only once durable, exactly once per id across re-sends, Redis outages and a
//! SIGKILL after the answer, per-ordering-key order, every refusal with its status, garbage
//! that never gets a 5xx, and `written` meaning a replica has it with `REDIS_WAIT_REPLICAS`.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use support::raw_http::{request, Answer};
use support::*;

const STREAM: &str = "freeswitch:telephony:http-events";
const TOKEN: &str = "crm-token-0123456789abcdef";

/// `POST /events` with the CRM token.
fn post(port: u16, content_type: &str, extra: &str, body: &[u8]) -> Answer {
    let head =
        format!("POST /events HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: {content_type}\r\n{extra}");
    request(port, &head, body)
}

fn event(i: u64) -> Value {
    json!({"event_type": "order.paid", "event_id": format!("e-{i}"), "call_id": format!("call-{}", i % 20), "seq": i, "note": "a  b"})
}

fn start(redis_url: &str, spool: &std::path::Path, port: u16, extra: &[(&str, &str)]) -> Agent {
    let port = port.to_string();
    let spool = spool.display().to_string();
    let mut env: Vec<(&str, &str)> = vec![
        ("ESL_ENABLED", "false"),
        ("HTTP_INGRESS", "true"),
        ("HTTP_INGRESS_TOKENS", "crm:crm-token-0123456789abcdef"),
        ("REDIS_URL", redis_url),
        ("HEALTH_BIND", "127.0.0.1"),
        ("HEALTH_PORT", &port),
        ("SPOOL_DIR", &spool),
        ("REDIS_REMOTE_DIAL_TIMEOUT", "500ms"),
        ("REDIS_REMOTE_WRITE_TIMEOUT", "1s"),
        ("WRITER_RETRY_PAUSE_AFTER", "50ms"),
        ("WRITER_RETRY_TTL", "1s"),
        ("SHUTDOWN_TIMEOUT", "5s"),
        ("METRICS_PRINT_INTERVAL", "0"),
        ("HTTP_MAX_LEN", "0"),
    ];
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push((k, v));
    }
    let agent = Agent::start(&[], &env);
    wait_until(Duration::from_secs(20), "the agent answers", || http(port.parse().unwrap(), "/health").is_some());
    agent
}

/// Posts the events `ids` in one batch while Redis is down: every one answered `spooled`.
fn post_spooled(port: u16, ids: std::ops::Range<u64>) -> Vec<Value> {
    let batch: Vec<Value> = ids.map(event).collect();
    let answer = post(port, "application/json", "", serde_json::to_vec(&batch).unwrap().as_slice());
    assert_eq!(answer.status, 202, "{}", answer.body);
    let body = answer.json();
    assert!(body["results"].as_array().unwrap().iter().all(|r| r["status"] == "spooled"), "{body}");
    batch
}

/// `(event_id, seq, call_id)` of every entry, in stream order, from the `event` JSON.
fn stored(redis: &RedisServer) -> Vec<(String, u64, String)> {
    let reply: Vec<(String, Vec<(String, String)>)> =
        ::redis::cmd("XRANGE").arg(STREAM).arg("-").arg("+").query(&mut redis.connection()).expect("XRANGE");
    reply
        .into_iter()
        .map(|(_, fields)| {
            let f: HashMap<String, String> = fields.into_iter().collect();
            let e: Value = serde_json::from_str(&f["event"]).expect("event is JSON");
            assert_eq!(f["core_uuid"], "crm", "the producer is the token's name");
            assert_eq!(f["event_sequence"], e["event_id"].as_str().unwrap(), "the id is the event's");
            assert_eq!(f["unique_id"], e["call_id"].as_str().unwrap());
            assert_eq!(f["event_name"], "order.paid");
            (
                e["event_id"].as_str().unwrap().to_owned(),
                e["seq"].as_u64().unwrap(),
                e["call_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Exactly the ids `0..n`, once each, and per call in `seq` order.
fn assert_exactly_once_in_call_order(entries: &[(String, u64, String)], n: u64) {
    let mut seen = std::collections::HashSet::new();
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (id, seq, call) in entries {
        assert!(seen.insert(id.clone()), "{id} twice");
        if let Some(prev) = last.insert(call, *seq) {
            assert!(prev < *seq, "{call}: {seq} after {prev}");
        }
    }
    assert_eq!(entries.len() as u64, n, "entries");
}

#[test]
fn ten_thousand_events_singles_batches_ndjson_and_resends_exactly_once_in_order() {
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = start(&redis.url(), spool.path(), port, &[]);
    const N: u64 = 10_000;
    let mut duplicates = 0;
    let mut i = 0;
    while i < N {
        let kind = (i / 100) % 3;
        let (answer, sent) = match kind {
            0 => {
                let a = post(port, "application/json", "", event(i).to_string().as_bytes());
                (a, 1)
            }
            1 => {
                let batch: Vec<Value> = (i..i + 100).map(event).collect();
                (post(port, "application/json", "", serde_json::to_vec(&batch).unwrap().as_slice()), 100)
            }
            _ => {
                let lines: Vec<String> = (i..i + 100).map(|k| event(k).to_string()).collect();
                (post(port, "application/x-ndjson", "", lines.join("\n").as_bytes()), 100)
            }
        };
        assert_eq!(answer.status, 202, "{}", answer.body);
        let body = answer.json();
        assert_eq!(body["accepted"], sent, "{body}");
        assert!(body["results"].as_array().unwrap().iter().all(|r| r["status"] == "written"), "{body}");
        // Every tenth event sent again with the same id: reported as a duplicate.
        for k in (i..i + sent).filter(|k| k % 10 == 0) {
            let again = post(port, "application/json", "", event(k).to_string().as_bytes());
            assert_eq!(again.status, 202);
            assert_eq!(again.json()["duplicates"], 1, "{}", again.body);
            assert_eq!(again.json()["results"][0]["status"], "duplicate");
            duplicates += 1;
        }
        i += sent;
    }
    assert_eq!(duplicates, N / 10);
    let received = metric_sum(port, "eslstream_events_received_total", r#"source="http""#) as u64;
    assert_eq!(received, N + N / 10, "every event taken in is counted, re-sends too");
    let (_, health) = http(port, "/health").expect("health");
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["data"]["sources"]["http"]["enabled"], true, "{health}");
    assert_eq!(agent.stop(Duration::from_secs(15)), 0);
    assert_exactly_once_in_call_order(&stored(&redis), N);
}

#[test]
fn redis_down_answers_202_spooled_and_a_sigkill_after_202_loses_nothing() {
    let mut redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = start(&redis.url(), spool.path(), port, &[]);
    redis.kill();
    let batch = post_spooled(port, 0..200);
    // Right after the 202: SIGKILL. What was acknowledged is on disk.
    agent.kill();
    redis.restart();
    let port2 = free_port();
    let mut agent = start(&redis.url(), spool.path(), port2, &[]);
    wait_until(Duration::from_secs(30), "the spooled events written", || stored(&redis).len() >= 200);
    // And re-sending them now finds them written.
    let again = post(port2, "application/json", "", serde_json::to_vec(&batch[..10]).unwrap().as_slice());
    assert_eq!(again.json()["duplicates"], 10, "{}", again.body);
    assert_eq!(agent.stop(Duration::from_secs(15)), 0);
    assert_exactly_once_in_call_order(&stored(&redis), 200);
}

#[test]
fn a_spool_directory_deleted_under_the_agent_loses_only_what_it_counts() {
    let mut redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = start(&redis.url(), spool.path(), port, &[]);
    redis.kill();
    post_spooled(port, 0..200);
    // An operator clears the spool by hand while Redis is down, then more events come. The
    // agent puts back the segments it holds open (those it appends to); the events the writers
    // moved there after their retries ran out were in closed files: those are gone, counted.
    std::fs::remove_dir_all(spool.path()).unwrap();
    post_spooled(port, 200..400);
    let names: Vec<_> = std::fs::read_dir(spool.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.iter().any(|n| n.to_string_lossy().starts_with("lane-")), "recreated: {names:?}");
    assert!(spool.path().join("lanes").exists(), "the lane count is written again");
    assert!(agent.output().contains("spool files were deleted while the agent ran"), "{}", agent.output());
    let lost = metric_sum(port, "eslstream_events_dropped_total", r#"reason="spool_lost""#) as u64;
    let health = || -> Value { serde_json::from_str(&http(port, "/health").expect("health").1).unwrap() };
    // The health document is refreshed every few seconds.
    wait_until(Duration::from_secs(15), "health counts the lost events", || {
        health()["data"]["dropped"]["total"] == lost
    });
    let health = health();
    if lost > 0 {
        assert_eq!(health["data"]["dropped"]["by_reason"]["spool_lost"], lost, "{health}");
        assert_eq!(health["status"], "degraded", "a drop fails the drops check: {health}");
    }
    // What was answered `spooled` after the deletion is on disk again: a SIGKILL loses none of
    // it.
    agent.kill();
    redis.restart();
    let port2 = free_port();
    let mut agent = start(&redis.url(), spool.path(), port2, &[]);
    wait_until(Duration::from_secs(30), "the spooled events written", || stored(&redis).len() as u64 >= 400 - lost);
    assert_eq!(agent.stop(Duration::from_secs(15)), 0);
    let entries = stored(&redis);
    let written: std::collections::HashSet<u64> = entries.iter().map(|(_, seq, _)| *seq).collect();
    assert!((200..400).all(|i| written.contains(&i)), "every event answered after the deletion is written");
    // 400 events, `lost` of them counted as lost: the rest once each, in call order.
    assert_exactly_once_in_call_order(&entries, 400 - lost);
}

#[test]
fn every_refusal_has_its_status_and_says_why() {
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = start(&redis.url(), spool.path(), port, &[("HTTP_INGRESS_REQUIRED_FIELDS", "call_id")]);
    let one = event(1).to_string();
    // 401, with WWW-Authenticate.
    let a = request(port, "POST /events HTTP/1.1\r\nContent-Type: application/json\r\n", one.as_bytes());
    assert_eq!((a.status, a.headers.get("www-authenticate").map(String::as_str)), (401, Some("Bearer")));
    let a = request(
        port,
        "POST /events HTTP/1.1\r\nAuthorization: Bearer nope-nope-nope-nope\r\nContent-Type: application/json\r\n",
        one.as_bytes(),
    );
    assert_eq!(a.status, 401);
    // 400 naming the event.
    let a = post(port, "application/json", "", br#"[{"call_id":"a"},{"call_id":""},{"call_id":"c"}]"#);
    assert_eq!((a.status, a.json()["index"].as_u64()), (400, Some(1)), "{}", a.body);
    let a = post(port, "application/x-ndjson", "", b"{\"call_id\":\"a\"}\n{oops");
    assert_eq!((a.status, a.json()["index"].as_u64()), (400, Some(1)), "{}", a.body);
    // 413: too large, also once decompressed (a gzip bomb).
    let big = format!(r#"{{"call_id":"a","pad":"{}"}}"#, "x".repeat(1 << 20));
    assert_eq!(post(port, "application/json", "", big.as_bytes()).status, 413);
    let bomb = gzip(format!(r#"{{"call_id":"a","pad":"{}"}}"#, "0".repeat(50 << 20)).as_bytes());
    assert!(bomb.len() < 200_000, "the bomb is small on the wire");
    let a = post(port, "application/json", "Content-Encoding: gzip\r\n", &bomb);
    assert_eq!(a.status, 413, "{}", a.body);
    // gzip within the limit is fine.
    let a = post(port, "application/json", "Content-Encoding: gzip\r\n", &gzip(event(7).to_string().as_bytes()));
    assert_eq!(a.status, 202, "{}", a.body);
    // 415.
    assert_eq!(post(port, "text/plain", "", one.as_bytes()).status, 415);
    assert_eq!(post(port, "application/json", "Content-Encoding: br\r\n", one.as_bytes()).status, 415);
    // 405.
    let a = request(port, &format!("GET /events HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"), b"");
    assert_eq!(a.status, 405);
    // A bad Idempotency-Key.
    assert_eq!(post(port, "application/json", "Idempotency-Key: \x01\r\n", one.as_bytes()).status, 400);
    assert!(agent.is_running());
    let (_, metrics) = http(port, "/metrics").expect("metrics");
    assert!(metrics.contains(r#"eslstream_http_requests_total{code="401",producer="unknown"}"#), "{metrics}");
    assert!(metrics.contains(r#"eslstream_http_requests_total{code="202",producer="crm"} 1"#), "{metrics}");
    assert_eq!(agent.stop(Duration::from_secs(15)), 0);
}

#[test]
fn idempotency_key_header_names_events_without_an_id() {
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = start(&redis.url(), spool.path(), port, &[]);
    let batch = br#"[{"event_type":"sms.in","call_id":"x","seq":1},{"event_type":"sms.in","call_id":"x","seq":2}]"#;
    let first = post(port, "application/json", "Idempotency-Key: req-42\r\n", batch);
    assert_eq!(first.json()["accepted"], 2, "{}", first.body);
    let retried = post(port, "application/json", "Idempotency-Key: req-42\r\n", batch);
    assert_eq!(retried.json()["duplicates"], 2, "a retried request with the same key adds nothing: {}", retried.body);
    // Without an id or a key, each request's events are new events (a blind retry duplicates).
    let single = br#"{"event_type":"sms.in","call_id":"y","seq":3}"#;
    post(port, "application/json", "", single);
    post(port, "application/json", "", single);
    assert_eq!(agent.stop(Duration::from_secs(15)), 0);
    let reply: Vec<(String, Vec<(String, String)>)> =
        ::redis::cmd("XRANGE").arg(STREAM).arg("-").arg("+").query(&mut redis.connection()).unwrap();
    let ids: Vec<String> =
        reply.iter().map(|(_, f)| f.iter().find(|(k, _)| k == "event_sequence").unwrap().1.clone()).collect();
    assert_eq!(&ids[..2], ["req-42:0", "req-42:1"]);
    assert_eq!(ids.len(), 4);
}

/// Events without an id get a key of the agent's own and take the fast path (no checking
/// script): while Redis stops answering again and again for longer than the write timeout
/// (each write's fate unknown, its retry checked), every event posted by four producers at once
/// is answered 202 and stored exactly once, in call order.
#[test]
fn events_without_an_id_are_written_once_while_redis_stalls() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 600;
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = start(&redis.url(), spool.path(), port, &[]);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chaos = {
        let (pid, done) = (redis.pid().expect("redis is running"), done.clone());
        std::thread::spawn(move || {
            let mut stalls = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) && stalls < 3 {
                std::thread::sleep(Duration::from_millis(400));
                signal(pid, libc::SIGSTOP);
                std::thread::sleep(Duration::from_millis(1500)); // past REDIS_REMOTE_WRITE_TIMEOUT=1s
                signal(pid, libc::SIGCONT);
                stalls += 1;
            }
            stalls
        })
    };
    let producers: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let event = |seq: u64| json!({"event_type": "order.paid", "call_id": format!("t{t}-{}", seq % 5), "seq": seq, "from": t});
                let mut seq = 0;
                while seq < PER_THREAD {
                    let (answer, sent) = if seq % 50 < 40 {
                        (post(port, "application/json", "", event(seq).to_string().as_bytes()), 1)
                    } else {
                        let batch: Vec<Value> = (seq..seq + 10).map(event).collect();
                        (post(port, "application/json", "", &serde_json::to_vec(&batch).unwrap()), 10)
                    };
                    assert_eq!(answer.status, 202, "{}", answer.body);
                    assert_eq!(answer.json()["accepted"], sent, "{}", answer.body);
                    seq += sent;
                }
            })
        })
        .collect();
    for p in producers {
        p.join().expect("a producer failed");
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    assert!(chaos.join().unwrap() >= 1, "Redis stalled while events were posted");
    assert_eq!(agent.stop(Duration::from_secs(20)), 0);
    let entries = read_stream(&mut redis.connection(), STREAM);
    let mut seen = std::collections::HashSet::new();
    let mut last: HashMap<&str, u64> = HashMap::new();
    for entry in &entries {
        let e: Value = serde_json::from_str(&entry.event).unwrap();
        let (from, seq, call) = (e["from"].as_u64().unwrap(), e["seq"].as_u64().unwrap(), entry.unique_id.as_str());
        assert!(seen.insert((from, seq)), "producer {from} event {seq} stored twice");
        if let Some(prev) = last.insert(call, seq) {
            assert!(prev < seq, "{call}: {seq} after {prev}");
        }
    }
    assert_eq!(entries.len() as u64, THREADS * PER_THREAD, "every event once");
}

#[test]
fn webhook_signatures_right_wrong_and_missing() {
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let extra = [("HTTP_INGRESS_TOKENS", ""), ("HTTP_INGRESS_HMAC_SECRET", "whsec-test")];
    let mut agent = start(&redis.url(), spool.path(), port, &extra);
    let body = event(1).to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec-test").unwrap();
    mac.update(body.as_bytes());
    let signature: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let head = |sig: &str| format!("POST /events HTTP/1.1\r\nContent-Type: application/json\r\n{sig}");
    let right = request(port, &head(&format!("X-Signature-256: sha256={signature}\r\n")), body.as_bytes());
    assert_eq!(right.status, 202, "{}", right.body);
    let wrong = request(port, &head(&format!("X-Signature-256: sha256={}\r\n", "0".repeat(64))), body.as_bytes());
    assert_eq!(wrong.status, 401);
    let tampered =
        request(port, &head(&format!("X-Signature-256: sha256={signature}\r\n")), event(2).to_string().as_bytes());
    assert_eq!(tampered.status, 401);
    assert_eq!(request(port, &head(""), body.as_bytes()).status, 401);
    assert_eq!(agent.stop(Duration::from_secs(15)), 0);
}

#[test]
fn full_memory_and_spool_answer_503_with_retry_after_at_once() {
    let mut redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let extra =
        [("SPOOL_MAX_BYTES", "0"), ("BUFFER_SIZE", "16"), ("BUFFER_MAX_BYTES", "4KiB"), ("WRITER_WORKERS", "1")];
    let mut agent = start(&redis.url(), spool.path(), port, &extra);
    redis.kill();
    let batch: Vec<Value> = (0..100).map(event).collect();
    let started = Instant::now();
    let a = post(port, "application/json", "", serde_json::to_vec(&batch).unwrap().as_slice());
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.headers.get("retry-after").map(String::as_str), Some("1"));
    assert!(started.elapsed() < Duration::from_secs(2), "at once, not after the ack timeout");
    redis.restart();
    assert_eq!(agent.stop(Duration::from_secs(15)), 0);
    assert_eq!(stored(&redis).len(), 0, "nothing of a refused request was accepted");
}

#[test]
fn not_durable_in_time_is_503_and_still_written_once() {
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent =
        start(&redis.url(), spool.path(), port, &[("HTTP_INGRESS_ACK_TIMEOUT", "300ms"), ("SPOOL_MAX_BYTES", "0")]);
    redis.pause(); // SIGSTOP: writes hang, nothing can be fsynced either (no spool)
    let batch: Vec<Value> = (0..20).map(event).collect();
    let a = post(port, "application/json", "", serde_json::to_vec(&batch).unwrap().as_slice());
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.json()["error"].as_str().unwrap().contains("retry with the same ids"));
    redis.resume();
    wait_until(Duration::from_secs(30), "the events written anyway", || stored(&redis).len() >= 20);
    let again = post(port, "application/json", "", serde_json::to_vec(&batch).unwrap().as_slice());
    assert_eq!(again.json()["duplicates"], 20, "the retry is safe: {}", again.body);
    assert_eq!(agent.stop(Duration::from_secs(15)), 0);
    assert_exactly_once_in_call_order(&stored(&redis), 20);
}

/// With `REDIS_WAIT_REPLICAS=1`, `written` means a replica has it too: with the replica
/// stopped, the primary's reply is not enough, so the events are answered as `spooled` (held
/// on the agent's disk) and written once the replica confirms again.
#[test]
fn with_wait_replicas_written_means_a_replica_has_it() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
    support::topology::wait_replica_synced(&primary, &replica);
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent =
        start(&primary.url(), spool.path(), port, &[("REDIS_WAIT_REPLICAS", "1"), ("REDIS_WAIT_TIMEOUT", "200ms")]);
    let statuses = |answer: &Answer| -> Vec<String> {
        assert_eq!(answer.status, 202, "{}", answer.body);
        answer.json()["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap().to_owned()).collect()
    };
    let first: Vec<Value> = (0..50).map(event).collect();
    let a = post(port, "application/json", "", serde_json::to_vec(&first).unwrap().as_slice());
    assert!(statuses(&a).iter().all(|s| s == "written"), "{}", a.body);
    replica.pause();
    let second: Vec<Value> = (50..100).map(event).collect();
    let b = post(port, "application/json", "", serde_json::to_vec(&second).unwrap().as_slice());
    assert!(statuses(&b).iter().all(|s| s == "spooled"), "not confirmed, so not written: {}", b.body);
    assert!(metric_sum(port, "eslstream_redis_wait_timeouts_total", "") >= 1.0);
    replica.resume();
    wait_until(Duration::from_secs(30), "the held events written", || stored(&primary).len() >= 100);
    assert_eq!(agent.stop(Duration::from_secs(15)), 0);
    assert_exactly_once_in_call_order(&stored(&primary), 100);
}

#[test]
fn garbage_requests_never_get_a_5xx() {
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = start(&redis.url(), spool.path(), port, &[]);
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let pieces: [&[u8]; 10] = [b"{", b"}", b"[", b"]", b"\"", b":", b",", b"\\u00", b"\xff", b"{\"event_id\":1}"];
    for round in 0..300 {
        let len = (next() % 40) as usize;
        let mut body = Vec::new();
        for _ in 0..len {
            match next() % 3 {
                0 => body.extend_from_slice(pieces[(next() % 10) as usize]),
                1 => body.push((next() % 256) as u8),
                _ => body.extend_from_slice(b"{\"a\":\"b\"}"),
            }
        }
        let content_type =
            ["application/json", "application/x-ndjson", "application/json; charset=x", "x/y"][round % 4];
        let encoding = ["", "Content-Encoding: gzip\r\n", "Content-Encoding: zz\r\n"][(next() % 3) as usize];
        let idem = if next() % 2 == 0 { format!("Idempotency-Key: k{round}\r\n") } else { String::new() };
        let a = post(port, content_type, &format!("{encoding}{idem}"), &body);
        assert!(a.status < 500, "round {round}: {} for {:?}: {}", a.status, String::from_utf8_lossy(&body), a.body);
    }
    assert!(agent.is_running());
    assert_eq!(agent.stop(Duration::from_secs(15)), 0);
}

#[test]
fn health_answers_while_ingress_on_its_own_listener_is_crowded() {
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let ingress = free_port().to_string();
    let extra = [("HTTP_INGRESS_BIND", "127.0.0.1"), ("HTTP_INGRESS_PORT", ingress.as_str())];
    let mut agent = start(&redis.url(), spool.path(), port, &extra);
    let ingress: u16 = ingress.parse().unwrap();
    // POST /events is served there, not on the admin listener.
    assert_eq!(post(ingress, "application/json", "", event(1).to_string().as_bytes()).status, 202);
    assert_eq!(post(port, "application/json", "", event(2).to_string().as_bytes()).status, 404);
    let crowd: Vec<TcpStream> = (0..500).filter_map(|_| TcpStream::connect(("127.0.0.1", ingress)).ok()).collect();
    let mut slow = TcpStream::connect(("127.0.0.1", ingress)).unwrap();
    slow.write_all(b"POST /events HTTP/1.1\r\nHost").unwrap();
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        assert!(http(port, "/health").is_some());
        worst = worst.max(started.elapsed());
        let _ = slow.write_all(b"x");
    }
    println!("/health beside a crowded ingress: worst {worst:?} ({} idle connections)", crowd.len());
    assert!(worst < Duration::from_millis(100), "{worst:?}");
    drop(crowd);
    assert_eq!(agent.stop(Duration::from_secs(15)), 0);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn tls_on_the_ingress_listener() {
    let test_ca = support::certs::TestCa::new();
    let (ca, cert, key) = (test_ca.path("ca.crt"), test_ca.path("server.crt"), test_ca.path("server.key"));
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let ingress = free_port().to_string();
    let extra = [
        ("HTTP_INGRESS_BIND", "127.0.0.1"),
        ("HTTP_INGRESS_PORT", ingress.as_str()),
        ("HTTP_INGRESS_TLS_CERT", cert.as_str()),
        ("HTTP_INGRESS_TLS_KEY", key.as_str()),
    ];
    let mut agent = start(&redis.url(), spool.path(), port, &extra);
    let ingress: u16 = ingress.parse().unwrap();

    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&ca).unwrap();
    for c in rustls_pki_types_certs(&pem) {
        roots.add(c).unwrap();
    }
    let config =
        std::sync::Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(("127.0.0.1", ingress)).unwrap());
    let body = event(1).to_string();
    let req = format!(
        "POST /events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(("127.0.0.1", ingress)).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    plain.write_all(b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let _ = plain.read_to_end(&mut raw);
    assert!(!raw.starts_with(b"HTTP/1.1 2"), "{}", String::from_utf8_lossy(&raw));
    assert_eq!(agent.stop(Duration::from_secs(15)), 0);
    assert_eq!(stored(&redis).len(), 1);
}

#[test]
fn tls_files_that_are_missing_are_a_configuration_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eslstream"))
        .arg("check-config")
        .env("HTTP_INGRESS_PORT", "9999")
        .env("HTTP_INGRESS_TLS_CERT", "/nonexistent/cert.pem")
        .env("HTTP_INGRESS_TLS_KEY", "/nonexistent/key.pem")
        .output()
        .expect("run check-config");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP_INGRESS_TLS_CERT"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rustls_pki_types_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().expect("PEM certificates")
}

#[test]
fn a_body_that_trickles_is_cut_with_408() {
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = start(&redis.url(), spool.path(), port, &[]);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!("POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"a\"");
    s.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    assert_eq!(agent.stop(Duration::from_secs(15)), 0);
}
