//! The routes of the admin listener: `GET /health`, `GET /metrics`, the dead-letter endpoints
//! of [`crate::ops::dlq_api`], and `POST /events` of the HTTP ingress (here, or on a listener
//! of its own).

use std::sync::Arc;

use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::{Request, StatusCode};

use crate::envelope::Source;
use crate::ops::context::AppContext;
use crate::ops::http::{json_reply, reply, Body, HandlerFuture, Params, Router};
use crate::source::http::ProducerLabel;
use crate::telemetry::metrics::{metrics, render};

pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The routes of the admin listener; `POST /events` too when `with_ingress` (HTTP ingress on,
/// without a listener of its own).
pub fn routes(with_ingress: bool) -> Router {
    let router = Router::default()
        .get("/health", health)
        .get("/metrics", metrics_text)
        .get("/dlq", crate::ops::dlq_api::list)
        .get("/dlq/{id}", crate::ops::dlq_api::get)
        .post("/dlq/{id}/retry", crate::ops::dlq_api::retry);
    match with_ingress {
        true => router.post("/events", post_events),
        false => router,
    }
}

/// The routes of the ingress's own listener (`HTTP_INGRESS_BIND` / `HTTP_INGRESS_PORT`).
pub fn ingress_routes() -> Router {
    Router::default().post("/events", post_events)
}

/// `POST /events`: the HTTP ingress source ([`crate::source::http`]).
fn post_events(ctx: Arc<AppContext>, req: Request<Body>, _params: Params) -> HandlerFuture {
    Box::pin(async move {
        let started = std::time::Instant::now();
        let Some(ingress) = ctx.ingress.clone() else {
            return crate::ops::http::error_reply(StatusCode::NOT_FOUND, "HTTP ingress is off (HTTP_INGRESS=false)");
        };
        let reply = ingress.handle(req).await;
        let producer = reply.extensions().get::<ProducerLabel>().map(|p| p.0.as_str()).unwrap_or("unknown");
        let m = metrics();
        m.ingress_requests.with_label_values(&[reply.status().as_str(), producer]).inc();
        m.ingress_duration.observe(started.elapsed().as_secs_f64());
        reply
    })
}

/// `GET /health`: the monitor's latest report; 200 when healthy, else 503.
fn health(ctx: Arc<AppContext>, _req: Request<Body>, _params: Params) -> HandlerFuture {
    Box::pin(async move {
        let report = ctx.health.latest();
        let status = if report.is_healthy() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        let mut reply = json_reply(status, &*report);
        reply.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        reply
    })
}

/// `GET /metrics`: the registry in Prometheus text format.
fn metrics_text(ctx: Arc<AppContext>, _req: Request<Body>, _params: Params) -> HandlerFuture {
    Box::pin(async move {
        refresh_gauges(&ctx);
        reply(StatusCode::OK, PROMETHEUS_TEXT, render())
    })
}

/// Copies figures kept outside the registry (the spool's and the dead-letter store's own
/// counters, the configuration) into gauges.
fn refresh_gauges(ctx: &AppContext) {
    let m = metrics();
    let clamp = |n: u64| n.min(i64::MAX as u64) as i64;
    m.spool_bytes.set(clamp(ctx.spool.used()));
    m.spool_events.set(clamp(ctx.spool.events()));
    m.spool_max_bytes.set(clamp(ctx.config.spool_max_bytes));
    m.dead_letters.set(clamp(ctx.dead_letters.len()));
    for source in Source::ALL {
        m.source_enabled.with_label_values(&[source.label()]).set(i64::from(ctx.config.reads(source)));
    }
}
