//! The HTTP side of the agent on `HEALTH_BIND:HEALTH_PORT`: the server, its router, helpers
//! for handlers (replies, bearer auth, bounded body reads), and the tiny client behind
//! `eslstream health`. The routes themselves are in [`crate::ops::routes`].
//!
//! Adding a route: write a [`Handler`] (`fn(Arc<AppContext>, Request<Body>, Params) ->
//! HandlerFuture`) and register it in [`crate::ops::routes::routes`]; the router answers 404
//! for unknown paths, 405 with `Allow` for known paths and other methods, and `HEAD` for every
//! `GET` route.
//! Handlers never see a request bigger than [`MAX_HEADER_BYTES`] of headers and read bodies
//! through [`read_body`], which is bounded.

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderMap, HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{oneshot, Semaphore};
use tracing::{debug, info, warn};

use crate::logging::RateLimit;
use crate::ops::context::AppContext;

/// Connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 256;
/// Request line and headers must fit in this.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// A client must send its headers within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The default bound for [`read_body`].
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

const JSON: &str = "application/json";

static ACCEPT_WARN: RateLimit = RateLimit::new(Duration::from_secs(10));

/// A request body, whatever the transport (hyper's `Incoming`, or a `Full` in tests).
pub type Body = BoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every handler answers with a complete body.
pub type Reply = Response<Full<Bytes>>;
pub type HandlerFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;
pub type Handler = fn(Arc<AppContext>, Request<Body>, Params) -> HandlerFuture;

// ---------------------------------------------------------------------------------------------
// Router
// ---------------------------------------------------------------------------------------------

/// Path parameters captured by `{name}` segments of a route's pattern.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Params(Vec<(&'static str, String)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment {
    Literal(&'static str),
    Param(&'static str),
}

struct Route {
    pattern: &'static str,
    segments: Vec<Segment>,
    methods: Vec<(Method, Handler)>,
}

impl Route {
    fn matches(&self, path: &str) -> Option<Params> {
        let mut parts = path.strip_prefix('/')?.split('/');
        let mut params = Params::default();
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(literal) if *literal == part => {}
                Segment::Param(name) if !part.is_empty() => params.0.push((name, part.to_owned())),
                _ => return None,
            }
        }
        parts.next().is_none().then_some(params)
    }

    fn handler(&self, method: &Method) -> Option<Handler> {
        self.methods.iter().find(|(m, _)| m == method).map(|(_, h)| *h)
    }

    /// The `Allow` header: the route's methods, plus `HEAD` where `GET` is served.
    fn allow(&self) -> String {
        let mut names: Vec<&str> = self.methods.iter().map(|(m, _)| m.as_str()).collect();
        if self.handler(&Method::GET).is_some() && self.handler(&Method::HEAD).is_none() {
            names.push("HEAD");
        }
        names.join(", ")
    }
}

/// Routes by path pattern (`/dlq/{id}/retry`) and method.
#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Adds `handler` for `method` on `pattern` (segments are literals or `{name}`).
    pub fn route(mut self, method: Method, pattern: &'static str, handler: Handler) -> Router {
        if let Some(route) = self.routes.iter_mut().find(|r| r.pattern == pattern) {
            route.methods.push((method, handler));
            return self;
        }
        let segments = pattern
            .trim_start_matches('/')
            .split('/')
            .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => Segment::Param(name),
                None => Segment::Literal(s),
            })
            .collect();
        self.routes.push(Route { pattern, segments, methods: vec![(method, handler)] });
        self
    }

    pub fn get(self, pattern: &'static str, handler: Handler) -> Router {
        self.route(Method::GET, pattern, handler)
    }

    pub fn post(self, pattern: &'static str, handler: Handler) -> Router {
        self.route(Method::POST, pattern, handler)
    }

    /// Answers one request; never fails.
    pub async fn handle(&self, ctx: Arc<AppContext>, req: Request<Body>) -> Reply {
        let path = req.uri().path().to_owned();
        let Some((route, params)) = self.routes.iter().find_map(|r| r.matches(&path).map(|p| (r, p))) else {
            return error_reply(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}"));
        };
        let head = req.method() == Method::HEAD && route.handler(&Method::HEAD).is_none();
        let method = if head { Method::GET } else { req.method().clone() };
        let Some(handler) = route.handler(&method) else {
            let mut reply = error_reply(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{} is not allowed on {path}; allowed: {}", req.method(), route.allow()),
            );
            if let Ok(allow) = HeaderValue::from_str(&route.allow()) {
                reply.headers_mut().insert(ALLOW, allow);
            }
            return reply;
        };
        let reply = handler(ctx, req, params).await;
        if head {
            without_body(reply)
        } else {
            reply
        }
    }
}

