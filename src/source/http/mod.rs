//! The HTTP ingress source: `POST /events` (`HTTP_INGRESS=true`), for webhooks, CRMs, billing
//! and other services that feed the same streams as the switch.
//!
//! A request is answered `202` only once every event in it is durable: written to Redis, known
//! as a duplicate, or fsynced to the spool (the pipeline's acknowledgements). In order:
//! 1. **Who**: a bearer token of `HTTP_INGRESS_TOKENS` (its name is the producer), checked
//!    before the body is read; and, when `HTTP_INGRESS_HMAC_SECRET` is set, the body's
//!    `X-Signature-256: sha256=<hex>`. Both compare in constant time. `401` otherwise.
//! 2. **What**: `application/json` (an object, or an array of objects) or
//!    `application/x-ndjson`, optionally `Content-Encoding: gzip`; at most
//!    `HTTP_INGRESS_MAX_BODY` bytes after decompression (`413`, a zip bomb too) and
//!    `HTTP_INGRESS_MAX_BATCH` events; all or nothing, the first bad event named by index
//!    (`400`) ([`body`]).
//! 3. **Where**: the `HTTP_STREAM` entry's `event` is the object exactly as sent, compact;
//!    `event_name` from `HTTP_INGRESS_NAME_FIELD`, `unique_id` (the ordering key: events
//!    sharing it keep their order) from `HTTP_INGRESS_ORDER_FIELD`, `core_uuid` = the
//!    producer, `event_sequence` = the event's id: `HTTP_INGRESS_ID_FIELD`, else the
//!    `Idempotency-Key` header (plus `:<index>` in a batch), else one of the agent's own (a
//!    blind client retry of such an event can duplicate it).
//! 4. **Durable**: `202` with one result per event; not durable within
//!    `HTTP_INGRESS_ACK_TIMEOUT`: `503` + `Retry-After` (the events are still written exactly
//!    once, and a retry with the same ids is safe); no room in memory or spool: `503` at once,
//!    nothing accepted.

pub(crate) mod body;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use hyper::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use hyper::{Request, StatusCode};
use serde_json::json;
use sha2::Sha256;
use tracing::warn;

use crate::ack::AckStatus;
use crate::config::HttpIngressConfig;
use crate::envelope::{now_us, BodyFormat, Envelope, EventId, IdempotencyKey, Source, StreamTarget, Text};
use crate::http::{constant_time_eq, error_reply, json_reply, read_body, Body, HandlerFuture, Params, Reply};
use crate::source::http::body::{check_scalars, parse, scalar_text, BodyEvent, BodyKind};
use crate::source::{Intake, KeyAssigner};
use crate::telemetry::logging::RateLimit;
use crate::telemetry::metrics::metrics;

static REJECT_WARN: RateLimit = RateLimit::new(Duration::from_secs(10));

/// A body must arrive within this of its request head (a slow client cannot hold a
/// connection inside the handler; the head itself has the listener's deadline).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client is told to wait before retrying a `503`.
const RETRY_AFTER_SECS: &str = "1";

/// The ingress: its configuration and where its events go.
pub(crate) struct HttpIngress {
    config: HttpIngressConfig,
    intake: Arc<Intake>,
    stream: Arc<StreamTarget>,
    keys: KeyAssigner,
}

impl HttpIngress {
    pub(crate) fn new(config: HttpIngressConfig, intake: Arc<Intake>) -> Arc<HttpIngress> {
        let stream = config.stream_target();
        Arc::new(HttpIngress { config, intake, stream, keys: KeyAssigner::new() })
    }

