//! The socket side of the simulator: accepting connections and speaking the inbound ESL
//! command protocol on each (auth, `event`, `api`, `bgapi`, `exit`, ...), exactly as
//! `esl-captures/CAPTURES.md` shows FreeSWITCH replying. Events themselves are written by the
//! driver thread through the same [`Conn`] so frames never interleave.
//!
//! A misbehaving client never takes the simulator down: bad input is logged and that one
//! connection is closed.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::calls::uptime_text;
use super::wire::{Format, Rng};
use super::{Injected, Shared};
use eslstream::esl::encode;

/// Largest command (line, headers and body) a client may send.
const MAX_COMMAND: usize = 1 << 20;
/// Bytes buffered per connection before the driver writes them out.
const FLUSH_AT: usize = 256 << 10;
/// A write that waits (a command reply, an unpaced run, an injected cut) gives up on a client
/// that reads nothing for this long, and disconnects it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a listener subscribed to, with FreeSWITCH's matching rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    pub format: Format,
    all: bool,
    names: Vec<String>,
    custom: bool,
    subclasses: Vec<String>,
}

impl Subscription {
    /// Adds the words of an `event` command (`plain ALL`, `json CHANNEL_ANSWER CUSTOM a::b`).
    /// Returns the format word to echo, or `None` if the format is unsupported.
    pub fn add(&mut self, words: &[&str]) -> Result<&'static str, String> {
        let mut custom = false;
        for word in words {
            if custom {
                self.subclasses.push((*word).to_owned());
                continue;
            }
            if let Some(format) = Format::from_word(word) {
                self.format = format;
                continue;
            }
            match word.to_ascii_uppercase().as_str() {
                "XML" => return Err("-ERR xml format is not supported by the simulator".into()),
                "ALL" => self.all = true,
                "CUSTOM" => {
                    self.custom = true;
                    custom = true;
                }
                name => self.names.push(name.to_owned()),
            }
        }
        Ok(self.format.word())
    }

    /// FreeSWITCH's rule: `ALL` gets everything; a CUSTOM event with a subclass only goes to a
    /// listener that named the subclass (after `CUSTOM`); other events go by name.
    pub fn matches(&self, name: &str, subclass: Option<&str>) -> bool {
        if self.all {
            return true;
        }
        if name == "CUSTOM" {
            return self.custom && subclass.is_none_or(|s| self.subclasses.iter().any(|x| x == s));
        }
        self.names.iter().any(|n| n == name)
    }
}

/// One client connection; the driver and the command thread both write through it.
pub struct Conn {
    pub id: u64,
    pub peer: SocketAddr,
    out: Mutex<ConnOut>,
}

/// Events a listener may have queued, as FreeSWITCH's `mod_event_socket` (`MAX_QUEUE_LEN`).
const MAX_QUEUE_LEN: usize = 100_000;
/// Bytes a listener may have queued (the simulator's own bound: 100,000 large events would
/// be a gigabyte).
const MAX_QUEUE_BYTES: usize = 256 << 20;
/// Events a listener may lose to a full queue before FreeSWITCH disconnects it (`MAX_MISSED`).
const MAX_MISSED: u32 = 500;

/// The write side of a connection, behind the connection's lock: the listener's queue of
/// frames not yet written. As in FreeSWITCH, each listener has its own queue, so one that
/// stops reading never holds the others up: the driver writes what the socket takes without
/// waiting ([`ConnOut::flush`]), and a full queue loses events (counted; past
/// [`MAX_MISSED`] the listener is disconnected). Command replies are written at once, in
/// order after what is queued.
pub struct ConnOut {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already written.
    head: usize,
    /// Bytes ever queued, and where each queued event frame ends in that count.
    queued: u64,
    ends: VecDeque<u64>,
    dead: bool,
    /// Events given to this connection (for fault injection).
    pub events: u64,
    /// Events lost to a full queue since the last one queued.
    lost: u32,
}

/// Why an event did not go on a listener's queue.
#[derive(Debug)]
pub enum PushError {
    /// The connection is closed.
    Closed,
    /// Its queue is full: this listener loses the event (`Lost N events!` in FreeSWITCH).
    Full,
}

impl Conn {
    pub fn lock(&self) -> MutexGuard<'_, ConnOut> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `bytes` after anything queued, waiting until all of it is written.
    pub fn send_now(&self, bytes: &[u8]) -> io::Result<()> {
        let mut out = self.lock();
        out.enqueue(bytes);
        out.write_all_queued()
    }

