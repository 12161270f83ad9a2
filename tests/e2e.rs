//! End to end: real FreeSWITCH bytes and simulated traffic through the agent binary into a
//! real redis-server, counted entry by entry.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use eslstream::envelope::BodyFormat;
use eslstream::esl::event::{scan_meta, EventFormat};
use eslstream::esl::frame::FrameDecoder;
use eslstream::esl::json::event_json;
use eslstream::esl::json_scan::scan_json;
use support::*;

/// The ordering key (`Unique-ID`, else `Job-UUID`) and `Event-Sequence` of a captured frame,
/// read from its text (plain: `Name: value` lines; json: the object).
fn call_and_sequence(frame: &[u8]) -> (String, u64) {
    let text = String::from_utf8_lossy(frame);
    let body = text.split_once("\n\n").map_or("", |(_, b)| b);
    let get = |name: &str| -> Option<String> {
        if body.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(body).ok()?;
            v.get(name)?.as_str().map(str::to_owned)
        } else {
            body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(": ").map(str::to_owned))
        }
    };
    let call = get("Unique-ID").or_else(|| get("Job-UUID")).unwrap_or_default();
    (call, get("Event-Sequence").and_then(|s| s.parse().ok()).unwrap_or(0))
}

/// Replays a capture's event frames and checks one entry per event, in capture order per
/// call, with the contract's fields.
fn replay_capture(name: &str, expected_events: u64) {
    let redis = RedisServer::start();
    let frames = event_frames(&capture_bytes(name));
    assert_eq!(frames.len() as u64, expected_events, "event frames in {name} (CAPTURES.md)");
    // Independent reading of the capture: which frames are api_exec BACKGROUND_JOBs.
    let jobs_expected = frames
        .iter()
        .filter(|f| {
            let t = String::from_utf8_lossy(f);
            (t.contains("Event-Name: BACKGROUND_JOB") || t.contains("\"Event-Name\":\"BACKGROUND_JOB\""))
                && (t.contains("Event-Calling-Function: api_exec")
                    || t.contains("\"Event-Calling-Function\":\"api_exec\""))
        })
        .count() as u64;
    assert!(jobs_expected > 0);
    let frames_sent = frames.clone();
    let sim = Simulator::start(SimulateOptions { replay: frames, events: Some(0), ..Default::default() }).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let env = agent_env(sim.local_addr(), &redis.url(), spool.path(), free_port());
    let mut agent = start_agent(&env, &[("EVENTS_TO_PUBLISH", "BACKGROUND_JOB")]);
    let mut conn = redis.connection();
    wait_until(Duration::from_secs(30), "all capture events in Redis", || {
        xlen(&mut conn, EVENTS) + xlen(&mut conn, JOBS) >= expected_events
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(agent.stop(Duration::from_secs(10)), 0, "clean exit");

    let events = read_stream(&mut conn, EVENTS);
    let jobs = read_stream(&mut conn, JOBS);
    assert_eq!(jobs.len() as u64, jobs_expected, "api_exec BACKGROUND_JOBs in the jobs stream");
    assert!(jobs.iter().all(|e| e.event_name == "BACKGROUND_JOB"));
    assert_exactly_once(&events, expected_events - jobs_expected);
    assert_exactly_once(&jobs, jobs_expected);
    // FreeSWITCH numbers events at creation and may send them out of sequence: the order to
    // keep is the order in the capture.
    let sent: Vec<(String, u64)> = frames_sent.iter().map(|f| call_and_sequence(f)).collect();
    assert_call_order_as_sent(&events, &sent);
    assert_call_order_as_sent(&jobs, &sent);
    for e in events.iter().chain(&jobs) {
        assert_eq!(e.core_uuid, "c76fa84c-21b9-496c-ab66-57208cf171a5");
        let json: serde_json::Value = serde_json::from_str(&e.event).expect("event field is JSON");
        assert_eq!(json["Event-Name"], e.event_name.as_str());
        assert_eq!(json["Event-Sequence"], e.sequence.to_string().as_str());
        if let Some(u) = json.get("Unique-ID").and_then(|v| v.as_str()) {
            assert_eq!(u, e.unique_id);
        }
    }
    // Values read by hand from the capture text (see CAPTURES.md).
    let unicode = events.iter().find(|e| e.event.contains("esl_capture::test")).expect("CUSTOM esl_capture::test");
    let json: serde_json::Value = serde_json::from_str(&unicode.event).unwrap();
    assert_eq!(json["X-Unicode"], "Grüße 東京 & co=100%");
    assert_eq!(unicode.event_name, "CUSTOM");
    let with_body = events.iter().find(|e| e.event.contains("esl_capture::with_body")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&with_body.event).unwrap();
    let body = json["_body"].as_str().unwrap();
    assert_eq!(body.len(), 86);
    assert!(body.contains("\n\n") && body.contains("Content-Length: 999"));
    let zoe = events.iter().find(|e| e.event.contains("Zo\u{eb} O'Brien")).expect("caller name decoded");
    let json: serde_json::Value = serde_json::from_str(&zoe.event).unwrap();
    assert_eq!(json["Caller-Caller-ID-Name"], "Zoë O'Brien & co: 100%");
    // Every entry's `event` field, exactly: the switch's JSON bytes as they came where each
    // key occurs once, else the object with the first occurrence of each key; a plain event
    // decoded. Computed here from the capture, independently of the agent.
    let mut expected: HashMap<(String, u64), String> = HashMap::new();
    let mut verbatim = 0;
    for frame in &frames_sent {
        let (format, body) = frame_body(frame);
        let mut out = Vec::new();
        match format {
            EventFormat::Json if scan_json(&body).unwrap().verbatim => {
                out.extend_from_slice(&body);
                verbatim += 1;
            }
            EventFormat::Json => {
                event_json(BodyFormat::EslJson, &body, &mut out).unwrap();
            }
            EventFormat::Plain => {
                event_json(BodyFormat::EslPlain, &body, &mut out).unwrap();
            }
        }
        let meta = scan_meta(format, &body).unwrap();
        expected.insert((meta.core_uuid.to_string(), meta.sequence.parse().unwrap()), String::from_utf8(out).unwrap());
    }
    for e in events.iter().chain(&jobs) {
        assert_eq!(e.event, expected[&(e.core_uuid.clone(), e.sequence)], "event {} {}", e.event_name, e.sequence);
    }
    if name.starts_with("json") {
        assert!(verbatim * 10 > expected.len() * 8, "{verbatim} of {} written as they came", expected.len());
    }
}

/// A frame's event format and body.
fn frame_body(frame: &[u8]) -> (EventFormat, bytes::Bytes) {
    let mut buf = bytes::BytesMut::from(frame);
    let frame = FrameDecoder::default().decode(&mut buf).unwrap().expect("one whole frame");
    (EventFormat::from_content_type(frame.content_type().unwrap()).unwrap(), frame.body().clone())
}

#[test]
fn plain_capture_replays_into_redis_exactly_once() {
    replay_capture("plain.esl", 1009);
}

#[test]
fn json_capture_replays_into_redis_exactly_once() {
    replay_capture("json.esl", 1012);
}

/// The load harness's real traffic: the plain capture on a loop. Every pass is a new
/// `Core-UUID`, so idempotency keeps every copy: three passes are three times the capture, each
/// pass exactly once and in capture order per call.
#[test]
fn plain_capture_on_a_loop_keeps_every_pass() {
    const PASSES: u64 = 3;
    let redis = RedisServer::start();
    let frames = event_frames(&capture_bytes("plain.esl"));
    let n = frames.len() as u64;
    let sent: Vec<(String, u64)> = frames.iter().map(|f| call_and_sequence(f)).collect();
    let sim = Simulator::start(SimulateOptions {
        replay: frames,
        replay_loop: true,
        events: Some(PASSES * n),
        ..Default::default()
    })
    .unwrap();
    let spool = tempfile::tempdir().unwrap();
    let env = agent_env(sim.local_addr(), &redis.url(), spool.path(), free_port());
    let mut agent = start_agent(&env, &[("EVENTS_TO_PUBLISH", "BACKGROUND_JOB")]);
    let mut conn = redis.connection();
    assert!(sim.wait_done(Duration::from_secs(60)), "simulator sent every pass");
    assert_eq!(sim.stats().traffic_sent, PASSES * n);
    let total = sim.stats().events_sent;
    wait_until(Duration::from_secs(30), "every pass in Redis", || {
        xlen(&mut conn, EVENTS) + xlen(&mut conn, JOBS) >= total
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(agent.stop(Duration::from_secs(10)), 0, "clean exit");
    let (events, jobs) = (read_stream(&mut conn, EVENTS), read_stream(&mut conn, JOBS));
    assert_eq!((events.len() + jobs.len()) as u64, total, "no copy suppressed as a duplicate, none lost");
    // Each stream, pass by pass (the simulator's own heartbeats aside).
    let mut per_pass: std::collections::BTreeMap<&str, u64> = Default::default();
    for stream in [&events, &jobs] {
        let mut passes: std::collections::BTreeMap<&str, Vec<StreamEntry>> = Default::default();
        for e in stream.iter().filter(|e| e.core_uuid != sim.core_uuid()) {
            passes.entry(&e.core_uuid).or_default().push(e.clone());
        }
        for (core, pass) in passes {
            assert_exactly_once(&pass, pass.len() as u64);
            assert_call_order_as_sent(&pass, &sent);
            *per_pass.entry(core).or_default() += pass.len() as u64;
        }
    }
    assert_eq!(per_pass.len() as u64, PASSES, "one Core-UUID per pass: {per_pass:?}");
    for (core, count) in per_pass {
        assert_ne!(core, "c76fa84c-21b9-496c-ab66-57208cf171a5", "the recorded Core-UUID is replaced");
        assert_eq!(count, n, "pass {core}: the whole capture, once");
    }
}

#[test]
fn simulated_100k_events_arrive_exactly_once_in_call_order() {
    let redis = RedisServer::start();
    let sim = Simulator::start(SimulateOptions { events: Some(100_000), ..Default::default() }).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let env = agent_env(sim.local_addr(), &redis.url(), spool.path(), free_port());
    let mut agent = start_agent(&env, &[]);
    assert!(sim.wait_done(Duration::from_secs(120)), "simulator sent everything");
    let sent = sim.stats().events_sent;
    assert!(sent >= 100_000);
    let mut conn = redis.connection();
    wait_until(Duration::from_secs(120), "100k entries", || xlen(&mut conn, EVENTS) >= sent);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(agent.stop(Duration::from_secs(10)), 0);
    assert_exactly_once_in_order(&read_stream(&mut conn, EVENTS), sent);
}

#[test]
fn reference_entry_format_writes_the_event_field_alone() {
    let redis = RedisServer::start();
    let sim = Simulator::start(SimulateOptions { events: Some(200), ..Default::default() }).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let env = agent_env(sim.local_addr(), &redis.url(), spool.path(), free_port());
    let mut agent = start_agent(&env, &[("STREAM_ENTRY_FORMAT", "reference")]);
    let mut conn = redis.connection();
    assert!(sim.wait_done(Duration::from_secs(30)));
    let sent = sim.stats().events_sent;
    wait_until(Duration::from_secs(30), "entries", || xlen(&mut conn, EVENTS) >= sent);
    assert_eq!(agent.stop(Duration::from_secs(10)), 0);
    let fields: Vec<String> = ::redis::cmd("XRANGE")
        .arg(EVENTS)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query::<::redis::Value>(&mut conn)
        .map(|v| format!("{v:?}"))
        .into_iter()
        .collect();
    assert!(fields[0].contains("event"));
    assert!(!fields[0].contains("event_sequence"), "{}", fields[0]);
}

#[test]
fn configuration_errors_exit_2_naming_the_variable() {
    let mut bad = Agent::start(&["check-config"], &[("WRITER_WORKERS", "many")]);
    assert_eq!(bad.wait_timeout(Duration::from_secs(10)), Some(2));
    let out = bad.output();
    assert!(out.contains("WRITER_WORKERS") && out.contains("many") && out.contains("whole number"), "{out}");
    let mut agent = Agent::start(&[], &[("ESL_RECONNECT_DELAY", "3")]);
    assert_eq!(agent.wait_timeout(Duration::from_secs(10)), Some(2), "the agent itself refuses to start");
    let mut good = Agent::start(&["check-config"], &[("ESL_PASSWORD", "topsecret"), ("REDIS_REMOTE_POOL_SIZE", "100")]);
    assert_eq!(good.wait_timeout(Duration::from_secs(10)), Some(0));
    let out = good.output();
    assert!(out.contains("ESL_PASSWORD=********") && !out.contains("topsecret"), "{out}");
    assert!(out.contains("REDIS_REMOTE_POOL_SIZE is accepted and ignored"), "{out}");
}

/// A fake switch that accepts, authenticates and subscribes, then never says another word
/// (and ignores `api status`): the agent must drop it and connect again.
#[test]
fn silent_event_socket_is_probed_and_reconnected() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = s.write_all(b"Content-Type: auth/request\n\n");
            let mut buf = [0u8; 4096];
            for reply in [&b"+OK accepted"[..], b"+OK event listener enabled plain"] {
                let _ = s.read(&mut buf);
                let _ = s.write_all(&[b"Content-Type: command/reply\nReply-Text: ", reply, b"\n\n"].concat());
            }
            held.push(s); // silent from now on
        }
    });
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().unwrap();
    let mut agent = start_agent(
        &agent_env(addr, &redis.url(), spool.path(), free_port()),
        &[("ESL_SILENCE_TIMEOUT", "300ms"), ("ESL_HEALTH_CHECK_TIMEOUT", "300ms")],
    );
    wait_until(Duration::from_secs(20), "a second connection after the silence", || {
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2
    });
    assert_eq!(agent.stop(Duration::from_secs(10)), 0);
    assert!(agent.output().contains("api status"), "{}", agent.output());
}

