//! The idempotent write against a real server (whichever `REDIS_SERVER_BIN` or `PATH` gives): the transaction path records each written
//! key as a bit, the checking script skips what is recorded (bits for numeric ids, a keyed set
//! for string ids), refused entries are forgotten, and old dedup keys are deleted or bounded.

mod support;

use std::time::Duration;

use eslstream::config::{EntryFormat, RedisConfig};
use eslstream::envelope::{BodyFormat, EventId, IdempotencyKey};
use eslstream::sink::entry::EventField;
use eslstream::sink::redis::{
    dedup_key, dedup_keys_key, Entry, EntryOutcome, RedisSink, DEDUP_GENERATION_BITS, DEDUP_KEEP_GENERATIONS,
    DEDUP_KEYS_TTL_SECS, DEDUP_TRIM_EVERY,
};
use support::*;

const CORE: &str = "11111111-2222-3333-4444-555555555555";

fn sink(redis: &RedisServer) -> RedisSink {
    let config = RedisConfig::standalone(redis.url(), Duration::from_secs(5), Duration::from_secs(5));
    let sink = RedisSink::connect(&config).expect("connect");
    let server = sink.server();
    assert!(server.starts_with("redis ") || server.starts_with("valkey "), "named the server: {server}");
    sink
}

fn entry(stream: &str, sequence: u64) -> Entry {
    let json = format!("{{\"Event-Sequence\":\"{sequence}\"}}").into_bytes();
    let key = IdempotencyKey { producer: CORE.into(), id: EventId::Seq(sequence) };
    Entry::new(EntryFormat::Full, (stream, 0), "CHANNEL_STATE", "call-1", &key, json)
}

/// An entry keyed by a string id of `producer` (as HTTP ingress makes them).
fn keyed(stream: &str, producer: &str, id: &str) -> Entry {
    let json = format!("{{\"event_id\":\"{id}\"}}").into_bytes();
    let key = IdempotencyKey { producer: producer.into(), id: EventId::Key(id.into()) };
    Entry::new(EntryFormat::Full, (stream, 0), "order.paid", "order-1", &key, json)
}

fn ids(conn: &mut ::redis::Connection, stream: &str) -> Vec<String> {
    let reply: Vec<(String, Vec<(String, String)>)> =
        ::redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query(conn).expect("XRANGE");
    reply
        .into_iter()
        .map(|(_, fields)| fields.into_iter().find(|(k, _)| k == "event_sequence").expect("event_sequence").1)
        .collect()
}

fn sequences(conn: &mut ::redis::Connection, stream: &str) -> Vec<u64> {
    read_stream(conn, stream).iter().map(|e| e.sequence).collect()
}

fn written(outcomes: &[EntryOutcome]) -> usize {
    outcomes.iter().filter(|o| matches!(o, EntryOutcome::Written(_))).count()
}

#[test]
fn a_resent_batch_is_never_written_twice() {
    let redis = RedisServer::start();
    let mut conn = redis.connection();
    let mut sink = sink(&redis);
    // Across a bitmap boundary: two dedup keys in one batch.
    let first = (1u64 << DEDUP_GENERATION_BITS) - 3;
    let batch: Vec<Entry> = (first..first + 6).map(|s| entry(EVENTS, s)).collect();

    let outcomes = sink.write(&batch, false).expect("transaction");
    assert_eq!(written(&outcomes), 6);
    assert_eq!(sequences(&mut conn, EVENTS), (first..first + 6).collect::<Vec<_>>());
    for generation in [0, 1] {
        let key = dedup_key(EVENTS, CORE, generation);
        let ttl: i64 = ::redis::cmd("TTL").arg(&key).query(&mut conn).unwrap();
        assert!(ttl > 0, "{key} has a TTL");
    }

    // The same batch again, as after an ambiguous failure: nothing is added.
    let outcomes = sink.write(&batch, true).expect("script");
    assert!(outcomes.iter().all(|o| *o == EntryOutcome::Duplicate), "{outcomes:?}");
    // Half old, half new, and one event twice in the batch.
    let mixed: Vec<Entry> = (first + 3..first + 9).chain([first + 8]).map(|s| entry(EVENTS, s)).collect();
    let outcomes = sink.write(&mixed, true).expect("script");
    assert_eq!(
        outcomes.iter().map(|o| matches!(o, EntryOutcome::Written(_))).collect::<Vec<_>>(),
        [false, false, false, true, true, true, false]
    );
    assert_eq!(sequences(&mut conn, EVENTS), (first..first + 9).collect::<Vec<_>>());
}

