//! The dead-letter endpoints: `GET /dlq` (list), `GET /dlq/{id}` (inspect),
//! `POST /dlq/{id}/retry` (write it again; on success it leaves the store). Dead letters are
//! call data: with `HTTP_TOKEN` set they need its bearer token, without it they answer loopback
//! clients only ([`authorize`]); [`announce_access`] says which at start-up.

use std::sync::Arc;

use hyper::Request;
use hyper::StatusCode;
use serde_json::json;
use tracing::info;

use crate::config::Config;
use crate::http::{authorize, error_reply, json_reply, Body, HandlerFuture, Params, Reply};
use crate::ops::context::AppContext;
use crate::sink::dlq::DeadLetter;
use crate::sink::redis::EntryOutcome;
use crate::sink::target::Sink;

/// Logs, once at start-up, who may use these endpoints when that is not obvious.
pub(crate) fn announce_access(config: &Config) {
    if config.http_token.is_none() {
        info!("HTTP_TOKEN is unset: /dlq answers loopback clients only (127.0.0.0/8, ::1); set HTTP_TOKEN to use it from elsewhere");
    }
}

/// Most dead letters listed by one `GET /dlq` (`?limit=` lowers it).
const LIST_LIMIT: usize = 1000;

/// `GET /dlq[?limit=N]`; a `limit` that is not a whole number is a 400.
pub(crate) fn list(ctx: Arc<AppContext>, req: Request<Body>, _params: Params) -> HandlerFuture {
    Box::pin(async move {
        if let Err(reply) = authorize(ctx.config.http_token.as_deref(), &req) {
            return *reply;
        }
        let limit = match req.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("limit="))) {
            None => LIST_LIMIT,
            // Digits only; past what a usize holds is as many as there are.
            Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                v.parse::<usize>().map_or(LIST_LIMIT, |n| n.min(LIST_LIMIT))
            }
            Some(_) => return error_reply(StatusCode::BAD_REQUEST, "limit must be a whole number, 0 or more"),
        };
        let store = ctx.dead_letters.clone();
        match tokio::task::spawn_blocking(move || store.list(limit).map(|items| (store.len(), items))).await {
            Ok(Ok((count, items))) => json_reply(StatusCode::OK, &json!({ "count": count, "items": items })),
            Ok(Err(e)) => error_reply(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot read dead letters: {e}")),
            Err(e) => error_reply(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    })
}

async fn load(ctx: &AppContext, params: &Params) -> Result<DeadLetter, Reply> {
    let id = params.get("id").unwrap_or_default().to_owned();
    let store = ctx.dead_letters.clone();
    match tokio::task::spawn_blocking(move || store.get(&id)).await {
        Ok(Ok(Some(letter))) => Ok(letter),
        Ok(Ok(None)) => Err(error_reply(StatusCode::NOT_FOUND, "no such dead letter")),
        Ok(Err(e)) => Err(error_reply(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot read dead letter: {e}"))),
        Err(e) => Err(error_reply(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
    }
}

/// `GET /dlq/{id}`
pub(crate) fn get(ctx: Arc<AppContext>, req: Request<Body>, params: Params) -> HandlerFuture {
    Box::pin(async move {
        if let Err(reply) = authorize(ctx.config.http_token.as_deref(), &req) {
            return *reply;
        }
        match load(&ctx, &params).await {
            Ok(letter) => json_reply(StatusCode::OK, &letter),
            Err(reply) => reply,
        }
    })
}

/// `POST /dlq/{id}/retry`: 200 with the entry ID when written (or already there), 409 when
/// Redis refuses it again (it stays), 503 when Redis cannot be reached.
pub(crate) fn retry(ctx: Arc<AppContext>, req: Request<Body>, params: Params) -> HandlerFuture {
    Box::pin(async move {
        if let Err(reply) = authorize(ctx.config.http_token.as_deref(), &req) {
            return *reply;
        }
        let letter = match load(&ctx, &params).await {
            Ok(letter) => letter,
            Err(reply) => return reply,
        };
        let entry = match letter.to_entry() {
            Ok(entry) => entry,
            Err(e) => return error_reply(StatusCode::UNPROCESSABLE_ENTITY, &e),
        };
        let redis = ctx.config.redis.clone();
        let store = ctx.dead_letters.clone();
        let id = letter.id.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut sink = Sink::connect(&redis)?;
            // The checking path: if an earlier retry got through, nothing is added twice.
            let outcome = sink.write(std::slice::from_ref(&entry), true)?.remove(0);
            Ok::<_, crate::sink::redis::WriteError>(outcome)
        })
        .await;
        match result {
            Ok(Ok(EntryOutcome::Written(entry_id))) => {
                let _ = store.remove(&id);
                json_reply(StatusCode::OK, &json!({ "status": "written", "id": id, "entry_id": entry_id }))
            }
            Ok(Ok(EntryOutcome::Duplicate)) => {
                let _ = store.remove(&id);
                json_reply(StatusCode::OK, &json!({ "status": "already_written", "id": id }))
            }
            Ok(Ok(EntryOutcome::Rejected(e))) => {
                error_reply(StatusCode::CONFLICT, &format!("Redis refused it again: {e}"))
            }
            Ok(Ok(EntryOutcome::Undecodable(e))) => {
                error_reply(StatusCode::CONFLICT, &format!("its event cannot be decoded: {e}"))
            }
            Ok(Ok(EntryOutcome::Pending)) => {
                error_reply(StatusCode::SERVICE_UNAVAILABLE, "Redis did not process it; try again")
            }
            Ok(Err(e)) => error_reply(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            Err(e) => error_reply(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    })
}