    /// Who sent it: the token's producer name, `webhook` (signature only) or `anonymous`.
    fn producer(&self, headers: &HeaderMap) -> Result<String, Refusal> {
        if self.config.tokens.is_empty() {
            return Ok(if self.config.hmac_secret.is_some() { "webhook" } else { "anonymous" }.to_owned());
        }
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Refusal::unauthorized("a bearer token is required"))?;
        // Every token is compared, whatever matched, so the time says nothing.
        let mut found = None;
        for t in &self.config.tokens {
            if constant_time_eq(t.token.as_bytes(), presented.trim().as_bytes()) {
                found = Some(t.name.clone());
            }
        }
        found.ok_or_else(|| Refusal::unauthorized("the bearer token is not valid"))
    }

    /// `X-Signature-256: sha256=<hex of HMAC-SHA256(secret, raw body)>`, when a secret is set.
    fn check_signature(&self, headers: &HeaderMap, raw: &[u8]) -> Result<(), Refusal> {
        let Some(secret) = &self.config.hmac_secret else { return Ok(()) };
        let given = headers
            .get("x-signature-256")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().strip_prefix("sha256="))
            .and_then(decode_hex)
            .ok_or_else(|| Refusal::unauthorized("X-Signature-256: sha256=<hex> is required"))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any size");
        mac.update(raw);
        mac.verify_slice(&given).map_err(|_| Refusal::unauthorized("the signature does not match the body"))
    }

    /// The request's body, decompressed, within the limit.
    fn decode(&self, headers: &HeaderMap, raw: Bytes) -> Result<Bytes, Refusal> {
        let max = self.config.max_body;
        match headers.get(CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase()) {
            None => Ok(raw),
            Some(e) if e.is_empty() || e == "identity" => Ok(raw),
            Some(e) if e == "gzip" || e == "x-gzip" => {
                use std::io::Read;
                let mut out = Vec::new();
                let read = flate2::read::MultiGzDecoder::new(&raw[..]).take(max as u64 + 1).read_to_end(&mut out);
                match read {
                    Err(e) => Err(Refusal::new(StatusCode::BAD_REQUEST, format!("the gzip body cannot be read: {e}"))),
                    Ok(n) if n > max => Err(Refusal::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the body is larger than HTTP_INGRESS_MAX_BODY={max} bytes once decompressed"),
                    )),
                    Ok(_) => Ok(Bytes::from(out)),
                }
            }
            Some(e) => Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {e:?} is not accepted; send gzip or nothing"),
            )),
        }
    }

    /// The envelopes of a request's events, in order.
    fn envelopes(&self, producer: &str, events: Vec<BodyEvent>, batch: bool, idem: Option<&str>) -> Vec<Envelope> {
        let c = &self.config;
        let now = now_us();
        events
            .into_iter()
            .enumerate()
            .map(|(index, e)| {
                let field = |name: &str| e.fields.get(name).and_then(scalar_text);
                let id = field(&c.id_field)
                    .or_else(|| idem.map(|key| if batch { format!("{key}:{index}") } else { key.to_owned() }));
                // Its producer may have sent an event with an id before: the checking path. A
                // key the agent assigned is new: the fast path, as the switch's events take it
                // (a retry after an ambiguous failure is marked and checks).
                let (key, maybe_written) = match id {
                    Some(id) => (IdempotencyKey { producer: producer.into(), id: EventId::Key(id) }, true),
                    None => (self.keys.next(), false),
                };
                Envelope {
                    name: field(&c.name_field).map_or_else(Text::new, Text::from),
                    ordering_key: field(&c.order_field).map_or_else(Text::new, Text::from),
                    parsed_at_us: now,
                    maybe_written,
                    ..Envelope::new(Source::Http, self.stream.clone(), BodyFormat::Json, Bytes::from(e.compact), key)
                }
            })
            .collect()
    }

    /// Answers one `POST /events`: `202` once every event is durable, else why not. The
    /// producer it was for is in the reply's extensions ([`ProducerLabel`]).
    pub(crate) async fn handle(&self, req: Request<Body>) -> Reply {
        match self.try_handle(req).await {
            Ok(reply) => reply,
            Err(refusal) => {
                if let Some(suppressed) = REJECT_WARN.check() {
                    warn!(status = refusal.status.as_u16(), producer = %refusal.producer, error = %refusal.message, index = ?refusal.index, suppressed, "POST /events refused");
                }
                let mut reply = refusal.reply();
                reply.extensions_mut().insert(ProducerLabel(refusal.producer));
                reply
            }
        }
    }

    async fn try_handle(&self, req: Request<Body>) -> Result<Reply, Refusal> {
        let (producer, kind, idem) = self.head(req.headers())?;
        let headers = req.headers().clone();
        let read = tokio::time::timeout(BODY_TIMEOUT, read_body(req.into_body(), self.config.max_body));
        let raw = match read.await {
            Err(_) => {
                let message = format!("the body did not arrive within {BODY_TIMEOUT:?}");
                return Err(Refusal::new(StatusCode::REQUEST_TIMEOUT, message).by(&producer));
            }
            Ok(Ok(raw)) => raw,
            Ok(Err(reply)) => {
                let message = format!(
                    "the body is larger than HTTP_INGRESS_MAX_BODY={} bytes, or unreadable",
                    self.config.max_body
                );
                return Err(Refusal::new(reply.status(), message).by(&producer));
            }
        };
        let envelopes = self.prepare(&producer, kind, idem.as_deref(), &headers, raw).map_err(|r| r.by(&producer))?;
        self.intake.received(Source::Http, envelopes.len() as u64);
        let bytes: u64 = envelopes.iter().map(|e| e.body.len() as u64).sum();
        if !self.intake.pipeline().has_room(bytes) {
            return Err(
                Refusal::unavailable("no room in memory or in the spool now; nothing was accepted").by(&producer)
            );
        }
        // Events whose key the agent assigned (numeric: a producer's ids are strings).
        let assigned: Vec<bool> = envelopes.iter().map(|e| matches!(e.key.id, EventId::Seq(_))).collect();
        let receiver = self.intake.submit_acked(envelopes);
        match receiver.wait(self.config.ack_timeout).await {
            Some(statuses) => self.answer(&producer, &statuses, &assigned).map_err(|r| r.by(&producer)),
            None => {
                let message = format!(
                    "the events were not durable within HTTP_INGRESS_ACK_TIMEOUT={:?}; they will still be written once: retry with the same ids",
                    self.config.ack_timeout
                );
                Err(Refusal::unavailable(message).by(&producer))
            }
        }
    }

    /// What the headers say: who sent it, how, and its `Idempotency-Key`.
    fn head(&self, headers: &HeaderMap) -> Result<(String, BodyKind, Option<String>), Refusal> {
        let producer = self.producer(headers)?;
        let kind = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(BodyKind::from_content_type);
        let Some(kind) = kind else {
            let refusal =
                Refusal::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send application/json or application/x-ndjson");
            return Err(refusal.by(&producer));
        };
        let idem = match headers.get("idempotency-key").map(|v| v.to_str()) {
            None => None,
            Some(Ok(k)) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()) => {
                Some(k.to_owned())
            }
            Some(_) => {
                let refusal =
                    Refusal::new(StatusCode::BAD_REQUEST, "Idempotency-Key must be 1-255 visible ASCII characters");
                return Err(refusal.by(&producer));
            }
        };
        Ok((producer, kind, idem))
    }

    /// The request's events as envelopes: signature checked, body decoded and parsed.
    fn prepare(
        &self,
        producer: &str,
        kind: BodyKind,
        idem: Option<&str>,
        headers: &HeaderMap,
        raw: Bytes,
    ) -> Result<Vec<Envelope>, Refusal> {
        self.check_signature(headers, &raw)?;
        let body = self.decode(headers, raw)?;
        let parsed = parse(kind, &body, self.config.max_batch, &self.config.required_fields).map_err(|e| {
            let status =
                if e.message.contains("MAX_BATCH") { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::BAD_REQUEST };
            Refusal { status, message: e.message, index: e.index, producer: String::new() }
        })?;
        let c = &self.config;
        check_scalars(&parsed.events, &[&c.name_field, &c.order_field, &c.id_field]).map_err(|e| Refusal {
            status: StatusCode::BAD_REQUEST,
            message: e.message,
            index: e.index,
            producer: String::new(),
        })?;
        Ok(self.envelopes(producer, parsed.events, parsed.batch, idem))
    }

    /// `202` when every event is durable, else the first that is not. `assigned` marks the
    /// events whose key the agent assigned: one of those found already written was written by
    /// the agent's own earlier attempt at this request (its answer lost to a timeout), so it is
    /// reported written (entry id unknown), not as a duplicate the producer never sent.
    fn answer(&self, producer: &str, statuses: &[AckStatus], assigned: &[bool]) -> Result<Reply, Refusal> {
        let n = statuses.len();
        let duplicate =
            |i: usize, s: &AckStatus| *s == AckStatus::Duplicate && !assigned.get(i).copied().unwrap_or(false);
        let duplicates = statuses.iter().enumerate().filter(|(i, s)| duplicate(*i, s)).count();
        if let Some((index, bad)) = statuses.iter().enumerate().find(|(_, s)| !s.is_durable()) {
            let (status, message) = match bad {
                AckStatus::Dropped(reason) => {
                    (StatusCode::SERVICE_UNAVAILABLE, format!("event dropped ({reason}): retry later"))
                }
                AckStatus::DeadLettered(id) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("Redis refused the event for good; it is kept as dead letter {id}"),
                ),
                _ => unreachable!("durable outcomes are filtered out"),
            };
            return Err(Refusal { status, message, index: Some(index), producer: String::new() });
        }
        let m = metrics();
        m.ingress.events.with_label_values(&[producer, "accepted"]).inc_by((n - duplicates) as u64);
        m.ingress.events.with_label_values(&[producer, "duplicate"]).inc_by(duplicates as u64);
        let results: Vec<_> = statuses
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                AckStatus::Written(id) => json!({"status": "written", "id": id}),
                AckStatus::Duplicate if !duplicate(i, s) => json!({"status": "written", "id": null}),
                AckStatus::Duplicate => json!({"status": "duplicate", "id": null}),
                _ => json!({"status": "spooled", "id": null}),
            })
            .collect();
        let body = json!({"accepted": n - duplicates, "duplicates": duplicates, "results": results});
        let mut reply = json_reply(StatusCode::ACCEPTED, &body);
        reply.extensions_mut().insert(ProducerLabel(producer.to_owned()));
        Ok(reply)
    }
}

