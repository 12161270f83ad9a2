//! What a handler gets and gives: the request body type, its path [`Params`], the complete-body [`Reply`], the
//! [`Handler`] signature, reply builders, and [`read_body`], the only way a handler reads a
//! body (bounded).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

/// The default bound for [`read_body`].
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;

pub(crate) const JSON: &str = "application/json";

/// A request body, whatever the transport (hyper's `Incoming`, or a `Full` in tests).
pub(crate) type Body = BoxBody<Bytes, BoxError>;
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every handler answers with a complete body.
pub type Reply = Response<Full<Bytes>>;
pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;
/// A route's handler, over the state `S` its server was given.
pub(crate) type Handler<S> = fn(Arc<S>, Request<Body>, Params) -> HandlerFuture;

/// Path parameters captured by `{name}` segments of a route's pattern.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Params(pub(crate) Vec<(&'static str, String)>);

impl Params {
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

/// A reply with a body and its content type.
pub fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut reply = Response::new(Full::new(body.into()));
    *reply.status_mut() = status;
    reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    reply
}

/// A JSON reply from anything serializable.
pub(crate) fn json_reply(status: StatusCode, value: &impl serde::Serialize) -> Reply {
    match serde_json::to_vec(value) {
        Ok(body) => reply(status, JSON, body),
        Err(e) => error_reply(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot encode the answer: {e}")),
    }
}

/// `{"error": message}` with a status.
pub(crate) fn error_reply(status: StatusCode, message: &str) -> Reply {
    let body = serde_json::json!({ "error": message }).to_string();
    reply(status, JSON, body)
}

/// Reads a whole body of at most `limit` bytes; the `Err` is the 413 or 400 to answer with.
/// (Frame by frame rather than through `Limited`, whose error conversion keeps the future from
/// being provably `Send` inside a boxed handler.)
pub(crate) async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, Box<Reply>> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Box::new(error_reply(StatusCode::BAD_REQUEST, &format!("cannot read the request body: {e}")))
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(Box::new(error_reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("request body larger than {limit} bytes"),
                )));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}