    /// Closes both directions; the command thread then sees EOF and cleans up.
    pub fn kill(&self) {
        self.lock().close();
    }
}

impl ConnOut {
    fn new(stream: TcpStream) -> ConnOut {
        ConnOut { stream, buf: Vec::new(), head: 0, queued: 0, ends: VecDeque::new(), dead: false, events: 0, lost: 0 }
    }

    pub fn is_dead(&self) -> bool {
        self.dead
    }

    fn close(&mut self) {
        self.dead = true;
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Puts `bytes` at the end of the queue (kept in step with the count of bytes ever queued).
    fn enqueue(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.queued += bytes.len() as u64;
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.head
    }

    /// Queues a whole event frame, writing out what the socket takes once the queue is large.
    pub fn push(&mut self, frame: &[u8]) -> Result<(), PushError> {
        if self.dead {
            return Err(PushError::Closed);
        }
        let full = |out: &mut ConnOut| {
            let written = out.queued - out.pending() as u64;
            while out.ends.front().is_some_and(|end| *end <= written) {
                out.ends.pop_front();
            }
            out.ends.len() >= MAX_QUEUE_LEN || out.pending() + frame.len() > MAX_QUEUE_BYTES
        };
        // Full: first see whether the socket takes some of it now.
        if full(self) {
            if self.flush().is_err() {
                return Err(PushError::Closed);
            }
            if full(self) {
                self.lost += 1;
                if self.lost > MAX_MISSED {
                    self.close();
                    return Err(PushError::Closed);
                }
                return Err(PushError::Full);
            }
        }
        self.lost = 0;
        self.enqueue(frame);
        self.ends.push_back(self.queued);
        self.events += 1;
        if self.pending() >= FLUSH_AT {
            self.flush().map_err(|_| PushError::Closed)?;
        }
        Ok(())
    }

    /// Writes what the socket takes now, without waiting; the rest stays queued.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.dead {
            self.buf.clear();
            self.head = 0;
            return Err(io::ErrorKind::NotConnected.into());
        }
        while self.pending() > 0 {
            let rest = &self.buf[self.head..];
            // SAFETY: `rest` is valid for its length; MSG_DONTWAIT makes this one call never
            // wait, without making the socket non-blocking for the command thread's reads.
            let n = unsafe {
                libc::send(
                    self.stream.as_raw_fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                self.head += n as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => break,
                io::ErrorKind::Interrupted => continue,
                _ => {
                    self.close();
                    return Err(e);
                }
            }
        }
        if self.pending() == 0 {
            self.buf.clear();
            self.head = 0;
        } else if self.head >= FLUSH_AT && self.head * 2 >= self.buf.len() {
            self.buf.drain(..self.head);
            self.head = 0;
        }
        Ok(())
    }

    /// Writes everything queued, waiting (up to the socket's write timeout) as needed.
    pub fn write_all_queued(&mut self) -> io::Result<()> {
        if self.dead {
            return Err(io::ErrorKind::NotConnected.into());
        }
        let result = self.stream.write_all(&self.buf[self.head..]);
        self.buf.clear();
        self.head = 0;
        if result.is_err() {
            self.close();
        }
        result
    }

    /// Fault injection: writes what is queued plus `partial` (part of a frame), then closes.
    pub fn cut(&mut self, partial: &[u8]) {
        self.enqueue(partial);
        let _ = self.write_all_queued();
        self.close();
    }
}