/// An ESL event as the writer has it: the bytes as received, its JSON made as the request is
/// encoded.
fn plain_event(stream: &str, sequence: u64, body: &'static str) -> Entry {
    let key = IdempotencyKey { producer: CORE.into(), id: EventId::Seq(sequence) };
    let event = EventField::event(BodyFormat::EslPlain, body.into());
    Entry::new(EntryFormat::Full, (stream, 0), "CHANNEL_STATE", "call-1", &key, event)
}

#[test]
fn an_undecodable_event_is_left_out_of_the_request_and_the_rest_written() {
    let redis = RedisServer::start();
    let mut conn = redis.connection();
    let mut sink = sink(&redis);
    let good = |s| plain_event(EVENTS, s, "Event-Name: CHANNEL_STATE\nChannel-State: CS%20INIT\n");
    let bad = |s| plain_event(EVENTS, s, "Event-Name: CHANNEL_STATE\nthis line has no colon\n");
    let batch = vec![good(1), bad(2), good(3), bad(4), bad(5), good(6)];
    let is_undecodable = |o: &EntryOutcome| matches!(o, EntryOutcome::Undecodable(e) if e.contains("no ':'"));
    for (path, maybe_written) in [("transaction", false), ("script", true)] {
        let outcomes = sink.write(&batch, maybe_written).expect(path);
        let shape: Vec<bool> = outcomes.iter().map(is_undecodable).collect();
        assert_eq!(shape, [false, true, false, true, true, false], "{path}: {outcomes:?}");
        let expected = if path == "transaction" { 3 } else { 0 };
        assert_eq!(written(&outcomes), expected, "{path}: {outcomes:?}");
    }
    assert_eq!(sequences(&mut conn, EVENTS), [1, 3, 6]);
    let stored = read_stream(&mut conn, EVENTS);
    let event: serde_json::Value = serde_json::from_str(&stored[0].event).expect("the event field is JSON");
    assert_eq!(event["Channel-State"], "CS INIT", "the JSON made in the request, percent-decoded");
    // Nothing was recorded for the events left out: the same ids with decodable bytes are
    // written (both paths).
    let outcomes = sink.write(&[good(2)], false).expect("transaction");
    assert_eq!(written(&outcomes), 1, "{outcomes:?}");
    let outcomes = sink.write(&[good(4), good(5)], true).expect("script");
    assert_eq!(written(&outcomes), 2, "{outcomes:?}");
    // A batch of nothing but undecodable events sends nothing.
    let outcomes = sink.write(&[bad(7), bad(8)], false).expect("nothing to send");
    assert!(outcomes.iter().all(is_undecodable), "{outcomes:?}");
    assert_eq!(sequences(&mut conn, EVENTS), [1, 3, 6, 2, 4, 5]);
}

#[test]
fn a_refused_entry_is_forgotten_so_a_retry_writes_it() {
    let redis = RedisServer::start();
    let mut conn = redis.connection();
    let mut sink = sink(&redis);
    redis.cli(&["SET", JOBS, "not a stream"]);
    let batch = vec![entry(EVENTS, 1), entry(JOBS, 2), entry(EVENTS, 3)];
    let outcomes = sink.write(&batch, false).expect("transaction");
    assert!(matches!(&outcomes[1], EntryOutcome::Rejected(e) if e.contains("WRONGTYPE")), "{outcomes:?}");
    assert_eq!(written(&outcomes), 2);
    redis.cli(&["DEL", JOBS]);
    // The refused one is not remembered as written: a retry through either path adds it.
    let outcomes = sink.write(&batch[1..2], true).expect("script");
    assert!(matches!(outcomes[0], EntryOutcome::Written(_)), "{outcomes:?}");
    assert_eq!(sequences(&mut conn, JOBS), [2]);

    // The script path forgets refused entries too.
    redis.cli(&["SET", JOBS, "not a stream"]);
    let outcomes = sink.write(&[entry(JOBS, 4)], true).expect("script");
    assert!(matches!(&outcomes[0], EntryOutcome::Rejected(_)), "{outcomes:?}");
    redis.cli(&["DEL", JOBS]);
    let outcomes = sink.write(&[entry(JOBS, 4)], true).expect("script");
    assert!(matches!(outcomes[0], EntryOutcome::Written(_)), "{outcomes:?}");
}