/// Simulated calls whose variables hold a literal `%XX` (`%2B15551234`, as carriers escape a
/// SIP user part): the JSON format carries them exactly; the plain format cannot (FreeSWITCH's
/// `switch_url_encode` leaves an existing `%XX` as it is, so the agent decodes it).
#[test]
fn values_with_a_literal_percent_are_exact_in_json_and_decoded_in_plain() {
    for (format, from_user, percent, tag) in [
        ("json", "%2B15551234", "100%25 a%20b", "a;b c=d&e f%20g/ü€😀"),
        ("plain", "+15551234", "100% a b", "a;b c=d&e f g/ü€😀"),
    ] {
        let redis = RedisServer::start();
        let sim = Simulator::start(SimulateOptions { events: Some(3000), seed: 7, ..Default::default() }).unwrap();
        let spool = tempfile::tempdir().unwrap();
        let env = agent_env(sim.local_addr(), &redis.url(), spool.path(), free_port());
        let mut agent = start_agent(&env, &[("ESL_EVENT_FORMAT", format), ("EVENTS_TO_PUSH", "ALL")]);
        assert!(sim.wait_done(Duration::from_secs(60)), "simulator sent everything");
        let sent = sim.stats().events_sent;
        let mut conn = redis.connection();
        wait_until(Duration::from_secs(60), "every event", || xlen(&mut conn, EVENTS) >= sent);
        assert_eq!(agent.stop(Duration::from_secs(10)), 0);
        let entries = read_stream(&mut conn, EVENTS);
        assert_exactly_once_in_order(&entries, sent);
        let with: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| serde_json::from_str::<serde_json::Value>(&e.event).expect("event is JSON"))
            .filter(|v| v.get("variable_sip_from_user").is_some())
            .collect();
        assert!(with.len() > 10, "{format}: {} events with the variables", with.len());
        for v in &with {
            assert_eq!(v["variable_sip_from_user"], from_user, "{format}");
            assert_eq!(v["variable_esl_percent"], percent, "{format}");
            assert_eq!(v["variable_esl_tag"], tag, "{format}");
        }
    }
}
