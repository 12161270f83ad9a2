//! The admin port under hostile clients, against a live in-process agent: 500 idle
//! connections (from the probe's own address, from one other address, spread over many) plus a
//! slow-loris client never delay `/health` past 100 ms; an idle keep-alive connection and a
//! slow request head are closed after `HEADER_TIMEOUT`; one address holds at most
//! `MAX_CONNECTIONS_PER_PEER` connections.
//!
//! Other addresses are loopback ones (127.0.0.2 and up), bound with socket2 before connecting:
//! every byte stays on this machine. Every wait is bounded.

mod support;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use eslstream::app::Agent;
use eslstream::config::Config;
use eslstream::http::{http_get, HEADER_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_PEER};
use eslstream::telemetry::metrics::metrics;
use socket2::{Domain, SockAddr, Socket, Type};
use support::RedisServer;

const CROWD: usize = 500;
const PROBES: usize = 20;
const ANSWER_WITHIN: Duration = Duration::from_millis(100);

struct Running {
    agent: Option<Agent>,
    _redis: RedisServer,
    _spool: tempfile::TempDir,
}

impl Running {
    fn addr(&self) -> SocketAddr {
        self.agent.as_ref().expect("running").http_addr()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.stop();
        }
    }
}

/// An agent without an event socket, its admin port on 127.0.0.1 (a free port).
fn agent() -> Running {
    let redis = RedisServer::start();
    let spool = tempfile::tempdir().expect("temp dir");
    let vars: HashMap<String, String> = [
        ("REDIS_URL", redis.url()),
        ("ESL_ENABLED", "false".into()),
        ("HEALTH_BIND", "127.0.0.1".into()),
        ("HEALTH_PORT", "0".into()),
        ("HEALTH_CHECK_INTERVAL", "200ms".into()),
        ("METRICS_PRINT_INTERVAL", "0".into()),
        ("WRITER_WORKERS", "1".into()),
        ("SPOOL_DIR", spool.path().display().to_string()),
        ("SHUTDOWN_TIMEOUT", "2s".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let agent = Agent::start(Config::from_vars(vars).expect("valid config")).expect("agent starts");
    Running { agent: Some(agent), _redis: redis, _spool: spool }
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection to `to` from the address `from` (any port).
fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    socket.bind(&SockAddr::from(SocketAddr::new(from, 0)))?;
    socket.connect_timeout(&SockAddr::from(to), Duration::from_secs(2))?;
    Ok(socket.into())
}

/// `n` connections that never send a byte, taking turns over `from`.
fn idle_crowd(to: SocketAddr, from: &[IpAddr], n: usize) -> Vec<TcpStream> {
    let started = Instant::now();
    let crowd: Vec<TcpStream> = (0..n)
        .map(|i| connect_from(from[i % from.len()], to).unwrap_or_else(|e| panic!("crowd connection {i}: {e}")))
        .collect();
    println!("{n} idle connections from {} address(es) in {:?}", from.len(), started.elapsed());
    crowd
}

/// A client that sends a request head one byte every 500 ms, reconnecting whenever the server
/// closes it; records how long each connection lived until the server closed it.
struct SlowLoris {
    stop: Arc<AtomicBool>,
    cut: Arc<Mutex<Vec<Duration>>>,
    thread: Option<JoinHandle<()>>,
}

impl SlowLoris {
    fn start(from: IpAddr, to: SocketAddr) -> SlowLoris {
        let stop = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(Mutex::new(Vec::new()));
        let (flag, lives) = (stop.clone(), cut.clone());
        let thread = std::thread::spawn(move || {
            let head = b"GET /health HTTP/1.1\r\nHost: eslstream\r\nUser-Agent: slow\r\nX-Padding: ".repeat(4);
            while !flag.load(Ordering::Relaxed) {
                let mut stream = connect_from(from, to).expect("the slow client connects");
                stream.set_read_timeout(Some(Duration::from_millis(500))).expect("read timeout");
                let opened = Instant::now();
                for byte in head.iter().cycle() {
                    if flag.load(Ordering::Relaxed) {
                        return;
                    }
                    if stream.write_all(&[*byte]).is_err() {
                        break;
                    }
                    // The pause between bytes; reading 0 bytes (or a reset) is the server closing.
                    let mut buf = [0u8; 256];
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => panic!("the slow client was answered before its head was complete"),
                        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => break,
                    }
                }
                lives.lock().unwrap().push(opened.elapsed());
            }
        });
        SlowLoris { stop, cut, thread: Some(thread) }
    }

    /// Waits (up to `within`) until the server closed one of its connections, then stops it;
    /// the lifetimes of the connections the server closed.
    fn finish(mut self, within: Duration) -> Vec<Duration> {
        let deadline = Instant::now() + within;
        while self.cut.lock().unwrap().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().expect("running").join().expect("slow client thread");
        self.cut.lock().unwrap().clone()
    }
}

/// GETs `/health` on a fresh connection, as an orchestrator's probe does; the time to a
/// complete answer.
fn timed_health(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let (status, body) =
        http_get(&format!("http://{addr}/health"), Duration::from_secs(2)).expect("/health answers at all");
    let took = started.elapsed();
    assert!(status == 200 || status == 503, "{status} {body}");
    assert!(body.contains(r#""status""#), "{body}");
    took
}

/// `PROBES` health checks in a row, each within `ANSWER_WITHIN`; prints p50 and max.
fn assert_health_answers_quickly(addr: SocketAddr, scenario: &str) {
    let mut took: Vec<Duration> = (0..PROBES)
        .map(|_| {
            let t = timed_health(addr);
            std::thread::sleep(Duration::from_millis(50));
            t
        })
        .collect();
    let in_order = took.clone();
    took.sort();
    let (p50, max) = (took[PROBES / 2], took[PROBES - 1]);
    println!("{scenario}: /health p50 {p50:?}, max {max:?} over {PROBES} checks");
    assert!(
        in_order.iter().all(|t| *t <= ANSWER_WITHIN),
        "{scenario}: every /health within {ANSWER_WITHIN:?}, got {in_order:?}"
    );
}

fn counter(vec: &prometheus::IntCounterVec, label: &str) -> u64 {
    vec.with_label_values(&[label]).get()
}

/// Runs a crowd scenario: the crowd and a slow-loris client (from 127.0.0.3), then 20 timed
/// health checks; returns the slow client's cut connection lifetimes.
fn crowd_scenario(scenario: &str, crowd_from: &[IpAddr]) -> Vec<Duration> {
    let running = agent();
    let addr = running.addr();
    let slow = SlowLoris::start(loopback(3), addr);
    let crowd = idle_crowd(addr, crowd_from, CROWD);
    assert_health_answers_quickly(addr, scenario);
    // The slow client has run for a second or two; give it the header deadline and slack.
    let cut = slow.finish(HEADER_TIMEOUT + Duration::from_secs(2));
    println!("{scenario}: slow client's connections closed after {cut:?}");
    assert!(!cut.is_empty(), "{scenario}: the slow client was never cut");
    for lived in &cut {
        assert!(*lived <= HEADER_TIMEOUT + Duration::from_millis(1500), "{scenario}: a slow head lived {lived:?}");
    }
    drop(crowd);
    cut
}

#[test]
fn health_answers_within_100ms_beside_500_idle_connections_from_its_own_address() {
    let evicted = counter(&metrics().http.closed, "evicted");
    crowd_scenario("500 idle from 127.0.0.1", &[loopback(1)]);
    assert!(counter(&metrics().http.closed, "evicted") > evicted, "the crowd made room for the probe");
}

#[test]
fn health_answers_within_100ms_beside_500_idle_connections_from_one_other_address() {
    let refused = counter(&metrics().http.rejected, "per_peer");
    let cut = crowd_scenario("500 idle from 127.0.0.2", &[loopback(2)]);
    assert!(
        counter(&metrics().http.rejected, "per_peer") >= refused + (CROWD - MAX_CONNECTIONS_PER_PEER) as u64,
        "all but {MAX_CONNECTIONS_PER_PEER} refused at once"
    );
    // Nothing was evicted here (33 connections in all): the slow client was cut by the deadline.
    assert!(cut[0] >= HEADER_TIMEOUT - Duration::from_millis(300), "cut after {:?}", cut[0]);
}

#[test]
fn health_answers_within_100ms_beside_500_idle_connections_spread_over_20_addresses() {
    let from: Vec<IpAddr> = (10..30).map(loopback).collect();
    assert!(CROWD / from.len() < MAX_CONNECTIONS_PER_PEER && CROWD > MAX_CONNECTIONS, "fills the global cap");
    let evicted = counter(&metrics().http.closed, "evicted");
    crowd_scenario("500 idle over 20 addresses", &from);
    assert!(
        counter(&metrics().http.closed, "evicted") >= evicted + (CROWD - MAX_CONNECTIONS) as u64,
        "the oldest idle connections made room"
    );
}

/// Reads one response with a `Content-Length` body; its status line.
fn read_response(stream: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse().ok())
                .expect("a content-length");
            if data.len() >= end + 4 + length {
                return head.lines().next().unwrap_or_default().to_owned();
            }
        }
        let n = stream.read(&mut buf).expect("the answer arrives");
        assert!(n > 0, "closed before the answer was complete");
        data.extend_from_slice(&buf[..n]);
    }
}

