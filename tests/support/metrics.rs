//! A live agent whose `/metrics` shows every family, for tests that check that names written
//! elsewhere (README.md, the Grafana dashboard, the alert rules) are really exported.
//!
//! Families with labels appear only once a labelled value exists, so [`LiveMetrics::start`]
//! drives the agent through each case: events written (to both streams), filtered,
//! dead-lettered (the jobs stream key holds a string), one malformed frame dropped, old entries
//! trimmed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{agent_env, free_port, http, start_agent, Agent, RedisServer, SimulateOptions, Simulator, EVENTS, JOBS};

/// The metric families in Prometheus text: name → type, from the `# TYPE` lines.
pub fn families(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

/// A name is exported when it is a family, or a histogram's `_bucket`/`_sum`/`_count`.
pub fn exported(name: &str, families: &HashMap<String, String>) -> bool {
    families.contains_key(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix).is_some_and(|base| families.get(base).is_some_and(|t| t == "histogram"))
        })
}

/// A frame FreeSWITCH could never send: a plain `CHANNEL_ANSWER` with a header line that has
/// no `:` (dropped as `malformed`).
fn malformed_frame() -> Vec<u8> {
    let body = b"Event-Name: CHANNEL_ANSWER\nthis header line has no colon\n\n";
    let mut frame = format!("Content-Length: {}\nContent-Type: text/event-plain\n\n", body.len()).into_bytes();
    frame.extend_from_slice(body);
    frame
}

/// Redis, a simulator and the agent binary between them, driven through every case.
pub struct LiveMetrics {
    pub agent: Agent,
    /// The agent's admin port.
    pub port: u16,
    pub redis: RedisServer,
    _sim: Simulator,
    _spool: tempfile::TempDir,
}

impl LiveMetrics {
    /// Starts everything and waits until the simulator has sent its events.
    pub fn start() -> LiveMetrics {
        let redis = RedisServer::start();
        redis.cli(&["SET", JOBS, "not a stream"]);
        for seq in 0..500 {
            redis.cli(&["XADD", EVENTS, &format!("1000-{seq}"), "event", "{}"]);
        }
        let options = SimulateOptions { events: Some(400), replay: vec![malformed_frame()], ..Default::default() };
        let sim = Simulator::start(options).expect("simulator");
        let spool = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let env = agent_env(sim.local_addr(), &redis.url(), spool.path(), port);
        let agent = start_agent(
            &env,
            &[
                ("EVENTS_TO_PUSH", "CHANNEL_ANSWER,CHANNEL_HANGUP"),
                ("EVENTS_TO_PUBLISH", "CHANNEL_EXECUTE,CHANNEL_EXECUTE_COMPLETE"),
                ("EVENTS_EXPIRE_TIME", "1m"),
                ("JOBS_EXPIRE_TIME", "0"),
                ("TRIM_INTERVAL", "200ms"),
                ("HTTP_INGRESS", "true"),
                ("HTTP_INGRESS_TOKENS", "crm:crm-token-0123456789abcdef"),
            ],
        );
        assert!(sim.wait_done(Duration::from_secs(30)), "the simulator sent its events");
        post_one_event(port);
        LiveMetrics { agent, port, redis, _sim: sim, _spool: spool }
    }

    /// Scrapes `/metrics` until every one of `names` is exported or `within` passes; returns
    /// the names still missing and the last scrape.
    pub fn missing<'a>(&self, names: impl IntoIterator<Item = &'a String>, within: Duration) -> (Vec<String>, String) {
        let mut missing: Vec<String> = names.into_iter().cloned().collect();
        let mut last = String::new();
        let started = Instant::now();
        loop {
            if let Some((200, text)) = http(self.port, "/metrics") {
                let families = families(&text);
                missing.retain(|name| !exported(name, &families));
                last = text;
            }
            if missing.is_empty() || started.elapsed() > within {
                return (missing, last);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One HTTP ingress request, so that its labelled series exist.
fn post_one_event(port: u16) {
    let mut post = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let event = br#"{"event_type":"probe","event_id":"p-1"}"#;
    let head = format!(
        "POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer crm-token-0123456789abcdef\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        event.len()
    );
    std::io::Write::write_all(&mut post, head.as_bytes()).expect("send");
    std::io::Write::write_all(&mut post, event).expect("send");
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut post, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
}
