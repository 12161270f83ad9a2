//! Tests of the integration harness itself (Redis control, the proxy, the child-process
//! runner) and of the simulator over real TCP.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use redis::Commands;
use support::{
    capture, event_frames, find_on_path, wait_until, Agent, RedisServer, SimulateOptions, Simulator, TcpProxy,
};

#[test]
fn redis_keeps_acknowledged_writes_across_sigkill_and_restart() {
    let mut redis = RedisServer::start();
    let mut con = redis.connection();
    for i in 0..500 {
        let _: String = redis::cmd("XADD").arg("s").arg("*").arg("i").arg(i).query(&mut con).unwrap();
    }
    let port = redis.port();
    redis.kill();
    assert!(!redis.ping());
    redis.restart();
    assert_eq!(redis.port(), port);
    let len: u64 = redis.connection().xlen("s").unwrap();
    assert_eq!(len, 500);
    assert_eq!(redis.cli(&["XLEN", "s"]), "500");
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/"));
}

#[test]
fn redis_pause_and_resume() {
    let redis = RedisServer::start();
    let mut con = redis.connection();
    redis.pause();
    con.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let start = Instant::now();
    let r: redis::RedisResult<String> = redis::cmd("PING").query(&mut con);
    assert!(r.is_err(), "a stopped server does not answer");
    assert!(start.elapsed() >= Duration::from_millis(250));
    redis.resume();
    wait_until(Duration::from_secs(5), "PONG after SIGCONT", || redis.ping());
}

#[test]
fn redis_client_pause_write_blocks_writes_only() {
    let redis = RedisServer::start();
    let mut con = redis.connection();
    redis.client_pause_write(400);
    let start = Instant::now();
    let _: Option<String> = con.get("k").unwrap();
    assert!(start.elapsed() < Duration::from_millis(200), "reads go on");
    let _: () = con.set("k", "v").unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300), "writes wait for the pause");
}

#[test]
fn redis_maxmemory_makes_writes_fail() {
    let redis = RedisServer::start();
    let mut con = redis.connection();
    redis.set_maxmemory(1 << 20);
    let value = "x".repeat(10_000);
    let failed = (0..1000).map(|i| con.set::<_, _, ()>(format!("k{i}"), &value)).find_map(Result::err);
    let err = failed.expect("writes fail once maxmemory is reached");
    assert!(err.to_string().contains("OOM"), "{err}");
}

#[test]
fn proxy_forwards_and_cut_all_drops_connections() {
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(([127, 0, 0, 1], redis.port()).into());
    let client = redis::Client::open(proxy.redis_url()).unwrap();
    let mut con = client.get_connection_with_timeout(Duration::from_secs(5)).unwrap();
    con.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _: () = con.set("a", 1).unwrap();
    wait_until(Duration::from_secs(2), "one proxied connection", || proxy.connections() == 1);
    proxy.cut_all();
    let r: redis::RedisResult<i64> = con.get("a");
    assert!(r.is_err(), "the cut connection is dead");
    let mut again = client.get_connection_with_timeout(Duration::from_secs(5)).unwrap();
    let a: i64 = again.get("a").unwrap();
    assert_eq!(a, 1);
    assert_eq!(proxy.accepted(), 2);
}

#[test]
fn proxy_blocked_holds_traffic_until_unblocked() {
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(([127, 0, 0, 1], redis.port()).into());
    let mut s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    roundtrip_ping(&mut s);
    proxy.set_blocked(true);
    s.write_all(b"PING\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0u8; 16];
    assert!(s.read(&mut buf).is_err(), "nothing passes while blocked");
    proxy.set_blocked(false);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"+PONG\r\n", "held bytes are delivered after unblocking");
}

#[test]
fn proxy_refusing_closes_new_connections() {
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(([127, 0, 0, 1], redis.port()).into());
    proxy.set_refusing(true);
    let mut s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"PING\r\n");
    let mut buf = [0u8; 16];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    proxy.set_refusing(false);
    let mut s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    roundtrip_ping(&mut s);
}

#[test]
fn proxy_cut_after_bytes_breaks_a_pipeline_midway() {
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(([127, 0, 0, 1], redis.port()).into());
    let mut s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let pipeline: String = (0..100).map(|i| format!("SET key{i:03} value\r\n")).collect();
    proxy.cut_after_bytes(pipeline.len() as u64 / 2);
    let _ = s.write_all(pipeline.as_bytes());
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    let mut con = redis.connection();
    let written: Vec<String> = con.keys("key*").unwrap();
    assert!(!written.is_empty() && written.len() < 100, "{} of 100 commands got through", written.len());
}

#[test]
fn agent_runner_reports_exit_codes_and_signals() {
    let sleep = find_on_path("sleep").expect("sleep on PATH");
    let mut child = Agent::spawn(&sleep, &["30"], &[]);
    assert!(child.is_running());
    assert_eq!(child.wait_timeout(Duration::from_millis(100)), None);
    assert_eq!(child.stop(Duration::from_secs(5)), 128 + libc::SIGTERM);
    let mut child = Agent::spawn(&sleep, &["30"], &[]);
    child.kill();
    assert_eq!(child.wait_timeout(Duration::from_secs(1)), Some(128 + libc::SIGKILL));
    let sh = find_on_path("sh").expect("sh on PATH");
    let mut child = Agent::spawn(&sh, &["-c", "echo \"to stderr $FOO\" >&2; exit 3"], &[("FOO", "bar")]);
    assert_eq!(child.wait_timeout(Duration::from_secs(5)), Some(3));
    assert!(child.output().contains("to stderr bar"), "{}", child.output());
}