/// Accepts connections until shutdown, one command thread each.
pub fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.shutdown.load(Ordering::SeqCst) {
            break;
        }
        match stream {
            Ok(stream) => spawn_connection(stream, &shared),
            Err(e) => {
                shared.log(format_args!("accept failed: {e}"));
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn spawn_connection(stream: TcpStream, shared: &Arc<Shared>) {
    let Ok(peer) = stream.peer_addr() else { return };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let id = shared.counters.total_connections.fetch_add(1, Ordering::SeqCst) + 1;
    let conn = Arc::new(Conn { id, peer, out: Mutex::new(ConnOut::new(write_half)) });
    shared.add_conn(conn.clone());
    let shared = shared.clone();
    let spawned = std::thread::Builder::new().name(format!("sim-conn-{id}")).spawn({
        let conn = conn.clone();
        let shared = shared.clone();
        move || {
            if let Err(e) = serve(&conn, stream, &shared) {
                shared.log(format_args!("connection {} from {}: {e}; closing it", conn.id, conn.peer));
            }
            conn.kill();
            shared.remove_conn(conn.id);
        }
    });
    if spawned.is_err() {
        conn.kill();
        shared.remove_conn(id);
    }
}

/// A command as the client sent it: the first line, its headers, and a body if announced.
#[derive(Debug, Default)]
struct Command {
    line: String,
    headers: Vec<(String, String)>,
}

/// Reads one command (lines up to a blank line; `\r\n` tolerated). `None` at EOF.
fn read_command(reader: &mut impl BufRead) -> io::Result<Option<Command>> {
    let mut cmd = Command::default();
    let mut total = 0usize;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.by_ref().take((MAX_COMMAND + 1) as u64).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        total += n;
        if total > MAX_COMMAND {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "command too long"));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if text.is_empty() {
            if cmd.line.is_empty() {
                continue; // stray blank lines between commands
            }
            break;
        }
        if cmd.line.is_empty() {
            cmd.line = text.to_owned();
        } else if let Some((name, value)) = text.split_once(':') {
            cmd.headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    skip_body(reader, &cmd)?;
    Ok(Some(cmd))
}

/// Discards a body announced by `Content-Length` (e.g. `sendevent`), so it is not read as commands.
fn skip_body(reader: &mut impl BufRead, cmd: &Command) -> io::Result<()> {
    let length =
        cmd.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("Content-Length")).map(|(_, v)| v.parse::<usize>());
    match length {
        None => Ok(()),
        Some(Ok(n)) if n <= MAX_COMMAND => {
            io::copy(&mut reader.by_ref().take(n as u64), &mut io::sink())?;
            Ok(())
        }
        Some(_) => Err(io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length in command")),
    }
}

/// Runs one connection's command loop.
fn serve(conn: &Conn, stream: TcpStream, shared: &Shared) -> io::Result<()> {
    let mut out = Vec::new();
    encode::auth_request(&mut out);
    conn.send_now(&out)?;
    let mut reader = BufReader::new(stream);
    let mut authed = false;
    let mut rng = Rng::from_entropy();
    while let Some(cmd) = read_command(&mut reader)? {
        out.clear();
        let keep_open = if authed {
            handle(&cmd.line, conn, shared, &mut rng, &mut out)
        } else {
            handle_unauthed(&cmd.line, &shared.opts.password, &mut authed, &mut out)
        };
        conn.send_now(&out)?;
        if !keep_open {
            break;
        }
    }
    Ok(())
}

/// Before `auth`: only `auth` and `exit`. A wrong password is refused and the socket closed.
fn handle_unauthed(line: &str, password: &str, authed: &mut bool, out: &mut Vec<u8>) -> bool {
    let (word, rest) = split_word(line);
    match word.to_ascii_lowercase().as_str() {
        "auth" if rest == password => {
            *authed = true;
            encode::command_reply("+OK accepted", &[], out);
            true
        }
        "auth" => {
            encode::command_reply("-ERR invalid", &[], out);
            encode::disconnect_notice(out);
            false
        }
        "exit" => bye(out),
        _ => {
            encode::command_reply("-ERR command not found", &[], out);
            true
        }
    }
}

fn bye(out: &mut Vec<u8>) -> bool {
    encode::command_reply("+OK bye", &[], out);
    encode::disconnect_notice(out);
    false
}

fn split_word(line: &str) -> (&str, &str) {
    let line = line.trim();
    match line.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (line, ""),
    }
}

/// After `auth`: the commands the agent and the tests use. Returns false to close.
fn handle(line: &str, conn: &Conn, shared: &Shared, rng: &mut Rng, out: &mut Vec<u8>) -> bool {
    let (word, rest) = split_word(line);
    match word.to_ascii_lowercase().as_str() {
        "exit" => return bye(out),
        "auth" => encode::command_reply("+OK accepted", &[], out),
        // FreeSWITCH compares the first five letters: `events` subscribes too.
        w if w.starts_with("event") => {
            // Hold the connection while subscribing so the reply goes out before any event.
            let mut guard = conn.lock();
            let words: Vec<&str> = rest.split_whitespace().collect();
            match shared.subscribe(conn.id, &words) {
                Ok(format) => encode::command_reply(&format!("+OK event listener enabled {format}"), &[], out),
                Err(reply) => encode::command_reply(&reply, &[], out),
            }
            guard.enqueue(out);
            out.clear();
            if guard.write_all_queued().is_err() {
                return false;
            }
        }
        "noevents" => {
            shared.unsubscribe(conn.id);
            encode::command_reply("+OK no longer listening for events", &[], out);
        }
        "nolog" => encode::command_reply("+OK no longer logging", &[], out),
        "log" => {
            let level = if rest.is_empty() { "7" } else { rest };
            encode::command_reply(&format!("+OK log level {level} [{level}]"), &[], out);
        }
        "filter" => {
            let (header, value) = split_word(rest);
            encode::command_reply(&format!("+OK filter added. [{header}]=[{value}]"), &[], out);
        }
        "api" => encode::api_response(api_body(rest, shared).as_bytes(), out),
        "bgapi" => {
            let job_uuid = rng.uuid_v4();
            encode::command_reply(&format!("+OK Job-UUID: {job_uuid}"), &[("Job-UUID", &job_uuid)], out);
            let (command, arg) = split_word(rest);
            let body = api_body(rest, shared);
            // The reply is queued before the job is, so it always reaches the client first.
            conn.send_now(out).ok();
            out.clear();
            shared.inject(Injected::BackgroundJob { job_uuid, command: command.to_owned(), arg: arg.to_owned(), body });
        }
        _ => encode::command_reply("-ERR command not found", &[], out),
    }
    true
}

/// The body of an `api` command's response.
fn api_body(command_line: &str, shared: &Shared) -> String {
    let (command, _) = split_word(command_line);
    match command {
        "status" => status_text(shared),
        "version" => "FreeSWITCH Version 1.11.1-release~64bit ( 64bit)\n".into(),
        "show" if command_line.ends_with("calls count") => {
            format!("\n{} total.\n", shared.counters.active_calls.load(Ordering::Relaxed))
        }
        "" => "-ERR  Command not found!\n".into(),
        other => format!("-ERR {other} Command not found!\n"),
    }
}

/// `api status`, in the shape of FreeSWITCH 1.11.1's.
fn status_text(shared: &Shared) -> String {
    let uptime = shared.started.elapsed().as_micros() as i64;
    let calls = shared.counters.calls.load(Ordering::Relaxed);
    let active = shared.counters.active_calls.load(Ordering::Relaxed) * 2;
    format!(
        "UP {}\nFreeSWITCH (Version 1.11.1-release  64bit) is ready\n{} session(s) since startup\n\
         {active} session(s) - peak {active}, last 5min {active} \n0 session(s) per Sec out of max 2000, peak 0, last 5min 0 \n\
         3000 session(s) max\nmin idle cpu 0.00/98.73\nCurrent Stack Size/Max 240K/8192K\n",
        uptime_text(uptime),
        calls * 2
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_follows_freeswitch_custom_rules() {
        let mut s = Subscription::default();
        assert_eq!(s.add(&["plain", "CHANNEL_ANSWER", "CUSTOM", "sofia::register"]), Ok("plain"));
        assert!(s.matches("CHANNEL_ANSWER", None));
        assert!(!s.matches("CHANNEL_HANGUP", None));
        assert!(s.matches("CUSTOM", Some("sofia::register")));
        assert!(!s.matches("CUSTOM", Some("conference::maintenance")));
        assert!(s.matches("CUSTOM", None), "a CUSTOM event without subclass goes to CUSTOM listeners");

        let mut bare = Subscription::default();
        bare.add(&["json", "CUSTOM"]).unwrap();
        assert_eq!(bare.format, Format::Json);
        assert!(!bare.matches("CUSTOM", Some("sofia::register")), "subclassed events need the subclass or ALL");

        let mut all = Subscription::default();
        all.add(&["plain", "all"]).unwrap();
        assert!(all.matches("CUSTOM", Some("conference::maintenance")));
        assert!(all.matches("HEARTBEAT", None));
        assert!(Subscription::default().add(&["xml", "ALL"]).is_err());
    }

    #[test]
    fn commands_end_at_a_blank_line_and_tolerate_crlf() {
        let input = b"\r\nauth ClueCon\r\n\r\nsendevent CUSTOM\nContent-Length: 5\n\nhello\nevent plain ALL\n\n";
        let mut reader = io::Cursor::new(&input[..]);
        assert_eq!(read_command(&mut reader).unwrap().unwrap().line, "auth ClueCon");
        assert_eq!(read_command(&mut reader).unwrap().unwrap().line, "sendevent CUSTOM");
        assert_eq!(read_command(&mut reader).unwrap().unwrap().line, "event plain ALL");
        assert!(read_command(&mut reader).unwrap().is_none());
    }

    #[test]
    fn oversized_commands_are_refused() {
        let input = vec![b'a'; MAX_COMMAND + 10];
        assert!(read_command(&mut io::Cursor::new(input)).is_err());
    }
}
