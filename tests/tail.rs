//! `eslstream tail` as a child process against a real Redis holding entries the agent wrote
//! (simulator → agent → Redis, as in `tests/e2e.rs`): every entry once with `--since`, the
//! `--call` and `--event` filters, `--json` against what Redis holds, new entries printed
//! while it blocks, `--since` by entry id time on a literal key with an ACL user in the URL,
//! and exit code 0 on SIGINT.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use eslstream::esl::encode::{encode_plain, HeaderValue};
use serde_json::Value;
use support::*;

/// Redis with both streams filled by the agent from the simulator's traffic; the agent and
/// the simulator keep running (the simulator can be handed more frames).
struct Written {
    redis: RedisServer,
    sim: Simulator,
    agent: Agent,
    events: Vec<StreamEntry>,
    jobs: Vec<StreamEntry>,
    _spool: tempfile::TempDir,
}

fn written(events: u64) -> Written {
    let redis = RedisServer::start();
    let sim = Simulator::start(SimulateOptions { events: Some(events), ..Default::default() }).expect("simulator");
    let spool = tempfile::tempdir().expect("temp dir");
    let env = agent_env(sim.local_addr(), &redis.url(), spool.path(), free_port());
    // The default EVENTS_TO_PUBLISH: CHANNEL_EXECUTE(_COMPLETE), DTMF, ... to the jobs stream.
    let agent = start_agent(
        &env,
        &[("EVENTS_TO_PUBLISH", "BACKGROUND_JOB,CHANNEL_EXECUTE,CHANNEL_EXECUTE_COMPLETE,DTMF,DETECTED_SPEECH")],
    );
    assert!(sim.wait_done(Duration::from_secs(60)), "the simulator sent its events");
    let sent = sim.stats().events_sent;
    let mut conn = redis.connection();
    wait_until(Duration::from_secs(60), "every event in Redis", || {
        xlen(&mut conn, EVENTS) + xlen(&mut conn, JOBS) >= sent
    });
    let (events, jobs) = (read_stream(&mut conn, EVENTS), read_stream(&mut conn, JOBS));
    assert!(!events.is_empty() && !jobs.is_empty(), "both streams have entries");
    Written { redis, sim, agent, events, jobs, _spool: spool }
}

/// `eslstream tail ARGS` with only `REDIS_URL` (and `PATH`) set.
fn tail(url: &str, args: &[&str]) -> Agent {
    let mut argv = vec!["tail"];
    argv.extend_from_slice(args);
    let child = Agent::start(&argv, &[("REDIS_URL", url)]);
    wait_until(Duration::from_secs(10), "tail to start following", || {
        child.output().contains("eslstream tail: following")
    });
    child
}

/// What tail printed on stdout so far (its stderr lines start with `eslstream tail:`).
fn printed(child: &Agent) -> Vec<String> {
    child.output().lines().filter(|l| !l.starts_with("eslstream tail:")).map(str::to_owned).collect()
}

/// Waits for `n` printed lines, then a little longer to catch any extra; returns them all.
fn wait_lines(child: &Agent, n: usize) -> Vec<String> {
    wait_until(Duration::from_secs(30), &format!("{n} lines from tail"), || printed(child).len() >= n);
    std::thread::sleep(Duration::from_millis(600));
    printed(child)
}