#[test]
fn agent_runner_finds_the_built_binary() {
    assert!(Path::new(env!("CARGO_BIN_EXE_eslstream")).is_file());
    let mut agent = Agent::start(&["--version"], &[]);
    assert_eq!(agent.wait_timeout(Duration::from_secs(10)), Some(0), "{}", agent.output());
}

#[test]
fn simulator_over_tcp_sends_exactly_n_events_with_increasing_sequences() {
    let n = 2000;
    let sim = Simulator::start(SimulateOptions { events: Some(n), ..SimulateOptions::default() }).unwrap();
    let mut esl = EslClient::connect(sim.local_addr());
    esl.login("ClueCon", "event plain ALL");
    let mut last = 0;
    for _ in 0..n {
        let body = esl.next_event().expect("event");
        let seq = header(&body, "Event-Sequence").parse::<u64>().unwrap();
        assert!(seq > last);
        last = seq;
        assert_eq!(header(&body, "Core-UUID"), sim.core_uuid());
    }
    assert!(sim.wait_done(Duration::from_secs(5)));
    esl.stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    assert!(esl.next_event().is_none(), "no event beyond N");
    esl.send("api status");
    assert!(esl.next_frame().unwrap().0.contains("api/response"), "still answering commands");
    assert_eq!(sim.stats().traffic_sent, n);
}

#[test]
fn simulator_through_proxy_continues_after_a_cut() {
    let n = 1000;
    let sim = Simulator::start(SimulateOptions { events: Some(n), rate: Some(20_000.0), ..SimulateOptions::default() })
        .unwrap();
    let proxy = TcpProxy::start(sim.local_addr());
    let mut seqs = Vec::new();
    let mut esl = EslClient::connect(proxy.addr());
    esl.login("ClueCon", "event plain ALL");
    while seqs.len() < 100 {
        seqs.push(header(&esl.next_event().unwrap(), "Event-Sequence").parse::<u64>().unwrap());
    }
    proxy.cut_all();
    wait_until(Duration::from_secs(5), "the simulator noticing the cut", || sim.stats().connections == 0);
    let mut esl = EslClient::connect(proxy.addr());
    esl.login("ClueCon", "event plain ALL");
    assert!(sim.wait_done(Duration::from_secs(10)));
    esl.stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    while let Some(body) = esl.next_event() {
        seqs.push(header(&body, "Event-Sequence").parse::<u64>().unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[1] > w[0]));
    assert_eq!(*seqs.last().unwrap(), sim.stats().next_sequence - 1, "the second connection got the tail");
    assert_eq!(sim.stats().total_connections, 2);
}

#[test]
fn capture_file_replays_through_the_simulator() {
    let path = capture("plain.esl");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read the capture {}: {e}", path.display()));
    let frames = event_frames(&bytes);
    let sim =
        Simulator::start(SimulateOptions { events: Some(0), replay: frames.clone(), ..SimulateOptions::default() })
            .unwrap();
    let mut esl = EslClient::connect(sim.local_addr());
    esl.login("ClueCon", "event plain ALL");
    for frame in &frames {
        let (_, body) = esl.next_frame_raw().unwrap();
        assert!(frame.ends_with(&body));
    }
}

fn roundtrip_ping(s: &mut TcpStream) {
    s.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"+PONG\r\n");
}

/// First value of a header in a plain event body (not decoded).
fn header<'a>(body: &'a str, name: &str) -> &'a str {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
        .unwrap_or_else(|| panic!("no {name}"))
}

/// A bare ESL client for these tests.
struct EslClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl EslClient {
    fn connect(addr: std::net::SocketAddr) -> EslClient {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        EslClient { stream, buf: Vec::new() }
    }

    fn send(&mut self, cmd: &str) {
        self.stream.write_all(format!("{cmd}\n\n").as_bytes()).unwrap();
    }

    fn login(&mut self, password: &str, subscription: &str) {
        assert!(self.next_frame().unwrap().0.contains("auth/request"));
        self.send(&format!("auth {password}"));
        assert!(self.next_frame().unwrap().0.contains("+OK accepted"));
        self.send(subscription);
        assert!(self.next_frame().unwrap().0.contains("+OK event listener enabled"));
    }

    /// `(outer headers, body)` of the next frame; `None` at EOF or timeout.
    fn next_frame_raw(&mut self) -> Option<(String, Vec<u8>)> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let len =
                    head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).map_or(0, |v| v.parse().unwrap());
                if self.buf.len() >= end + 2 + len {
                    let body = self.buf[end + 2..end + 2 + len].to_vec();
                    self.buf.drain(..end + 2 + len);
                    return Some((head, body));
                }
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn next_frame(&mut self) -> Option<(String, String)> {
        self.next_frame_raw().map(|(h, b)| (h, String::from_utf8_lossy(&b).into_owned()))
    }

    fn next_event(&mut self) -> Option<String> {
        loop {
            let (head, body) = self.next_frame()?;
            if head.contains("text/event-plain") {
                return Some(body);
            }
        }
    }
}