#[test]
fn old_dedup_bitmaps_are_deleted() {
    let redis = RedisServer::start();
    let mut conn = redis.connection();
    let mut sink = sink(&redis);
    let generation = |g: u64| g << DEDUP_GENERATION_BITS;
    sink.write(&[entry(EVENTS, generation(0))], false).unwrap();
    sink.write(&[entry(EVENTS, generation(1))], false).unwrap();
    let newest = DEDUP_KEEP_GENERATIONS + 1;
    // Trimming runs on the first batch of every DEDUP_TRIM_EVERY.
    for i in 0..DEDUP_TRIM_EVERY {
        sink.write(&[entry(EVENTS, generation(newest) + i)], false).unwrap();
    }
    let exists = |conn: &mut ::redis::Connection, g: u64| -> bool {
        ::redis::cmd("EXISTS").arg(dedup_key(EVENTS, CORE, g)).query::<i64>(conn).unwrap() == 1
    };
    assert!(!exists(&mut conn, 0), "more than DEDUP_KEEP_GENERATIONS behind: deleted");
    assert!(exists(&mut conn, 1) && exists(&mut conn, newest));
    // A bitmap holds 2^20 bits at most.
    let bytes: i64 = ::redis::cmd("STRLEN").arg(dedup_key(EVENTS, CORE, newest)).query(&mut conn).unwrap();
    assert!(bytes <= 1 << (DEDUP_GENERATION_BITS - 3), "{bytes}");
}

#[test]
fn string_ids_are_deduplicated_on_the_script_path() {
    let redis = RedisServer::start();
    let mut conn = redis.connection();
    let mut sink = sink(&redis);
    const HTTP: &str = "freeswitch:telephony:http-events";
    // Never sent before, not marked maybe-written: a string id still takes the checking path.
    let batch = vec![keyed(HTTP, "crm", "a"), keyed(HTTP, "crm", "b"), keyed(HTTP, "crm", "a")];
    let outcomes = sink.write(&batch, false).expect("script");
    assert!(matches!(outcomes[0], EntryOutcome::Written(_)) && matches!(outcomes[1], EntryOutcome::Written(_)));
    assert_eq!(outcomes[2], EntryOutcome::Duplicate, "the same id twice in one batch");
    // A producer re-sending later: duplicates; another producer with the same id: its own.
    let outcomes = sink.write(&[keyed(HTTP, "crm", "b"), keyed(HTTP, "billing", "a")], false).expect("script");
    assert_eq!(outcomes[0], EntryOutcome::Duplicate);
    assert!(matches!(outcomes[1], EntryOutcome::Written(_)), "{outcomes:?}");
    assert_eq!(ids(&mut conn, HTTP), ["a", "b", "a"]);
    // Numeric and string ids in one batch, the numeric one re-sent.
    let outcomes = sink.write(&[entry(HTTP, 7), keyed(HTTP, "crm", "c"), entry(HTTP, 7)], false).expect("script");
    assert_eq!(written(&outcomes), 2);
    assert_eq!(outcomes[2], EntryOutcome::Duplicate);
    // The keyed set lives in the stream's slot, has a TTL, and holds each id once.
    let set = dedup_keys_key(HTTP, "crm");
    assert!(set.starts_with("{freeswitch:telephony:http-events}:"), "{set}");
    let ttl: i64 = ::redis::cmd("TTL").arg(&set).query(&mut conn).unwrap();
    assert!(ttl > 0 && ttl <= DEDUP_KEYS_TTL_SECS as i64, "{ttl}");
    let members: Vec<String> = ::redis::cmd("ZRANGE").arg(&set).arg(0).arg(-1).query(&mut conn).unwrap();
    assert_eq!(members, ["a", "b", "c"]);
    // A refused string-id entry is forgotten, so its retry writes it.
    redis.cli(&["SET", JOBS, "not a stream"]);
    let outcomes = sink.write(&[keyed(JOBS, "crm", "z")], false).expect("script");
    assert!(matches!(&outcomes[0], EntryOutcome::Rejected(e) if e.contains("WRONGTYPE")), "{outcomes:?}");
    redis.cli(&["DEL", JOBS]);
    let outcomes = sink.write(&[keyed(JOBS, "crm", "z")], false).expect("script");
    assert!(matches!(outcomes[0], EntryOutcome::Written(_)), "{outcomes:?}");
}

#[test]
fn the_keyed_set_is_bounded() {
    let redis = RedisServer::start();
    let mut conn = redis.connection();
    let mut sink = sink(&redis);
    sink.set_dedup_keys_max(3);
    const HTTP: &str = "http";
    for id in ["1", "2", "3", "4", "5"] {
        sink.write(&[keyed(HTTP, "p", id)], false).expect("script");
    }
    let members: Vec<String> =
        ::redis::cmd("ZRANGE").arg(dedup_keys_key(HTTP, "p")).arg(0).arg(-1).query(&mut conn).unwrap();
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(members.contains(&"5".to_owned()), "the newest is kept: {members:?}");
}