/// SIGINT, and the exit code it gives (panics if tail does not exit within 5 s).
fn interrupt(child: &mut Agent) -> i32 {
    signal(child.pid(), libc::SIGINT);
    let code = child.wait_timeout(Duration::from_secs(5));
    code.unwrap_or_else(|| panic!("tail did not exit within 5 s of SIGINT:\n{}", child.output()))
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `Unique-ID`, `Channel-Call-UUID` and `Job-UUID` of an entry (what `--call` matches).
fn call_ids(e: &StreamEntry) -> Vec<String> {
    let event = json(&e.event);
    let mut ids = vec![e.unique_id.clone()];
    for h in ["Unique-ID", "Channel-Call-UUID", "Job-UUID"] {
        ids.extend(event[h].as_str().map(str::to_owned));
    }
    ids
}

#[test]
fn since_prints_every_entry_once_as_stored_and_sigint_exits_0() {
    let mut w = written(2_000);
    let url = w.redis.url();
    let mut child = tail(&url, &["--since", "1h", "--json"]);
    let total = w.events.len() + w.jobs.len();
    let lines = wait_lines(&child, total);
    assert_eq!(interrupt(&mut child), 0, "exit code after SIGINT");

    let stored: HashMap<(String, String), &StreamEntry> = w
        .events
        .iter()
        .map(|e| ((EVENTS.to_owned(), e.id.clone()), e))
        .chain(w.jobs.iter().map(|e| ((JOBS.to_owned(), e.id.clone()), e)))
        .collect();
    let mut seen = BTreeSet::new();
    for line in &lines {
        let v = json(line);
        let key =
            (v["stream"].as_str().unwrap_or_default().to_owned(), v["id"].as_str().unwrap_or_default().to_owned());
        let entry = stored.get(&key).unwrap_or_else(|| panic!("printed an entry Redis does not hold: {line}"));
        assert!(seen.insert(key.clone()), "printed twice: {key:?}");
        let fields = &v["fields"];
        assert_eq!(fields["event"], json(&entry.event), "the event field as stored");
        assert_eq!(fields["event_name"], entry.event_name.as_str());
        assert_eq!(fields["unique_id"], entry.unique_id.as_str());
        assert_eq!(fields["core_uuid"], entry.core_uuid.as_str());
        assert_eq!(fields["event_sequence"], entry.sequence.to_string().as_str());
    }
    assert_eq!(seen.len(), total, "every entry of both streams, once");
    assert_eq!(w.agent.stop(Duration::from_secs(10)), 0);
}

#[test]
fn call_and_event_filters_keep_only_what_was_asked_for() {
    let mut w = written(2_000);
    let url = w.redis.url();
    // (stream, entry): ids are unique within a stream only.
    let all: Vec<(&str, &StreamEntry)> =
        w.events.iter().map(|e| (EVENTS, e)).chain(w.jobs.iter().map(|e| (JOBS, e))).collect();

    // --call: a call with an answer, a hangup and applications in the jobs stream.
    let call = w
        .events
        .iter()
        .filter(|e| e.event_name == "CHANNEL_HANGUP")
        .map(|e| e.unique_id.clone())
        .find(|call| w.jobs.iter().any(|j| &j.unique_id == call))
        .expect("a call with a hangup and entries in the jobs stream");
    let expected: BTreeSet<(String, String)> = all
        .iter()
        .filter(|(_, e)| call_ids(e).iter().any(|id| id.eq_ignore_ascii_case(&call)))
        .map(|(stream, e)| (stream.to_string(), e.id.clone()))
        .collect();
    let mut child = tail(&url, &["--since", "1h", "--json", "--call", &call]);
    let lines = wait_lines(&child, expected.len());
    assert_eq!(interrupt(&mut child), 0);
    let got: BTreeSet<(String, String)> = lines
        .iter()
        .map(|l| json(l))
        .map(|v| (v["stream"].as_str().unwrap_or_default().to_owned(), v["id"].as_str().unwrap_or_default().to_owned()))
        .collect();
    assert_eq!(lines.len(), expected.len(), "each entry once");
    assert_eq!(got, expected, "--call {call}");

    // --event, readable lines: the event name, the call, and what matters for each.
    let wanted = ["CHANNEL_HANGUP", "DTMF"];
    let expected = all.iter().filter(|(_, e)| wanted.contains(&e.event_name.as_str())).count();
    assert!(w.jobs.iter().any(|e| e.event_name == "DTMF"), "the traffic has DTMF");
    let mut child = tail(&url, &["--since", "1h", "--event", "CHANNEL_HANGUP,dtmf"]);
    let lines = wait_lines(&child, expected);
    assert_eq!(interrupt(&mut child), 0);
    assert_eq!(lines.len(), expected, "{lines:#?}");
    for line in &lines {
        let words: Vec<&str> = line.split(' ').collect();
        assert!(words[0].ends_with('Z') && words[0].len() == 24, "an RFC 3339 time first: {line}");
        match (words[1], words[2]) {
            ("events", "CHANNEL_HANGUP") => {
                for part in ["caller=", "dest=", "cause="] {
                    assert!(line.contains(part), "{part} in {line}");
                }
            }
            ("jobs", "DTMF") => assert!(words.last().is_some_and(|w| w.starts_with("digit=")), "{line}"),
            _ => panic!("an event --event did not ask for: {line}"),
        }
    }
    assert_eq!(w.agent.stop(Duration::from_secs(10)), 0);
}

/// A plain-format event frame as FreeSWITCH sends it.
fn frame(headers: &[(&str, &str)]) -> Vec<u8> {
    let headers: Vec<(&str, HeaderValue)> = headers.iter().map(|(k, v)| (*k, HeaderValue::One(v))).collect();
    let mut body = Vec::new();
    encode_plain(&headers, None, &mut body);
    let mut out = format!("Content-Length: {}\nContent-Type: text/event-plain\n\n", body.len()).into_bytes();
    out.extend_from_slice(&body);
    out
}

#[test]
fn new_entries_are_printed_while_it_blocks() {
    let mut w = written(500);
    let url = w.redis.url();
    let mut child = tail(&url, &[]);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(printed(&child), Vec::<String>::new(), "without --since, only entries added from now on");

    let call = "7d2c3a9e-5b1f-4c8e-9a0d-3e6f1b2c4d5e";
    let core = "0b9f2e1a-6c3d-4e5f-8a7b-9c0d1e2f3a4b";
    let now = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros()).to_string();
    let common = |name: &'static str, seq: &'static str| {
        vec![("Event-Name", name), ("Core-UUID", core), ("Event-Sequence", seq)]
    };
    let mut dtmf = common("DTMF", "1");
    dtmf.extend([("Event-Date-Timestamp", now.as_str()), ("Unique-ID", call), ("DTMF-Digit", "5")]);
    let mut hangup = common("CHANNEL_HANGUP", "2");
    hangup.extend([
        ("Event-Date-Timestamp", now.as_str()),
        ("Unique-ID", call),
        ("Caller-Caller-ID-Number", "1000"),
        ("Caller-Caller-ID-Name", "Zoë O'Brien"),
        ("Caller-Destination-Number", "5000"),
        ("Hangup-Cause", "NORMAL_CLEARING"),
    ]);
    let pushed = Instant::now();
    w.sim.push_frames(vec![frame(&dtmf), frame(&hangup)]);
    let lines = wait_lines(&child, 2);
    println!("printed {:?} after the frames were sent:\n{}", pushed.elapsed(), lines.join("\n"));
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].ends_with(&format!(" jobs DTMF {call} digit=5")), "{}", lines[0]);
    assert!(
        lines[1].ends_with(&format!(
            r#" events CHANNEL_HANGUP {call} caller=1000 caller_name="Zoë O'Brien" dest=5000 cause=NORMAL_CLEARING"#
        )),
        "{}",
        lines[1]
    );
    assert_eq!(interrupt(&mut child), 0, "exit code after SIGINT");
    assert_eq!(w.agent.stop(Duration::from_secs(10)), 0);
}

