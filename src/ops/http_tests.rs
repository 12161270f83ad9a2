//! Tests of the router, the handlers' helpers, the `/dlq` guard and the server over TCP.

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};

use crate::config::Config;
use crate::http::access::Peer;
use crate::http::handler::JSON;
use crate::http::*;
use crate::ops::context::AppContext;
use crate::ops::health::report::HealthReport;
use crate::ops::health::rules::{Check, Status};
use crate::ops::routes::{routes, PROMETHEUS_TEXT};
use crate::pipeline::spool::SpoolBudget;
use crate::pipeline::{Pipeline, PipelineShape};
use crate::sink::dlq::DeadLetters;
use crate::state::AgentState;

fn context(token: Option<&str>) -> Arc<AppContext> {
    context_with_store(token).0
}

/// A context and the folder of its dead-letter store (removed when the guard is dropped).
fn context_with_store(token: Option<&str>) -> (Arc<AppContext>, tempfile::TempDir) {
    let mut config = Config::from_vars(HashMap::new()).expect("default config");
    config.http_token = token.map(str::to_owned);
    let dlq_dir = tempfile::tempdir().expect("temp dir");
    let dead_letters = Arc::new(DeadLetters::open(dlq_dir.path()).expect("dead-letter store"));
    let ctx = AppContext::new(
        &Arc::new(config),
        &Arc::new(AgentState::default()),
        &Pipeline::new(PipelineShape::from_buffer(1, 100, 1 << 20)),
        &SpoolBudget::new(1 << 20),
        &dead_letters,
    );
    (ctx, dlq_dir)
}

fn request(method: Method, path: &str) -> Request<Body> {
    let body = Full::new(Bytes::new()).map_err(|never| match never {}).boxed();
    Request::builder().method(method).uri(path).body(body).expect("valid request")
}

/// A request as the server hands it on: with the client's address.
fn request_from(method: Method, path: &str, peer: &str) -> Request<Body> {
    let mut req = request(method, path);
    req.extensions_mut().insert(Peer(peer.parse::<SocketAddr>().expect("a socket address")));
    req
}

async fn body_of(reply: Reply) -> String {
    let bytes = reply.into_body().collect().await.expect("Full never fails").to_bytes();
    String::from_utf8(bytes.to_vec()).expect("UTF-8 body")
}

fn run<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

fn healthy_report() -> HealthReport {
    let mut report = HealthReport::starting();
    report.status = Status::Healthy;
    report.data.is_healthy = true;
    report.data.checks = vec![Check { name: "esl", ok: true, reason: None }];
    report
}

