//! Dead letters: events Redis refuses for good are kept, listed, inspected and replayed over
//! HTTP, behind the bearer token.

mod support;

use std::time::Duration;

use support::*;

/// `method path` with the bearer token if given: (status, body).
fn request(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let answer = raw_http::request(port, &format!("{method} {path} HTTP/1.1\r\n{auth}"), b"");
    (answer.status, answer.body)
}

#[test]
fn refused_events_become_dead_letters_and_can_be_replayed() {
    let redis = RedisServer::start();
    redis.cli(&["SET", EVENTS, "not a stream"]);
    let sim = Simulator::start(SimulateOptions { events: Some(50), ..Default::default() }).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let token = "s3cret";
    let mut agent =
        start_agent(&agent_env(sim.local_addr(), &redis.url(), spool.path(), port), &[("HTTP_TOKEN", token)]);
    assert!(sim.wait_done(Duration::from_secs(30)));
    let sent = sim.stats().events_sent;

    assert_eq!(request(port, "GET", "/dlq", None).0, 401, "the token is required");
    assert_eq!(request(port, "GET", "/dlq", Some("wrong")).0, 401);
    wait_until(Duration::from_secs(30), "every event dead-lettered", || {
        let (status, body) = request(port, "GET", "/dlq", Some(token));
        status == 200 && serde_json::from_str::<serde_json::Value>(&body).unwrap()["count"] == sent
    });
    let (_, body) = request(port, "GET", "/dlq?limit=5", Some(token));
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 5);
    let id = list["items"][0]["id"].as_str().unwrap().to_owned();

    let (status, body) = request(port, "GET", &format!("/dlq/{id}"), Some(token));
    assert_eq!(status, 200);
    let letter: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(letter["error"].as_str().unwrap().contains("WRONGTYPE"), "{letter}");
    assert_eq!(letter["stream_key"], EVENTS);
    assert_eq!(request(port, "GET", "/dlq/../../etc/passwd", Some(token)).0, 404);

    // Still refused: 409, and it stays.
    assert_eq!(request(port, "POST", &format!("/dlq/{id}/retry"), Some(token)).0, 409);
    redis.cli(&["DEL", EVENTS]);
    let (status, body) = request(port, "POST", &format!("/dlq/{id}/retry"), Some(token));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("written"));
    assert_eq!(request(port, "GET", &format!("/dlq/{id}"), Some(token)).0, 404, "gone once written");
    let mut conn = redis.connection();
    let entries = read_stream(&mut conn, EVENTS);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].sequence.to_string(), letter["event_sequence"].as_str().unwrap());
    assert!(metric_sum(port, "eslstream_dead_lettered_total", "") >= sent as f64);
    assert_eq!(agent.stop(Duration::from_secs(10)), 0);
}
