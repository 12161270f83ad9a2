//! The router: path patterns (`/dlq/{id}/retry`) and methods to [`Handler`]s. It answers 404
//! for unknown paths, 405 with `Allow` for known paths and other methods, and `HEAD` for every
//! `GET` route.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Body as _;
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH};
use hyper::{Method, Request, Response, StatusCode};

use crate::http::handler::{error_reply, Body, Handler, Params, Reply};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment {
    Literal(&'static str),
    Param(&'static str),
}

struct Route<S> {
    pattern: &'static str,
    segments: Vec<Segment>,
    methods: Vec<(Method, Handler<S>)>,
}

impl<S> Route<S> {
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

    fn handler(&self, method: &Method) -> Option<Handler<S>> {
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

/// Routes by path pattern (`/dlq/{id}/retry`) and method, to handlers over the state `S`.
pub(crate) struct Router<S> {
    routes: Vec<Route<S>>,
}

impl<S> Default for Router<S> {
    fn default() -> Self {
        Router { routes: Vec::new() }
    }
}

impl<S> Router<S> {
    /// Adds `handler` for `method` on `pattern` (segments are literals or `{name}`).
    pub(crate) fn route(mut self, method: Method, pattern: &'static str, handler: Handler<S>) -> Router<S> {
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

    pub(crate) fn get(self, pattern: &'static str, handler: Handler<S>) -> Router<S> {
        self.route(Method::GET, pattern, handler)
    }

    pub(crate) fn post(self, pattern: &'static str, handler: Handler<S>) -> Router<S> {
        self.route(Method::POST, pattern, handler)
    }

    /// Every operation served: `(method, pattern)`, in the order the routes were added.
    #[cfg(test)]
    pub(crate) fn operations(&self) -> Vec<(Method, &'static str)> {
        self.routes.iter().flat_map(|r| r.methods.iter().map(|(m, _)| (m.clone(), r.pattern))).collect()
    }

    /// Answers one request; never fails.
    pub(crate) async fn handle(&self, ctx: Arc<S>, req: Request<Body>) -> Reply {
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