/// A `HEAD` answer: the `GET` answer's status and headers, its length, no body.
fn without_body(reply: Reply) -> Reply {
    let length = reply.body().size_hint().exact().unwrap_or(0);
    let (mut parts, _) = reply.into_parts();
    parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    Response::from_parts(parts, Full::new(Bytes::new()))
}

// ---------------------------------------------------------------------------------------------
// Replies and helpers for handlers
// ---------------------------------------------------------------------------------------------

/// A reply with a body and its content type.
pub fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut reply = Response::new(Full::new(body.into()));
    *reply.status_mut() = status;
    reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    reply
}

/// A JSON reply from anything serializable.
pub fn json_reply(status: StatusCode, value: &impl serde::Serialize) -> Reply {
    match serde_json::to_vec(value) {
        Ok(body) => reply(status, JSON, body),
        Err(e) => error_reply(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot encode the answer: {e}")),
    }
}

/// `{"error": message}` with a status.
pub fn error_reply(status: StatusCode, message: &str) -> Reply {
    let body = serde_json::json!({ "error": message }).to_string();
    reply(status, JSON, body)
}

/// Checks `Authorization: Bearer <HTTP_TOKEN>` when a token is configured; the `Err` is the
/// 401 to answer with.
pub fn authorize(ctx: &AppContext, headers: &HeaderMap) -> Result<(), Box<Reply>> {
    let Some(token) = ctx.config.http_token.as_deref() else {
        return Ok(());
    };
    let given = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes())) {
        return Ok(());
    }
    let mut reply = error_reply(StatusCode::UNAUTHORIZED, "missing or wrong bearer token (HTTP_TOKEN)");
    reply.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
    Err(Box::new(reply))
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a whole body of at most `limit` bytes; the `Err` is the 413 or 400 to answer with.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, Box<Reply>> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(Box::new(error_reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body larger than {limit} bytes"),
        ))),
        Err(e) => Err(Box::new(error_reply(StatusCode::BAD_REQUEST, &format!("cannot read the request body: {e}")))),
    }
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// Binds the listener, naming the variables in the error.
pub fn bind(host: &str, port: u16) -> io::Result<std::net::TcpListener> {
    let context = |e: io::Error| {
        io::Error::new(e.kind(), format!("cannot listen on {host}:{port} (HEALTH_BIND, HEALTH_PORT): {e}"))
    };
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs().map_err(context)?.collect();
    let listener = std::net::TcpListener::bind(&addrs[..]).map_err(context)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The running server: its thread, its address, and the way to stop it.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Serves `router` on `listener` from a thread of its own.
    pub fn start(listener: std::net::TcpListener, router: Router, ctx: Arc<AppContext>) -> io::Result<HttpServer> {
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new().name("http".into()).spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, Arc::new(router), ctx, stopped).await,
                    Err(e) => warn!(error = %e, "HTTP server cannot use its socket"),
                }
            })
        })?;
        info!(%addr, "HTTP server listening (/health, /metrics)");
        Ok(HttpServer { addr, stop: Some(stop), thread: Some(thread) })
    }

    /// The bound address (the real port when `HEALTH_PORT=0`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, drops open connections, and joins the thread.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shut();
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    router: Arc<Router>,
    ctx: Arc<AppContext>,
    mut stop: oneshot::Receiver<()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                if let Some(suppressed) = ACCEPT_WARN.check() {
                    warn!(error = %e, suppressed, "HTTP accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(suppressed) = ACCEPT_WARN.check() {
                warn!(limit = MAX_CONNECTIONS, suppressed, "too many HTTP connections; closing new ones");
            }
            continue;
        };
        let (router, ctx) = (router.clone(), ctx.clone());
        tokio::spawn(async move {
            serve_connection(stream, router, ctx).await;
            drop(slot);
        });
    }
    debug!("HTTP server stopped");
}

