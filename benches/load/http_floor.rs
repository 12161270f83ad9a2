//! The HTTP floor of the `http-hey` mode: what answering `POST /events` only once Redis holds
//! the event costs on this machine when nothing else is done, run on the same machine and
//! Redis as the agent, alternating with it, so its latency and CPU are a same-run yardstick
//! for the agent's single events.
//!
//! The floor is this harness's own binary started again as a child process
//! (`load --http-floor-forwarder`), with `HEALTH_PORT`, `REDIS_URL` and `STREAM_EVENTS`. It
//! serves HTTP/1.1 keep-alive on a thread per connection, each thread with its own blocking
//! Redis connection: for a `POST` it writes the body as one `XADD <stream> * event <body>`,
//! waits for the entry's id, and answers `202` with a body shaped like the agent's; anything
//! else gets `200`. So every request is one round trip to Redis of its own, and a burst of
//! requests is written in parallel. It does nothing else the agent does: no token check, no
//! JSON parsing or validation, no index fields, no idempotency keys or transactions, no
//! lanes (so no per-call order between connections), no spool, no retries, no metrics. A
//! failure ends its connection (the run then shows the answer as missing or not a `202`).
//!
//! Hand-written on purpose, std and `memchr` only: the floor is only a floor if nothing in it
//! costs more than the work itself.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use super::floor::{redis_address, var};

/// The first argument that makes the harness's binary the HTTP floor instead of the harness.
pub const HTTP_FORWARDER_ARG: &str = "--http-floor-forwarder";

/// Serves until killed; exits the process with a message when it cannot start.
pub fn serve() -> ! {
    if let Err(e) = run() {
        eprintln!("http floor: {e}");
        std::process::exit(1);
    }
    std::process::exit(0)
}

fn run() -> Result<(), String> {
    let port: u16 = var("HEALTH_PORT")?.parse().map_err(|e| format!("HEALTH_PORT: {e}"))?;
    let redis_addr = redis_address()?;
    let key = var("STREAM_EVENTS")?;
    let listener = TcpListener::bind(("127.0.0.1", port)).map_err(|e| format!("bind 127.0.0.1:{port}: {e}"))?;
    for client in listener.incoming() {
        let client = client.map_err(|e| format!("accept: {e}"))?;
        let (redis_addr, key) = (redis_addr.clone(), key.clone());
        std::thread::spawn(move || {
            if let Err(e) = connection(client, &redis_addr, &key) {
                eprintln!("http floor: connection ended: {e}");
            }
        });
    }
    Ok(())
}

/// One client connection, until it closes.
fn connection(mut client: TcpStream, redis_addr: &str, key: &str) -> Result<(), String> {
    let mut redis = TcpStream::connect(redis_addr).map_err(|e| format!("connect {redis_addr}: {e}"))?;
    for s in [&client, &redis] {
        s.set_nodelay(true).map_err(|e| e.to_string())?;
    }
    let prefix = format!("*5\r\n$4\r\nXADD\r\n${}\r\n{key}\r\n$1\r\n*\r\n$5\r\nevent\r\n", key.len());
    let (mut inbox, mut request, mut reply) = (Vec::with_capacity(1 << 16), Vec::new(), Vec::new());
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let head_end = loop {
            if let Some(at) = memchr::memmem::find(&inbox, b"\r\n\r\n") {
                break at + 4;
            }
            if !fill(&mut client, &mut inbox, &mut chunk)? {
                return Ok(()); // the client closed the connection
            }
        };
        let head = std::str::from_utf8(&inbox[..head_end]).map_err(|_| "a request head that is not UTF-8")?;
        let post = head.starts_with("POST ");
        let length = content_length(head)?;
        while inbox.len() < head_end + length {
            if !fill(&mut client, &mut inbox, &mut chunk)? {
                return Err("the client closed the connection within a body".into());
            }
        }
        let answer = if post {
            let body = &inbox[head_end..head_end + length];
            request.clear();
            request.extend_from_slice(prefix.as_bytes());
            request.extend_from_slice(format!("${}\r\n", body.len()).as_bytes());
            request.extend_from_slice(body);
            request.extend_from_slice(b"\r\n");
            redis.write_all(&request).map_err(|e| format!("write to Redis: {e}"))?;
            let id = entry_id(&mut redis, &mut reply, &mut chunk)?;
            let json = format!(r#"{{"accepted":1,"duplicates":0,"results":[{{"id":"{id}","status":"written"}}]}}"#);
            format!(
                "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
                json.len()
            )
        } else {
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok".to_owned()
        };
        client.write_all(answer.as_bytes()).map_err(|e| format!("write to the client: {e}"))?;
        inbox.drain(..head_end + length);
    }
}

/// One read of `stream` appended to `into`; false when it is closed.
fn fill(stream: &mut TcpStream, into: &mut Vec<u8>, chunk: &mut [u8]) -> Result<bool, String> {
    let n = stream.read(chunk).map_err(|e| format!("read: {e}"))?;
    into.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

/// The request's `Content-Length` (0 without one).
fn content_length(head: &str) -> Result<usize, String> {
    for line in head.split("\r\n") {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                return value.trim().parse().map_err(|e| format!("Content-Length {value:?}: {e}"));
            }
        }
    }
    Ok(0)
}

/// Reads `XADD`'s answer, a bulk string (the entry's id); an error answer ends the connection.
fn entry_id(redis: &mut TcpStream, reply: &mut Vec<u8>, chunk: &mut [u8]) -> Result<String, String> {
    reply.clear();
    loop {
        if let Some(eol) = memchr::memmem::find(reply, b"\r\n") {
            if reply[0] != b'$' {
                return Err(format!("Redis answered {:?}", String::from_utf8_lossy(&reply[..eol])));
            }
            let len: usize = std::str::from_utf8(&reply[1..eol])
                .ok()
                .and_then(|n| n.parse().ok())
                .ok_or("a bulk string length that is not a number")?;
            if reply.len() >= eol + 2 + len + 2 {
                return Ok(String::from_utf8_lossy(&reply[eol + 2..eol + 2 + len]).into_owned());
            }
        }
        if !fill(redis, reply, chunk)? {
            return Err("Redis closed the connection".into());
        }
    }
}
