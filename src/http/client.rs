//! The tiny HTTP/1.1 client behind `eslstream health`: where the local agent's `/health` is,
//! and a bounded blocking GET.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::http::handler::MAX_BODY_BYTES;

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
}