async fn serve_connection(stream: tokio::net::TcpStream, router: Arc<Router>, ctx: Arc<AppContext>) {
    let service = service_fn(move |req: Request<Incoming>| {
        let (router, ctx) = (router.clone(), ctx.clone());
        async move {
            let req = req.map(|body| body.map_err(BoxError::from).boxed());
            Ok::<_, Infallible>(router.handle(ctx, req).await)
        }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = result {
        debug!(error = %e, "HTTP connection ended with an error");
    }
}

// ---------------------------------------------------------------------------------------------
// Client for `eslstream health`
// ---------------------------------------------------------------------------------------------

/// `http://<host>:<port>/health` for the agent configured by `HEALTH_BIND` and `HEALTH_PORT`
/// (as given, e.g. from the environment): 127.0.0.1 unless bound to one specific address.
pub fn local_health_url(bind: Option<&str>, port: Option<&str>) -> Result<String, String> {
    let port = match port.map(str::trim).filter(|p| !p.is_empty()) {
        None => 9876,
        Some(p) => p.parse::<u16>().map_err(|_| format!("invalid HEALTH_PORT={p:?}: expected a port number"))?,
    };
    let host = match bind.map(str::trim).filter(|b| !b.is_empty()) {
        None | Some("0.0.0.0") | Some("::") | Some("[::]") => "127.0.0.1".to_owned(),
        Some(h) if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        Some(h) => h.to_owned(),
    };
    Ok(format!("http://{host}:{port}/health"))
}

/// GETs a plain `http://` URL with HTTP/1.1; returns the status code and the body.
pub fn http_get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let target = if authority.rsplit_once(':').is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit())) {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = target
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {authority}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| match e.kind() {
        io::ErrorKind::ConnectionRefused => {
            format!("cannot connect to {addr}: connection refused (is eslstream running, with this HEALTH_PORT?)")
        }
        _ => format!("cannot connect to {addr}: {e}"),
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: eslstream-health\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(|e| format!("cannot send the request to {addr}: {e}"))?;
    let mut response = Vec::new();
    (&mut stream)
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut response)
        .map_err(|e| format!("no complete answer from {addr} within {timeout:?}: {e}"))?;
    if response.len() > MAX_BODY_BYTES {
        return Err(format!("answer from {addr} is larger than {MAX_BODY_BYTES} bytes"));
    }
    parse_response(&response).ok_or_else(|| format!("unparseable HTTP answer from {addr}"))
}

