//! Who may use the private endpoints (the dead letters: call data, and a way to write it again).
//!
//! With `HTTP_TOKEN` set, a request needs `Authorization: Bearer <HTTP_TOKEN>`, from anywhere.
//! With it unset, only clients on loopback (127.0.0.0/8, `::1`, and IPv4 loopback mapped into
//! IPv6) are let in; everyone else gets a 403 saying to set `HTTP_TOKEN`. The client's address
//! comes from the [`Peer`] extension the server puts on every request; a request without one is
//! treated as remote. `/health` and `/metrics` do not ask.

use std::net::{IpAddr, SocketAddr};

use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use hyper::{Request, StatusCode};

use crate::http::handler::{error_reply, Body, Reply};

/// The address of the client that sent a request (a request extension set by the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer(pub SocketAddr);

/// True for loopback clients, the only ones the private endpoints answer while `HTTP_TOKEN` is
/// unset.
pub(crate) fn is_private_peer(addr: IpAddr) -> bool {
    addr.to_canonical().is_loopback()
}

/// Checks that the request may use a private endpoint, given `HTTP_TOKEN`; the `Err` is the
/// 401 or 403 to answer with.
pub(crate) fn authorize(token: Option<&str>, req: &Request<Body>) -> Result<(), Box<Reply>> {
    match token {
        Some(token) => bearer(token, req.headers()),
        None => loopback_only(req.extensions().get::<Peer>()),
    }
}

/// `Authorization: Bearer <token>`, compared in constant time.
fn bearer(token: &str, headers: &HeaderMap) -> Result<(), Box<Reply>> {
    let given = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes())) {
        return Ok(());
    }
    let mut reply = error_reply(StatusCode::UNAUTHORIZED, "missing or wrong bearer token (HTTP_TOKEN)");
    reply.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
    Err(Box::new(reply))
}

fn loopback_only(peer: Option<&Peer>) -> Result<(), Box<Reply>> {
    match peer {
        Some(Peer(addr)) if is_private_peer(addr.ip()) => Ok(()),
        Some(Peer(addr)) => Err(Box::new(error_reply(
            StatusCode::FORBIDDEN,
            &format!(
                "HTTP_TOKEN is unset, so this endpoint answers loopback clients only, not {}; set HTTP_TOKEN to use it from elsewhere",
                addr.ip()
            ),
        ))),
        None => Err(Box::new(error_reply(
            StatusCode::FORBIDDEN,
            "HTTP_TOKEN is unset, so this endpoint answers loopback clients only, and the client's address is unknown; set HTTP_TOKEN to use it from elsewhere",
        ))),
    }
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_private() {
        for private in ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "::ffff:127.0.0.1"] {
            assert!(is_private_peer(private.parse().unwrap()), "{private}");
        }
        for remote in [
            "192.0.2.2",
            "10.0.0.5",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "0.0.0.0",
            "8.8.8.8",
            "::",
            "fd00::2",
            "fe80::1",
            "::ffff:10.0.0.5",
            "2001:db8::1",
        ] {
            assert!(!is_private_peer(remote.parse().unwrap()), "{remote}");
        }
    }
}
