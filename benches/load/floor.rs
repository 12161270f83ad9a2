//! The floor (`--floor sync|lazy`): what forwarding the switch's events costs on this machine
//! when nothing else is done, run beside the agent on the same traffic so that its CPU and
//! latency are a same-run yardstick for the agent's.
//!
//! The floor is this harness's own binary started again as a child process
//! (`load --floor-forwarder MODE`), with the agent's variables (`ESL_HOST`, `ESL_PORT`,
//! `REDIS_URL`, `STREAM_EVENTS`). On one thread and two blocking sockets it authenticates,
//! subscribes `event json ALL`, and for every read of the switch's socket writes each whole
//! `text/event-json` frame's body as one `XADD <events stream> * event <body>`, all of the read
//! in one pipelined write. It does nothing else the agent does: no validation of the JSON, no
//! index fields, no idempotency keys or transactions, no lanes, no spool, no retries, no
//! metrics. A failure ends it (the run then shows the events as missing).
//!
//! - `sync` waits for Redis's answers to a write before it reads the switch again, as a
//!   forwarder must that keeps each event until it is acknowledged (the agent's promise).
//!   While it waits, the next events gather in the socket, so it writes several at once as
//!   soon as traffic outruns one round trip.
//! - `lazy` never waits for Redis: it reads the answers that have come, without blocking, just
//!   before each read of the switch. One sleep per read of the switch: the least any forwarder
//!   on this machine can cost, and the latency it adds is one loopback write.
//!
//! Hand-written on purpose, std and `libc` only: the floor is only a floor if nothing in it
//! costs more than the work itself.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

/// How the floor treats Redis's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloorMode {
    Sync,
    Lazy,
}

impl FloorMode {
    pub fn parse(text: &str) -> Result<FloorMode, String> {
        match text {
            "sync" => Ok(FloorMode::Sync),
            "lazy" => Ok(FloorMode::Lazy),
            other => Err(format!("--floor wants sync or lazy, not {other:?}")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FloorMode::Sync => "sync",
            FloorMode::Lazy => "lazy",
        }
    }

    /// The row's name in the harness's table.
    pub fn label(self) -> &'static str {
        match self {
            FloorMode::Sync => "floor (sync)",
            FloorMode::Lazy => "floor (lazy)",
        }
    }
}

/// The first argument that makes the harness's binary the floor instead of the harness.
pub const FORWARDER_ARG: &str = "--floor-forwarder";

/// Runs the floor until the switch closes its socket; exits the process with a message on any
/// failure.
pub fn forward(mode: &str) -> ! {
    let code = match FloorMode::parse(mode).and_then(run) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("floor: {e}");
            1
        }
    };
    std::process::exit(code)
}

/// The variable `name` of the agent's environment the floor was started with.
pub fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

/// `host:port` of `REDIS_URL` (the harness's servers: `redis://host:port`, no user or TLS).
pub fn redis_address() -> Result<String, String> {
    let url = var("REDIS_URL")?;
    Ok(url.strip_prefix("redis://").unwrap_or(&url).trim_end_matches('/').to_owned())
}

fn run(mode: FloorMode) -> Result<(), String> {
    let esl_addr = format!("{}:{}", var("ESL_HOST")?, var("ESL_PORT")?);
    let redis_addr = redis_address()?;
    let key = var("STREAM_EVENTS")?;
    let mut redis = TcpStream::connect(&redis_addr).map_err(|e| format!("connect {redis_addr}: {e}"))?;
    let mut esl = TcpStream::connect(&esl_addr).map_err(|e| format!("connect {esl_addr}: {e}"))?;
    for s in [&redis, &esl] {
        s.set_nodelay(true).map_err(|e| e.to_string())?;
    }
    let mut inbox = Inbox::default();
    inbox.reply(&mut esl)?; // auth/request
    esl.write_all(b"auth ClueCon\n\n").map_err(|e| e.to_string())?;
    inbox.reply(&mut esl)?;
    esl.write_all(b"event json ALL\n\n").map_err(|e| e.to_string())?;
    inbox.reply(&mut esl)?;

    let prefix = format!("*5\r\n$4\r\nXADD\r\n${}\r\n{key}\r\n$1\r\n*\r\n$5\r\nevent\r\n", key.len());
    let mut request = Vec::with_capacity(1 << 20);
    let mut answers = Answers::default();
    loop {
        if mode == FloorMode::Lazy {
            answers.take_ready(&redis)?;
        }
        if !inbox.fill(&mut esl)? {
            return Ok(()); // the switch closed the socket
        }
        let mut events = 0u64;
        while let Some((head, body)) = inbox.next_frame() {
            if memchr::memmem::find(head, b"text/event-json").is_some() {
                request.extend_from_slice(prefix.as_bytes());
                request.extend_from_slice(format!("${}\r\n", body.len()).as_bytes());
                request.extend_from_slice(body);
                request.extend_from_slice(b"\r\n");
                events += 1;
            }
        }
        inbox.consume();
        if events == 0 {
            continue;
        }
        redis.write_all(&request).map_err(|e| format!("write to Redis: {e}"))?;
        request.clear();
        answers.owed += events;
        if mode == FloorMode::Sync {
            while answers.owed > 0 {
                answers.take_blocking(&mut redis)?;
            }
        }
    }
}