/// Splits a complete HTTP/1.1 response (read to EOF) into status code and body.
fn parse_response(response: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ops::health::{Check, HealthReport, Status};
    use crate::ops::routes::{routes, PROMETHEUS_TEXT};
    use crate::pipeline::spool::SpoolBudget;
    use crate::pipeline::{Pipeline, PipelineShape};
    use crate::sink::dlq::DeadLetters;
    use crate::state::AgentState;
    use std::collections::HashMap;

    fn context(token: Option<&str>) -> Arc<AppContext> {
        let mut config = Config::from_vars(HashMap::new()).expect("default config");
        config.http_token = token.map(str::to_owned);
        let dlq_dir = tempfile::tempdir().expect("temp dir");
        let dead_letters = Arc::new(DeadLetters::open(dlq_dir.path()).expect("dead-letter store"));
        AppContext::new(
            &Arc::new(config),
            &Arc::new(AgentState::default()),
            &Pipeline::new(PipelineShape::from_buffer(1, 100, 1 << 20)),
            &SpoolBudget::new(1 << 20),
            &dead_letters,
        )
    }

    fn request(method: Method, path: &str) -> Request<Body> {
        let body = Full::new(Bytes::new()).map_err(|never| match never {}).boxed();
        Request::builder().method(method).uri(path).body(body).expect("valid request")
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
            let reply = routes().handle(ctx.clone(), request(Method::GET, "/nope")).await;
            assert_eq!(reply.status(), StatusCode::NOT_FOUND);
            assert!(body_of(reply).await.contains("no such endpoint: /nope"));
            let reply = routes().handle(ctx.clone(), request(Method::GET, "/health/extra")).await;
            assert_eq!(reply.status(), StatusCode::NOT_FOUND);
            let reply = routes().handle(ctx, request(Method::POST, "/health")).await;
            assert_eq!(reply.status(), StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(reply.headers()[ALLOW], "GET, HEAD");
        });
    }

    #[test]
    fn head_has_the_get_headers_and_no_body() {
        run(async {
            let ctx = context(None);
            let get = routes().handle(ctx.clone(), request(Method::GET, "/metrics")).await;
            let get_len = body_of(get).await.len();
            let head = routes().handle(ctx, request(Method::HEAD, "/metrics")).await;
            assert_eq!(head.status(), StatusCode::OK);
            assert_eq!(head.headers()[CONTENT_TYPE], PROMETHEUS_TEXT);
            assert_eq!(head.headers()[CONTENT_LENGTH], get_len.to_string().as_str());
            assert_eq!(body_of(head).await, "");
        });
    }

    #[test]
    fn metrics_is_prometheus_text() {
        run(async {
            let reply = routes().handle(context(None), request(Method::GET, "/metrics?x=1")).await;
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
            let reply = routes().handle(ctx.clone(), request(Method::GET, "/health")).await;
            assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
            let body: serde_json::Value = serde_json::from_str(&body_of(reply).await).expect("JSON");
            assert_eq!(body["status"], "unhealthy");
            assert_eq!(body["data"]["checks"][0]["name"], "startup");

            ctx.health.publish(healthy_report());
            let reply = routes().handle(ctx, request(Method::GET, "/health")).await;
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
    fn bearer_auth_only_when_a_token_is_set() {
        let mut headers = HeaderMap::new();
        assert!(authorize(&context(None), &headers).is_ok());
        let ctx = context(Some("s3cret"));
        let denied = authorize(&ctx, &headers).unwrap_err();
        assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(denied.headers()["www-authenticate"], "Bearer");
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer wrong!"));
        assert!(authorize(&ctx, &headers).is_err());
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic s3cret"));
        assert!(authorize(&ctx, &headers).is_err());
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
        assert!(authorize(&ctx, &headers).is_ok());
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
    fn health_url_follows_bind_and_port() {
        assert_eq!(local_health_url(None, None).unwrap(), "http://127.0.0.1:9876/health");
        assert_eq!(local_health_url(Some("0.0.0.0"), Some("9100")).unwrap(), "http://127.0.0.1:9100/health");
        assert_eq!(local_health_url(Some("10.0.0.5"), None).unwrap(), "http://10.0.0.5:9876/health");
        assert_eq!(local_health_url(Some("::1"), Some("1")).unwrap(), "http://[::1]:1/health");
        assert!(local_health_url(None, Some("http")).unwrap_err().contains("HEALTH_PORT"));
    }

    #[test]
    fn responses_are_parsed_for_the_health_command() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(raw), Some((503, "{}".to_owned())));
        assert_eq!(parse_response(b"garbage"), None);
    }

    #[test]
    fn the_server_answers_over_tcp_and_the_client_reads_it() {
        let listener = bind("127.0.0.1", 0).expect("bind");
        let ctx = context(None);
        ctx.health.publish(healthy_report());
        let server = HttpServer::start(listener, routes(), ctx).expect("start");
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
}