#[test]
fn a_write_of_an_older_lease_epoch_is_fenced_on_both_paths() {
    let redis = RedisServer::start();
    let mut conn = redis.connection();
    let (mut old, mut new) = (sink(&redis), sink(&redis));
    old.set_fence(Some(("sw1", 5)));
    new.set_fence(Some(("sw1", 7)));
    // The old active writes first: allowed, the fence is raised to 5.
    assert_eq!(written(&old.write(&[entry("s", 1)], false).unwrap()), 1);
    // The new active writes: the fence goes to 7.
    assert_eq!(written(&new.write(&[entry("s", 2)], false).unwrap()), 1);
    let fence: u64 = ::redis::cmd("GET").arg("{s}:ha-fence:sw1").query(&mut conn).unwrap();
    assert_eq!(fence, 7);
    // The old one, fast path and checking path alike: nothing written at all.
    for maybe_written in [false, true] {
        match old.write(&[entry("s", 3), entry("s", 4)], maybe_written) {
            Err(eslstream::sink::redis::WriteError::Fenced(_)) => {}
            other => panic!("expected fenced (maybe_written={maybe_written}), got {other:?}"),
        }
    }
    assert_eq!(sequences(&mut conn, "s"), [1, 2], "the fenced writes left no trace");
    // Unfenced writes (other sources) are not checked; the fenced fast path still writes once.
    old.set_fence(None);
    assert_eq!(written(&old.write(&[entry("t", 9)], false).unwrap()), 1);
    assert_eq!(written(&new.write(&[entry("s", 3)], false).unwrap()), 1);
    assert_eq!(sequences(&mut conn, "s"), [1, 2, 3]);
}

/// A transaction whose answer never came can reach Redis after the writer has retried it
/// (here a proxy holds it, as a partition does, and delivers it once the partition heals). The
/// retry retires the silent connection first, so the late transaction adds nothing; without
/// that, it adds a second copy of every entry (the transaction does not check the dedup bits).
/// Both guards: the script (the first transaction on a connection) and the `WATCH` the
/// previous transaction armed (every later one).
#[test]
fn a_transaction_that_arrives_after_its_retry_adds_nothing() {
    let redis = RedisServer::start();
    let mut conn = redis.connection();
    for (stream, retire, warm) in [
        ("late:first", true, false),
        ("late:later", true, true),
        ("late:first-not-retired", false, false),
        ("late:later-not-retired", false, true),
    ] {
        let proxy = TcpProxy::start(format!("127.0.0.1:{}", redis.port()).parse().unwrap());
        let config = RedisConfig::standalone(proxy.redis_url(), Duration::from_secs(5), Duration::from_millis(300));
        let mut silent = RedisSink::connect(&config).expect("connect through the proxy");
        let mut expected: Vec<u64> = Vec::new();
        if warm {
            // An answered transaction first: it arms the WATCH that guards the next one.
            assert_eq!(written(&silent.write(&[entry(stream, 100)], false).unwrap()), 1);
            expected.push(100);
        }
        let batch: Vec<Entry> = (1..=5).map(|s| entry(stream, s)).collect();
        proxy.set_blocked(true);
        let e = silent.write(&batch, false).expect_err("no answer through a partition");
        assert_eq!(e.kind(), "connection", "{e}");
        let unanswered = silent.take_unanswered().expect("the transaction went unanswered");
        assert_eq!(unanswered.stream, stream);
        assert_eq!(unanswered.watched.is_some(), warm, "{unanswered:?}");
        assert_eq!(silent.take_unanswered(), None, "taken once");
        drop(silent);

        let mut retry = sink(&redis);
        if retire {
            retry.retire(std::slice::from_ref(&unanswered)).expect("retire");
        }
        assert_eq!(written(&retry.write(&batch, true).expect("retry")), 5);
        expected.extend(1..=5);
        proxy.set_blocked(false);
        // The held transaction reaches Redis now; give it time to run.
        std::thread::sleep(Duration::from_millis(500));
        if !retire {
            expected.extend(1..=5);
        }
        assert_eq!(sequences(&mut conn, stream), expected, "{stream}");
    }
    // A live connection's transactions are not affected by another's retirement.
    let mut live = sink(&redis);
    for seq in [6, 7] {
        assert_eq!(written(&live.write(&[entry("late:later", seq)], false).unwrap()), 1);
    }
    assert_eq!(sequences(&mut conn, "late:later"), [100, 1, 2, 3, 4, 5, 6, 7]);
}