/// Waits up to `within` for the server to close `stream`; how long that took.
fn time_to_close(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
    let mut buf = [0u8; 64];
    while started.elapsed() < within {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => panic!("unexpected bytes on an idle connection"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let running = agent();
    let mut stream = TcpStream::connect(running.addr()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(2))).expect("read timeout");
    let request = b"GET /health HTTP/1.1\r\nHost: eslstream\r\n\r\n";
    stream.write_all(request).expect("first request");
    assert!(read_response(&mut stream).starts_with("HTTP/1.1 "), "answered");
    // Kept alive: a second request a second later is answered on the same connection.
    std::thread::sleep(Duration::from_secs(1));
    stream.write_all(request).expect("second request");
    assert!(read_response(&mut stream).starts_with("HTTP/1.1 "), "answered again");
    let timeouts = counter(&metrics().http.closed, "timeout");

    let closed = time_to_close(&mut stream, HEADER_TIMEOUT + Duration::from_secs(2)).expect("closed by the server");
    println!("idle keep-alive connection closed {closed:?} after its last answer");
    assert!(closed >= HEADER_TIMEOUT - Duration::from_millis(300), "not before the timeout: {closed:?}");
    assert!(counter(&metrics().http.closed, "timeout") > timeouts);
}

#[test]
fn one_address_holds_at_most_the_per_peer_cap_and_the_next_is_closed_at_once() {
    let running = agent();
    let addr = running.addr();
    let refused = counter(&metrics().http.rejected, "per_peer");
    let mut held: Vec<TcpStream> = (0..MAX_CONNECTIONS_PER_PEER)
        .map(|i| connect_from(loopback(2), addr).unwrap_or_else(|e| panic!("{i}: {e}")))
        .collect();
    let mut over = connect_from(loopback(2), addr).expect("the handshake completes in the kernel");
    let closed = time_to_close(&mut over, Duration::from_secs(2)).expect("the connection over the cap is closed");
    println!("connection {} from 127.0.0.2 closed after {closed:?}", MAX_CONNECTIONS_PER_PEER + 1);
    assert!(counter(&metrics().http.rejected, "per_peer") > refused, "counted");

    // Those within the cap are still open and served.
    for stream in held.iter_mut() {
        assert_eq!(time_to_close(stream, Duration::from_millis(10)), None, "still open");
    }
    held[0].set_read_timeout(Some(Duration::from_secs(2))).expect("read timeout");
    held[0].write_all(b"GET /health HTTP/1.1\r\nHost: eslstream\r\n\r\n").expect("request");
    assert!(read_response(&mut held[0]).starts_with("HTTP/1.1 "));
    // Other addresses are not affected.
    assert!(timed_health(addr) <= ANSWER_WITHIN);
    let mut other = connect_from(loopback(4), addr).expect("connect from 127.0.0.4");
    assert_eq!(time_to_close(&mut other, Duration::from_millis(200)), None, "another address gets in");
    // Once one closes, the address may open another.
    drop(held.pop());
    let mut kept = Vec::new();
    support::wait_until(Duration::from_secs(2), "room for 127.0.0.2 again", || {
        let mut stream = connect_from(loopback(2), addr).expect("connect");
        let open = time_to_close(&mut stream, Duration::from_millis(200)).is_none();
        kept.push(stream);
        open
    });
}