/// The producer a reply was for (for the request metrics).
#[derive(Clone, Debug)]
pub(crate) struct ProducerLabel(pub String);

/// A request not accepted: its status, why, which event (if one), and who sent it.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
    index: Option<usize>,
    producer: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal { status, message: message.into(), index: None, producer: "unknown".into() }
    }

    fn unauthorized(message: &str) -> Refusal {
        Refusal::new(StatusCode::UNAUTHORIZED, message)
    }

    fn unavailable(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    fn by(mut self, producer: &str) -> Refusal {
        self.producer = producer.to_owned();
        self
    }

    fn reply(&self) -> Reply {
        let body = match self.index {
            Some(i) => json!({"error": self.message, "index": i}),
            None => json!({"error": self.message}),
        };
        let mut reply = json_reply(self.status, &body);
        let headers = reply.headers_mut();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
            }
            _ => {}
        }
        reply
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// The TLS configuration of the ingress listener from its PEM files (`HTTP_INGRESS_TLS_CERT`,
/// `HTTP_INGRESS_TLS_KEY`); the error names the file and what is wrong with it.
pub(crate) fn tls_config(cert: &str, key: &str) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("HTTP_INGRESS_TLS_CERT={cert}: not a PEM certificate chain: {e}"))?;
    if certs.is_empty() {
        return Err(format!("HTTP_INGRESS_TLS_CERT={cert}: no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("HTTP_INGRESS_TLS_KEY={key}: not a PEM private key: {e}"))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("HTTP_INGRESS_TLS_CERT / HTTP_INGRESS_TLS_KEY do not make a TLS identity: {e}"))?;
    Ok(Arc::new(config))
}

/// What the state of a server that serves `POST /events` gives it: the ingress, when it is on.
/// (The admin server's state, and the ingress's own listener's, both implement it; the HTTP
/// server itself knows no route.)
pub(crate) trait IngressState: Send + Sync + 'static {
    fn ingress(&self) -> Option<&HttpIngress>;
}

/// `POST /events` on a server whose state is `S`: hand the route to its [`crate::http::Router`].
pub(crate) fn post_events<S: IngressState>(ctx: Arc<S>, req: Request<Body>, _params: Params) -> HandlerFuture {
    Box::pin(async move {
        let started = std::time::Instant::now();
        let Some(ingress) = ctx.ingress() else {
            return error_reply(StatusCode::NOT_FOUND, "HTTP ingress is off (HTTP_INGRESS=false)");
        };
        let reply = ingress.handle(req).await;
        let producer = reply.extensions().get::<ProducerLabel>().map(|p| p.0.as_str()).unwrap_or("unknown");
        let m = metrics();
        m.ingress.requests.with_label_values(&[reply.status().as_str(), producer]).inc();
        m.ingress.duration.observe(started.elapsed().as_secs_f64());
        reply
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_constant_time_compare() {
        assert_eq!(decode_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("zz"), None);
        assert!(
            constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd") && !constant_time_eq(b"a", b"ab")
        );
    }
}
