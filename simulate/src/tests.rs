//! Tests of the simulator over real loopback TCP, with a minimal local frame reader (the
//! project's own parser is written elsewhere and not used here).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::*;

const AUTH_REQUEST: &[u8] = b"Content-Type: auth/request\n\n";
const ACCEPTED: &[u8] = b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n";
const DISCONNECT: &[u8] =
    b"Content-Type: text/disconnect-notice\nContent-Length: 67\n\nDisconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n";

/// A frame as read off the socket.
struct Frame {
    raw: Vec<u8>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Frame {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A plain event body: decoded headers and the inner body.
struct PlainEvent {
    headers: Vec<(String, String)>,
    raw_headers: String,
    body: Option<Vec<u8>>,
}

impl PlainEvent {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(sim: &Simulator) -> Client {
        let stream = TcpStream::connect(sim.local_addr()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client { stream, buf: Vec::new() }
    }

    fn login(sim: &Simulator, subscription: &str) -> Client {
        let mut c = Client::connect(sim);
        assert_eq!(c.frame().unwrap().raw, AUTH_REQUEST);
        c.send("auth ClueCon");
        assert_eq!(c.frame().unwrap().raw, ACCEPTED);
        c.send(subscription);
        let reply = c.frame().unwrap();
        assert!(reply.header("Reply-Text").unwrap().starts_with("+OK event listener enabled"), "{subscription}");
        c
    }

    fn send(&mut self, command: &str) {
        self.stream.write_all(format!("{command}\n\n").as_bytes()).unwrap();
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 64 << 10];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next whole frame, or `None` at EOF / timeout.
    fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = find(&self.buf, b"\n\n") {
                let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
                let headers: Vec<(String, String)> = head
                    .lines()
                    .map(|l| {
                        let (n, v) = l.split_once(": ").unwrap_or((l.trim_end_matches(':'), ""));
                        (n.to_owned(), v.to_owned())
                    })
                    .collect();
                let len = headers.iter().find(|(n, _)| n == "Content-Length").map_or(0, |(_, v)| v.parse().unwrap());
                if self.buf.len() >= end + 2 + len {
                    let raw: Vec<u8> = self.buf.drain(..end + 2 + len).collect();
                    let body = raw[end + 2..].to_vec();
                    return Some(Frame { raw, headers, body });
                }
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// The next event frame (skipping replies).
    fn event(&mut self) -> Option<Frame> {
        loop {
            let f = self.frame()?;
            if f.header("Content-Type").is_some_and(|t| t.starts_with("text/event-")) {
                return Some(f);
            }
        }
    }

    fn at_eof(&mut self) -> bool {
        self.buf.is_empty() && !self.fill()
    }
}

/// Parses a `text/event-plain` body strictly: header lines, then either a blank line or
/// `Content-Length: n` + blank line + exactly n bytes.
fn parse_plain(body: &[u8]) -> PlainEvent {
    let end = find(body, b"\n\n").expect("header block ends in a blank line");
    let raw_headers = String::from_utf8(body[..end + 1].to_vec()).expect("headers are ASCII");
    assert!(raw_headers.is_ascii(), "plain headers must be percent-encoded ASCII");
    let mut headers = Vec::new();
    for line in raw_headers.lines() {
        let (name, value) = line.split_once(": ").unwrap_or_else(|| panic!("bad header line {line:?}"));
        assert!(!value.contains(' '), "unencoded space in {line:?}");
        headers.push((name.to_owned(), percent_decode(value)));
    }
    let rest = &body[end + 2..];
    let body = match headers.last() {
        Some((n, v)) if n == "Content-Length" => {
            let n: usize = v.parse().unwrap();
            assert_eq!(rest.len(), n, "inner body length");
            headers.pop();
            Some(rest.to_vec())
        }
        _ => {
            assert!(rest.is_empty(), "no bytes after an event without body");
            None
        }
    };
    PlainEvent { headers, raw_headers, body }
}

fn options() -> SimulateOptions {
    SimulateOptions { quiet: true, ..SimulateOptions::default() }
}

#[test]
fn handshake_and_replies_are_byte_exact() {
    let sim = Simulator::start(SimulateOptions { events: Some(0), ..options() }).unwrap();
    let mut c = Client::connect(&sim);
    assert_eq!(c.frame().unwrap().raw, AUTH_REQUEST);
    c.send("auth ClueCon");
    assert_eq!(c.frame().unwrap().raw, ACCEPTED);
    c.stream.write_all(b"event plain ALL\r\n\r\n").unwrap();
    assert_eq!(
        c.frame().unwrap().raw,
        b"Content-Type: command/reply\nReply-Text: +OK event listener enabled plain\n\n"
    );
    c.send("api no_such_command_xyz");
    let body = b"-ERR no_such_command_xyz Command not found!\n";
    let expected =
        [format!("Content-Type: api/response\nContent-Length: {}\n\n", body.len()).as_bytes(), body].concat();
    assert_eq!(c.frame().unwrap().raw, expected);
    c.send("api status");
    let status = c.frame().unwrap();
    assert_eq!(status.header("Content-Type"), Some("api/response"));
    let text = String::from_utf8(status.body).unwrap();
    assert!(text.starts_with("UP 0 years, 0 days, 0 hours, 0 minutes,"), "{text}");
    assert!(text.contains("\nFreeSWITCH (Version 1.11.1-release  64bit) is ready\n"), "{text}");
    c.send("nolog");
    assert_eq!(c.frame().unwrap().raw, b"Content-Type: command/reply\nReply-Text: +OK no longer logging\n\n");
    c.send("log 7");
    assert_eq!(c.frame().unwrap().raw, b"Content-Type: command/reply\nReply-Text: +OK log level 7 [7]\n\n");
    c.send("frobnicate");
    assert_eq!(c.frame().unwrap().raw, b"Content-Type: command/reply\nReply-Text: -ERR command not found\n\n");
    c.send("exit");
    assert_eq!(c.frame().unwrap().raw, b"Content-Type: command/reply\nReply-Text: +OK bye\n\n");
    assert_eq!(c.frame().unwrap().raw, DISCONNECT);
    assert!(c.at_eof());
}

#[test]
fn bad_password_is_refused_and_closed() {
    let sim = Simulator::start(options()).unwrap();
    let mut c = Client::connect(&sim);
    assert_eq!(c.frame().unwrap().raw, AUTH_REQUEST);
    c.send("event plain ALL");
    assert_eq!(c.frame().unwrap().raw, b"Content-Type: command/reply\nReply-Text: -ERR command not found\n\n");
    c.send("auth wrong");
    assert_eq!(c.frame().unwrap().raw, b"Content-Type: command/reply\nReply-Text: -ERR invalid\n\n");
    assert_eq!(c.frame().unwrap().raw, DISCONNECT);
    assert!(c.at_eof());
    assert_eq!(sim.stats().events_sent, 0);
}

#[test]
fn garbage_input_closes_only_that_connection() {
    let sim = Simulator::start(SimulateOptions { events: Some(5), ..options() }).unwrap();
    let mut bad = Client::connect(&sim);
    bad.stream.write_all(&vec![b'x'; (1 << 20) + 100]).unwrap_or(());
    while bad.frame().is_some() {}
    let mut good = Client::login(&sim, "event plain ALL");
    for _ in 0..5 {
        parse_plain(&good.event().unwrap().body);
    }
}

#[test]
fn generated_events_decode_with_increasing_sequences_and_encoded_values() {
    let n = 3000;
    let sim = Simulator::start(SimulateOptions { events: Some(n), start_sequence: 1000, ..options() }).unwrap();
    let mut c = Client::login(&sim, "event plain ALL");
    let mut last = 999;
    let mut names = HashSet::new();
    let mut unique_ids = HashSet::new();
    let mut raw = String::new();
    let mut big = 0;
    for _ in 0..n {
        let frame = c.event().expect("event");
        assert_eq!(frame.headers[0].0, "Content-Length", "events announce their length first");
        assert_eq!(frame.header("Content-Type"), Some("text/event-plain"));
        let ev = parse_plain(&frame.body);
        assert_eq!(ev.get("Core-UUID"), Some(sim.core_uuid()));
        let seq: u64 = ev.get("Event-Sequence").unwrap().parse().unwrap();
        assert!(seq > last, "sequence {seq} after {last}");
        last = seq;
        let ts: i64 = ev.get("Event-Date-Timestamp").unwrap().parse().unwrap();
        assert!((eslstream::envelope::now_us() - ts).abs() < 60_000_000);
        let name = ev.get("Event-Name").unwrap().to_owned();
        if name == "CUSTOM" {
            assert_eq!(ev.headers[0].0, "Event-Subclass", "subclass comes first, as in FreeSWITCH");
            names.insert(format!("CUSTOM {}", ev.get("Event-Subclass").unwrap()));
        }
        if name == "BACKGROUND_JOB" {
            assert_eq!(ev.get("Event-Calling-Function"), Some("api_exec"));
            assert!(ev.get("Job-UUID").is_some());
            assert!(ev.body.as_ref().is_some_and(|b| !b.is_empty()));
        }
        if name == "CHANNEL_HANGUP_COMPLETE" {
            big = big.max(frame.body.len());
        }
        if let Some(id) = ev.get("Unique-ID") {
            unique_ids.insert(id.to_owned());
        }
        raw.push_str(&ev.raw_headers);
        names.insert(name);
    }
    for expected in [
        "CHANNEL_CREATE",
        "CHANNEL_ORIGINATE",
        "CHANNEL_OUTGOING",
        "CHANNEL_STATE",
        "CHANNEL_CALLSTATE",
        "CODEC",
        "CHANNEL_ANSWER",
        "CALL_UPDATE",
        "DTMF",
        "PLAYBACK_START",
        "PLAYBACK_STOP",
        "CHANNEL_EXECUTE",
        "CHANNEL_EXECUTE_COMPLETE",
        "CHANNEL_HANGUP",
        "CHANNEL_HANGUP_COMPLETE",
        "CHANNEL_DESTROY",
        "API",
        "BACKGROUND_JOB",
        "CUSTOM sofia::register",
        "CUSTOM conference::maintenance",
    ] {
        assert!(names.contains(expected), "no {expected} in {names:?}");
    }
    assert!(unique_ids.len() > 20);
    assert!(big >= 5000, "largest CHANNEL_HANGUP_COMPLETE is only {big} bytes");
    for encoded in
        ["Zo%C3%AB", "%E6%9D%B1%E4%BA%AC", "%2B49", "%26", "%3A", "%25", "%20", "ARRAY%3A%3A", "f%20g", "a%09b"]
    {
        assert!(raw.contains(encoded), "no {encoded} in generated values");
    }
    assert!(sim.wait_done(Duration::from_secs(5)));
    assert_eq!(sim.stats().traffic_sent, n);
}

#[test]
fn json_events_are_single_objects_with_string_values() {
    let sim = Simulator::start(SimulateOptions { events: Some(500), ..options() }).unwrap();
    let mut c = Client::login(&sim, "event json ALL");
    let mut saw_array = false;
    let mut saw_body = false;
    for _ in 0..500 {
        let frame = c.event().unwrap();
        assert_eq!(frame.header("Content-Type"), Some("text/event-json"));
        let v: serde_json::Value = serde_json::from_slice(&frame.body).unwrap();
        let obj = v.as_object().unwrap();
        for (k, val) in obj {
            match val {
                serde_json::Value::String(_) => {}
                serde_json::Value::Array(items) => {
                    saw_array = true;
                    assert!(items.iter().all(|i| i.is_string()), "{k}");
                }
                other => panic!("{k} is {other}"),
            }
        }
        saw_body |= obj.contains_key("_body");
    }
    assert!(saw_array && saw_body);
}

#[test]
fn subscription_filters_like_freeswitch() {
    let sim = Simulator::start(SimulateOptions { events: Some(400), ..options() }).unwrap();
    let mut c = Client::login(&sim, "event plain CHANNEL_ANSWER CUSTOM sofia::register");
    let mut got = HashSet::new();
    while sim.stats().traffic_sent < 400 || !c.buf.is_empty() {
        c.stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let Some(frame) = c.event() else { break };
        let ev = parse_plain(&frame.body);
        let name = ev.get("Event-Name").unwrap();
        let key = format!("{name} {}", ev.get("Event-Subclass").unwrap_or(""));
        got.insert(key.trim().to_owned());
    }
    let expected: HashSet<String> =
        ["CHANNEL_ANSWER", "CUSTOM sofia::register"].iter().map(|s| s.to_string()).collect();
    assert_eq!(got, expected);
}

#[test]
fn no_events_flow_before_a_subscription() {
    let sim = Simulator::start(SimulateOptions { rate: Some(f64::INFINITY), ..options() }).unwrap();
    let mut c = Client::connect(&sim);
    c.frame().unwrap();
    c.send("auth ClueCon");
    c.frame().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sim.stats().events_sent, 0);
    c.send("api status");
    assert_eq!(c.frame().unwrap().header("Content-Type"), Some("api/response"));
}

#[test]
fn bgapi_replies_first_then_fires_background_job() {
    let sim = Simulator::start(SimulateOptions { events: Some(0), ..options() }).unwrap();
    let mut c = Client::login(&sim, "event plain BACKGROUND_JOB");
    c.send("bgapi status");
    let reply = c.frame().unwrap();
    let job = reply.header("Job-UUID").unwrap().to_owned();
    assert_eq!(reply.header("Reply-Text"), Some(format!("+OK Job-UUID: {job}").as_str()));
    let ev = parse_plain(&c.event().unwrap().body);
    assert_eq!(ev.get("Event-Name"), Some("BACKGROUND_JOB"));
    assert_eq!(ev.get("Job-UUID"), Some(job.as_str()));
    assert_eq!(ev.get("Job-Command"), Some("status"));
    assert_eq!(ev.get("Event-Calling-Function"), Some("api_exec"));
    let body = String::from_utf8(ev.body.unwrap()).unwrap();
    assert!(body.contains("is ready"), "{body}");
}

#[test]
fn cut_mid_frame_event_is_resent_whole_on_the_next_connection() {
    let n = 200;
    let fault = Fault { after_events: 50, mid_frame: true, repeat: false };
    let sim = Simulator::start(SimulateOptions { events: Some(n), fault: Some(fault), ..options() }).unwrap();
    let mut first = Client::login(&sim, "event plain ALL");
    let mut seqs = Vec::new();
    while let Some(frame) = first.event() {
        seqs.push(parse_plain(&frame.body).get("Event-Sequence").unwrap().parse::<u64>().unwrap());
    }
    assert_eq!(seqs.len(), 50);
    assert!(!first.buf.is_empty(), "half a frame was left behind");
    let mut second = Client::login(&sim, "event plain ALL");
    while seqs.len() < n as usize {
        let frame = second.event().expect("the rest arrives on the new connection");
        seqs.push(parse_plain(&frame.body).get("Event-Sequence").unwrap().parse::<u64>().unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
    assert_eq!(seqs[50], seqs[49] + 1, "nothing skipped at the cut");
    assert!(sim.wait_done(Duration::from_secs(5)));
    assert_eq!(sim.stats().traffic_sent, n);
    assert_eq!(sim.stats().total_connections, 2);
}

#[test]
fn replayed_capture_frames_arrive_byte_for_byte() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/esl-captures/plain.esl");
    let capture = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read the capture {path}: {e}"));
    let frames = event_frames(&capture);
    assert_eq!(frames.len(), 1009, "CAPTURES.md counts 1009 plain events");
    let sim = Simulator::start(SimulateOptions { events: Some(0), replay: frames.clone(), ..options() }).unwrap();
    let mut c = Client::login(&sim, "event plain ALL");
    for expected in &frames {
        assert_eq!(&c.event().unwrap().raw, expected);
    }
    assert_eq!(sim.stats().events_sent, 1009);
}

#[test]
fn paced_rate_is_close_to_target() {
    let sim = Simulator::start(SimulateOptions { rate: Some(2000.0), ..options() }).unwrap();
    let mut c = Client::login(&sim, "event plain ALL");
    let start = std::time::Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_millis(1000) {
        c.event().unwrap();
        n += 1;
    }
    assert!((1400..=2600).contains(&n), "{n} events in 1s at 2000/s");
}

#[test]
fn heartbeat_and_reschedule_are_sent() {
    let sim =
        Simulator::start(SimulateOptions { cps: 0.0, heartbeat: Duration::from_millis(100), ..options() }).unwrap();
    let mut c = Client::login(&sim, "event plain HEARTBEAT RE_SCHEDULE");
    let a = parse_plain(&c.event().unwrap().body);
    let b = parse_plain(&c.event().unwrap().body);
    assert_eq!(a.get("Event-Name"), Some("HEARTBEAT"));
    assert_eq!(a.get("Event-Info"), Some("System Ready"));
    assert_eq!(b.get("Event-Name"), Some("RE_SCHEDULE"));
}

/// FreeSWITCH compares the first five letters of the command: `events json ...` subscribes,
/// in JSON, like `event json ...`.
#[test]
fn events_is_event_too() {
    let sim = Simulator::start(SimulateOptions { events: Some(50), ..options() }).unwrap();
    let mut c = Client::login(&sim, "events json ALL");
    c.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let frame = c.event().expect("an event");
    assert_eq!(frame.header("Content-Type"), Some("text/event-json"));
    assert!(frame.body.starts_with(b"{"));
}

/// As in FreeSWITCH, each listener has its own queue: one that stops reading does not hold up
/// the others, and gets every event once it reads again. (Paced: an unpaced run goes as fast
/// as the slowest client reads.)
#[test]
fn a_listener_that_stops_reading_holds_no_one_else_up() {
    const N: usize = 20_000; // tens of megabytes: far more than a socket's buffers
    let paced = SimulateOptions { rate: Some(20_000.0), events: Some(N as u64), min_listeners: 2, ..options() };
    let sim = Simulator::start(paced).unwrap();
    let mut stalled = Client::login(&sim, "event plain ALL");
    let mut reader = Client::login(&sim, "event plain ALL");
    let start = std::time::Instant::now();
    let count = |c: &mut Client| {
        let mut seqs = HashSet::new();
        while seqs.len() < N {
            let frame = c.event().expect("every event");
            let event = parse_plain(&frame.body);
            if event.get("Event-Name") != Some("HEARTBEAT") {
                seqs.insert(event.get("Event-Sequence").unwrap().to_owned());
            }
        }
        seqs.len()
    };
    assert_eq!(count(&mut reader), N);
    assert!(start.elapsed() < Duration::from_secs(20), "the reader waited for the stalled listener");
    assert_eq!(count(&mut stalled), N, "the stalled listener's queue kept its events");
}