/// What the switch sent, and how far it is framed: `buf[used..filled]` is not handed out yet.
struct Inbox {
    buf: Vec<u8>,
    used: usize,
    filled: usize,
}

impl Default for Inbox {
    fn default() -> Inbox {
        Inbox { buf: vec![0; 1 << 20], used: 0, filled: 0 }
    }
}

impl Inbox {
    /// One read of the socket; false when it is closed.
    fn fill(&mut self, esl: &mut TcpStream) -> Result<bool, String> {
        if self.filled == self.buf.len() {
            // A frame longer than the buffer (never in these runs): make room for it.
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let read = esl.read(&mut self.buf[self.filled..]).map_err(|e| format!("read the switch: {e}"))?;
        self.filled += read;
        Ok(read > 0)
    }

    /// The next whole frame's headers and body, if one is buffered.
    fn next_frame(&mut self) -> Option<(&[u8], &[u8])> {
        let from = self.used;
        let rest = &self.buf[from..self.filled];
        let end = memchr::memmem::find(rest, b"\n\n")?;
        let length = rest[..end]
            .split(|&b| b == b'\n')
            .find_map(|line| line.strip_prefix(b"Content-Length: "))
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let body = from + end + 2;
        if self.filled < body + length {
            return None;
        }
        self.used = body + length;
        Some((&self.buf[from..from + end], &self.buf[body..body + length]))
    }

    /// Forgets the frames handed out (moving what is left of a frame to the front).
    fn consume(&mut self) {
        self.buf.copy_within(self.used..self.filled, 0);
        self.filled -= self.used;
        self.used = 0;
    }

    /// Reads until one whole frame is buffered and forgets it (a command's reply).
    fn reply(&mut self, esl: &mut TcpStream) -> Result<(), String> {
        loop {
            if self.next_frame().is_some() {
                self.consume();
                return Ok(());
            }
            if !self.fill(esl)? {
                return Err("the switch closed the socket during the handshake".into());
            }
        }
    }
}

/// Redis's answers: how many are owed, and the bytes of any not yet whole.
#[derive(Default)]
struct Answers {
    owed: u64,
    buf: Vec<u8>,
}

impl Answers {
    /// Waits for at least one read of answers.
    fn take_blocking(&mut self, redis: &mut TcpStream) -> Result<(), String> {
        let mut chunk = [0u8; 64 * 1024];
        let read = redis.read(&mut chunk).map_err(|e| format!("read Redis: {e}"))?;
        if read == 0 {
            return Err("Redis closed the connection".into());
        }
        self.buf.extend_from_slice(&chunk[..read]);
        self.settle()
    }

    /// Takes what answers have come, without waiting (`MSG_DONTWAIT`: no mode switch of the
    /// socket, which would cost two more system calls per read).
    fn take_ready(&mut self, redis: &TcpStream) -> Result<(), String> {
        let mut chunk = [0u8; 64 * 1024];
        while self.owed > 0 {
            // SAFETY: the buffer is valid for `chunk.len()` bytes and the descriptor is open.
            let read =
                unsafe { libc::recv(redis.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len(), libc::MSG_DONTWAIT) };
            match read {
                0 => return Err("Redis closed the connection".into()),
                n if n > 0 => {
                    self.buf.extend_from_slice(&chunk[..n as usize]);
                    self.settle()?;
                }
                _ => {
                    let e = std::io::Error::last_os_error();
                    return match e.kind() {
                        std::io::ErrorKind::WouldBlock => Ok(()),
                        std::io::ErrorKind::Interrupted => continue,
                        _ => Err(format!("read Redis: {e}")),
                    };
                }
            }
        }
        Ok(())
    }

    /// Counts the whole answers buffered (an `XADD` answers with a bulk string; an error ends
    /// the floor).
    fn settle(&mut self) -> Result<(), String> {
        let mut at = 0;
        while let Some(end) = memchr::memmem::find(&self.buf[at..], b"\r\n") {
            let line = &self.buf[at..at + end];
            let next = match line.first() {
                Some(b'$') => {
                    let length: usize = std::str::from_utf8(&line[1..])
                        .ok()
                        .and_then(|n| n.parse().ok())
                        .ok_or_else(|| format!("unexpected answer {:?}", String::from_utf8_lossy(line)))?;
                    at + end + 2 + length + 2
                }
                _ => return Err(format!("Redis answered {:?}", String::from_utf8_lossy(line))),
            };
            if next > self.buf.len() {
                break;
            }
            at = next;
            self.owed = self.owed.saturating_sub(1);
        }
        self.buf.drain(..at);
        Ok(())
    }
}