#[test]
fn since_counts_by_entry_id_time_on_a_literal_key_with_an_acl_user() {
    let redis = RedisServer::start();
    let mut conn = redis.connection();
    let key = "oncall:literal";
    let (secs, micros): (u64, u64) = ::redis::cmd("TIME").query(&mut conn).expect("TIME");
    let now_ms = secs * 1000 + micros / 1000;
    for (ago, name) in
        [(2 * 3_600_000, "TWO_HOURS_AGO"), (10 * 60_000, "TEN_MINUTES_AGO"), (30_000, "HALF_A_MINUTE_AGO")]
    {
        let event = format!(r#"{{"Event-Name":"{name}"}}"#);
        let _: String = ::redis::cmd("XADD")
            .arg(key)
            .arg(format!("{}-0", now_ms - ago))
            .arg("event")
            .arg(&event)
            .arg("event_name")
            .arg(name)
            .query(&mut conn)
            .expect("XADD");
    }
    // A read-only user: what README.md says tail needs.
    redis.cli(&["ACL", "SETUSER", "oncall", "on", ">s3cret", "~oncall:*", "+xread", "+xrevrange", "+time"]);
    let url = format!("redis://oncall:s3cret@127.0.0.1:{}/0", redis.port());

    let mut child = tail(&url, &["--stream", key, "--since", "5m"]);
    let lines = wait_lines(&child, 1);
    assert_eq!(interrupt(&mut child), 0);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].ends_with(&format!(" {key} HALF_A_MINUTE_AGO -")), "{}", lines[0]);

    let mut child = tail(&url, &["--stream", key, "--since", "1h", "--json"]);
    let lines = wait_lines(&child, 2);
    assert_eq!(interrupt(&mut child), 0);
    let names: Vec<String> =
        lines.iter().map(|l| json(l)["fields"]["event_name"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(names, ["TEN_MINUTES_AGO", "HALF_A_MINUTE_AGO"]);
    assert!(child.output().contains("redis://oncall:********@"), "the password is masked:\n{}", child.output());
}