#[test]
fn unknown_path_is_404_and_wrong_method_is_405_with_allow() {
    run(async {
        let ctx = context(None);
        let reply = routes(false).handle(ctx.clone(), request(Method::GET, "/nope")).await;
        assert_eq!(reply.status(), StatusCode::NOT_FOUND);
        assert!(body_of(reply).await.contains("no such endpoint: /nope"));
        let reply = routes(false).handle(ctx.clone(), request(Method::GET, "/health/extra")).await;
        assert_eq!(reply.status(), StatusCode::NOT_FOUND);
        let reply = routes(false).handle(ctx, request(Method::POST, "/health")).await;
        assert_eq!(reply.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(reply.headers()[ALLOW], "GET, HEAD");
    });
}

#[test]
fn head_has_the_get_headers_and_no_body() {
    run(async {
        let ctx = context(None);
        let get = routes(false).handle(ctx.clone(), request(Method::GET, "/metrics")).await;
        let get_len = body_of(get).await.len();
        let head = routes(false).handle(ctx, request(Method::HEAD, "/metrics")).await;
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(head.headers()[CONTENT_TYPE], PROMETHEUS_TEXT);
        assert_eq!(head.headers()[CONTENT_LENGTH], get_len.to_string().as_str());
        assert_eq!(body_of(head).await, "");
    });
}

#[test]
fn metrics_is_prometheus_text() {
    run(async {
        let reply = routes(false).handle(context(None), request(Method::GET, "/metrics?x=1")).await;
        assert_eq!(reply.status(), StatusCode::OK);
        assert_eq!(reply.headers()[CONTENT_TYPE], "text/plain; version=0.0.4; charset=utf-8");
        let body = body_of(reply).await;
        assert!(body.contains("# TYPE eslstream_build_info gauge"), "{body}");
    });
}

#[test]
fn health_is_503_until_healthy_then_200_with_the_reference_shape() {
    run(async {
        let ctx = context(None);
        let reply = routes(false).handle(ctx.clone(), request(Method::GET, "/health")).await;
        assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = serde_json::from_str(&body_of(reply).await).expect("JSON");
        assert_eq!(body["status"], "unhealthy");
        assert_eq!(body["data"]["checks"][0]["name"], "startup");

        ctx.health.publish(healthy_report());
        let reply = routes(false).handle(ctx, request(Method::GET, "/health")).await;
        assert_eq!(reply.status(), StatusCode::OK);
        assert_eq!(reply.headers()[CONTENT_TYPE], JSON);
        let body: serde_json::Value = serde_json::from_str(&body_of(reply).await).expect("JSON");
        assert_eq!(body["status"], "healthy");
        let data = &body["data"];
        for field in ["last_heartbeat", "last_error", "recovery_attempts", "is_healthy", "last_check"] {
            assert!(data.get(field).is_some(), "reference field {field} missing: {data}");
        }
        for field in ["esl", "redis", "queue_depth", "spool", "dropped", "checks", "version", "uptime_seconds"] {
            assert!(data.get(field).is_some(), "field {field} missing: {data}");
        }
        assert_eq!(data["is_healthy"], true);
        assert!(data["esl"]["reconnects"].is_u64() && data["redis"]["writers_up"].is_u64());
        assert!(data["spool"]["bytes"].is_u64() && data["dropped"]["by_reason"].is_object());
    });
}

fn echo_id(_ctx: Arc<AppContext>, _req: Request<Body>, params: Params) -> HandlerFuture {
    Box::pin(async move { reply(StatusCode::OK, "text/plain", params.get("id").unwrap_or("-").to_owned()) })
}

#[test]
fn path_parameters_are_captured() {
    run(async {
        let router = Router::default().get("/dlq/{id}", echo_id).post("/dlq/{id}/retry", echo_id);
        let ctx = context(None);
        let reply = router.handle(ctx.clone(), request(Method::GET, "/dlq/1700000000000-0")).await;
        assert_eq!(body_of(reply).await, "1700000000000-0");
        let reply = router.handle(ctx.clone(), request(Method::POST, "/dlq/abc/retry")).await;
        assert_eq!(body_of(reply).await, "abc");
        let reply = router.handle(ctx.clone(), request(Method::GET, "/dlq/")).await;
        assert_eq!(reply.status(), StatusCode::NOT_FOUND);
        let reply = router.handle(ctx, request(Method::GET, "/dlq/abc/retry")).await;
        assert_eq!(reply.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(reply.headers()[ALLOW], "POST");
    });
}

#[test]
fn with_a_token_the_dead_letters_need_the_bearer_token_from_anywhere() {
    let ctx = context(Some("s3cret"));
    let mut req = request_from(Method::GET, "/dlq", "127.0.0.1:40000");
    let denied = authorize(ctx.config.http_token.as_deref(), &req).unwrap_err();
    assert_eq!(denied.status(), StatusCode::UNAUTHORIZED, "loopback needs it too");
    assert_eq!(denied.headers()["www-authenticate"], "Bearer");
    for wrong in ["Bearer wrong!", "Basic s3cret", "Bearer s3cret-and-more"] {
        req.headers_mut().insert(AUTHORIZATION, HeaderValue::from_static(wrong));
        assert!(authorize(ctx.config.http_token.as_deref(), &req).is_err(), "{wrong}");
    }
    req.headers_mut().insert(AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
    assert!(authorize(ctx.config.http_token.as_deref(), &req).is_ok());
    let mut remote = request_from(Method::GET, "/dlq", "192.0.2.2:40000");
    remote.headers_mut().insert(AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
    assert!(authorize(ctx.config.http_token.as_deref(), &remote).is_ok(), "a remote client with the token");
}

#[test]
fn without_a_token_the_dead_letters_answer_loopback_only() {
    run(async {
        let (ctx, _store) = context_with_store(None);
        for path in ["/dlq", "/dlq/1700000000000-0"] {
            for peer in ["192.0.2.2:40000", "10.0.0.5:1", "[fd00::2]:40000", "[::ffff:10.0.0.5]:1"] {
                let reply = routes(false).handle(ctx.clone(), request_from(Method::GET, path, peer)).await;
                assert_eq!(reply.status(), StatusCode::FORBIDDEN, "{path} from {peer}");
                assert_eq!(reply.headers()[CONTENT_TYPE], JSON);
                let body: serde_json::Value = serde_json::from_str(&body_of(reply).await).expect("JSON");
                let error = body["error"].as_str().unwrap_or_default();
                assert!(error.contains("set HTTP_TOKEN") && error.contains("loopback"), "{body}");
            }
        }
        let reply = routes(false).handle(ctx.clone(), request_from(Method::POST, "/dlq/x/retry", "192.0.2.2:1")).await;
        assert_eq!(reply.status(), StatusCode::FORBIDDEN);
        // No address at all (not through the server): refused, never assumed local.
        assert_eq!(
            routes(false).handle(ctx.clone(), request(Method::GET, "/dlq")).await.status(),
            StatusCode::FORBIDDEN
        );

        for peer in ["127.0.0.1:40000", "127.0.0.2:1", "[::1]:40000", "[::ffff:127.0.0.1]:1"] {
            let reply = routes(false).handle(ctx.clone(), request_from(Method::GET, "/dlq", peer)).await;
            assert_eq!(reply.status(), StatusCode::OK, "from {peer}");
            let body: serde_json::Value = serde_json::from_str(&body_of(reply).await).expect("JSON");
            assert_eq!(body["count"], 0);
        }
        let reply = routes(false).handle(ctx.clone(), request_from(Method::GET, "/dlq/none", "127.0.0.1:1")).await;
        assert_eq!(reply.status(), StatusCode::NOT_FOUND, "past the guard");
        // `limit`: a whole number (one past what a usize holds is as many as there are).
        for (query, status) in [
            ("limit=0", StatusCode::OK),
            ("limit=99999999999999999999999999", StatusCode::OK),
            ("limit=-1", StatusCode::BAD_REQUEST),
            ("limit=", StatusCode::BAD_REQUEST),
            ("limit=1e3", StatusCode::BAD_REQUEST),
        ] {
            let path = format!("/dlq?{query}");
            let reply = routes(false).handle(ctx.clone(), request_from(Method::GET, &path, "127.0.0.1:1")).await;
            assert_eq!(reply.status(), status, "{query}");
        }

        // /health and /metrics stay open to everyone.
        for path in ["/health", "/metrics"] {
            let reply = routes(false).handle(ctx.clone(), request_from(Method::GET, path, "192.0.2.2:40000")).await;
            assert_ne!(reply.status(), StatusCode::FORBIDDEN, "{path}");
        }
    });
}

#[test]
fn bodies_are_read_up_to_the_limit() {
    run(async {
        let body = |n: usize| Full::new(Bytes::from(vec![b'x'; n])).map_err(|never| match never {}).boxed();
        assert_eq!(read_body(body(10), 10).await.expect("within limit").len(), 10);
        let refused = read_body(body(11), 10).await.unwrap_err();
        assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
    });
}

#[test]
fn the_server_answers_over_tcp_and_the_client_reads_it() {
    let listener = bind("127.0.0.1", 0).expect("bind");
    let ctx = context(None);
    ctx.health.publish(healthy_report());
    let server = HttpServer::start(listener, routes(false), ctx, Limits::default()).expect("start");
    let url = format!("http://{}/health", server.addr());
    let (status, body) = http_get(&url, Duration::from_secs(5)).expect("answer");
    assert_eq!(status, 200);
    assert!(body.contains(r#""status":"healthy""#), "{body}");
    // Garbage on the wire is answered (400) or the connection closed; the server lives on.
    let mut raw = TcpStream::connect(server.addr()).expect("connect");
    raw.write_all(b"\x00\x01 not http at all\r\n\r\n").expect("write");
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink);
    assert_eq!(http_get(&url, Duration::from_secs(5)).expect("still answering").0, 200);
    let addr = server.addr();
    server.stop();
    assert!(http_get(&format!("http://{addr}/health"), Duration::from_secs(1)).unwrap_err().contains("refused"));
}

#[test]
fn binding_a_taken_port_names_the_variables() {
    let taken = bind("127.0.0.1", 0).expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let e = bind("127.0.0.1", port).unwrap_err();
    assert!(e.to_string().contains("HEALTH_PORT") && e.to_string().contains(&port.to_string()), "{e}");
}
