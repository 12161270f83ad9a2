//! The routes of the admin listener: `GET /health`, `GET /metrics`, the dead-letter endpoints
//! of [`crate::ops::dlq_api`], and `POST /events`, which the HTTP ingress owns
//! ([`crate::source::http::post_events`]), here or on a listener of its own.

use std::sync::Arc;

use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::{Request, StatusCode};

use crate::envelope::Source;
use crate::http::{json_reply, reply, Body, HandlerFuture, Params, Router};
use crate::ops::context::AppContext;
use crate::source::http::{post_events, HttpIngress, IngressState};
use crate::telemetry::metrics::{metrics, render};

pub(crate) const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The routes of the admin listener; `POST /events` too when `with_ingress` (HTTP ingress on,
/// without a listener of its own).
pub(crate) fn routes(with_ingress: bool) -> Router<AppContext> {
    let router = Router::default()
        .get("/health", health)
        .get("/metrics", metrics_text)
        .get("/dlq", crate::ops::dlq_api::list)
        .get("/dlq/{id}", crate::ops::dlq_api::get)
        .post("/dlq/{id}/retry", crate::ops::dlq_api::retry);
    match with_ingress {
        true => router.post("/events", post_events::<AppContext>),
        false => router,
    }
}

/// The routes of the ingress's own listener (`HTTP_INGRESS_BIND` / `HTTP_INGRESS_PORT`).
pub(crate) fn ingress_routes() -> Router<AppContext> {
    Router::default().post("/events", post_events::<AppContext>)
}

impl IngressState for AppContext {
    fn ingress(&self) -> Option<&HttpIngress> {
        self.ingress.as_deref()
    }
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
    m.spool.bytes.set(clamp(ctx.spool.used()));
    m.spool.events.set(clamp(ctx.spool.events()));
    m.spool.max_bytes.set(clamp(ctx.config.spool_max_bytes));
    m.spool.dead_letters.set(clamp(ctx.dead_letters.len()));
    for source in Source::ALL {
        m.health.source_enabled.with_label_values(&[source.label()]).set(i64::from(ctx.config.reads(source)));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The operations `openapi.yaml` describes: `(METHOD, /path)` for each method key under a
    /// path of `paths:` (two spaces for a path, four for a method, as the document is laid out).
    fn documented() -> BTreeSet<(String, String)> {
        let doc = include_str!("../../openapi.yaml");
        let mut out = BTreeSet::new();
        let (mut in_paths, mut path) = (false, None::<String>);
        for line in doc.lines() {
            if !line.starts_with(' ') {
                in_paths = line == "paths:";
                continue;
            }
            if !in_paths {
                continue;
            }
            if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
                path = Some(format!("/{p}"));
            } else if let Some(method) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')) {
                if ["get", "post", "put", "patch", "delete", "head"].contains(&method) {
                    out.insert((method.to_uppercase(), path.clone().expect("a method under a path")));
                }
            }
        }
        out
    }

    /// The document and the route table name the same operations: nothing served that is not
    /// described, nothing described that is not served (the ingress's own listener serves a
    /// subset).
    #[test]
    fn openapi_yaml_describes_exactly_the_operations_served() {
        let served: BTreeSet<(String, String)> = routes(true)
            .operations()
            .into_iter()
            .map(|(method, pattern)| (method.to_string(), pattern.to_owned()))
            .collect();
        assert_eq!(documented(), served);
        for (method, pattern) in ingress_routes().operations() {
            assert!(served.contains(&(method.to_string(), pattern.to_owned())), "{method} {pattern}");
        }
    }
}
