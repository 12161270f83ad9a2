//! The inbound event-socket client: connect, authenticate, subscribe, and read events at line
//! rate into the pipeline, forever, reconnecting with capped exponential backoff.
//!
//! The reader runs on its own thread and never waits for Redis: each event is framed, its
//! index fields scanned, and it is offered to the pipeline through the [`Intake`], which
//! never blocks (past the short wait for room that [`Lag`] allows). Events are decoded fully
//! by the writers. A connection that goes silent is probed with
//! `api status`; one that does not answer within `ESL_HEALTH_CHECK_TIMEOUT` is re-made.

use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tracing::{debug, error, info, info_span, warn};

use crate::config::EslConfig;
use crate::envelope::{now_us, BodyFormat, Envelope, EventId, IdempotencyKey, Source, Text};
use crate::esl::event::{scan_meta, EventFormat, EventMeta};
use crate::esl::frame::{Frame, FrameDecoder, FrameError};
use crate::esl::json_scan::scan_json;
use crate::shutdown::Shutdown;
use crate::source::esl::lag::Lag;
use crate::source::esl::routes::Router;
use crate::source::{Gate, Intake, KeyAssigner, Offer};
use crate::state::AgentState;
use crate::telemetry::clock::seconds_between;
use crate::telemetry::logging::RateLimit;
use crate::telemetry::metrics::metrics;

/// How often a blocked read wakes to check for shutdown and silence.
const READ_TICK: Duration = Duration::from_millis(200);
const READ_CHUNK: usize = 256 * 1024;
/// The reader writes an event itself (when its lane is idle) only after waiting at least this
/// long for it: then it has the time, and the switch sends fewer than ~4,000 events a second.
/// Busier, a hand-off to the writer costs less than holding the reader for a Redis round trip.
const WRITE_NOW_AFTER_QUIET: Duration = Duration::from_micros(250);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("FreeSWITCH rejected the ESL password (-ERR invalid); check ESL_PASSWORD")]
    AuthRejected,
    #[error(
        "FreeSWITCH refused the connection (text/rude-rejection): {0}; check the event_socket ACL (apply-inbound-acl)"
    )]
    RudeRejection(String),
    #[error("FreeSWITCH refused the subscription: {0}")]
    SubscribeRejected(String),
    #[error("FreeSWITCH closed the connection (text/disconnect-notice): {0}")]
    DisconnectNotice(String),
    #[error("connection closed by FreeSWITCH")]
    Closed,
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    #[error("unparseable ESL input: {0}")]
    Protocol(#[from] FrameError),
    #[error("no data for {silent:?} and no answer to `api status` within {timeout:?}")]
    Silent { silent: Duration, timeout: Duration },
    #[error("unexpected {0} during the handshake")]
    Handshake(String),
}

/// The ESL client; [`EslClient::run`] owns the reconnect loop.
pub(crate) struct EslClient {
    config: EslConfig,
    /// `READER_MAX_LATENCY`: events older than this when parsed are logged.
    max_latency: Duration,
    /// Which stream each event goes to, and what to subscribe to.
    router: Router,
    intake: Arc<Intake>,
    state: Arc<AgentState>,
    shutdown: Shutdown,
    keys: KeyAssigner,
    /// How far behind the switch the reader is (decides whether it may wait for room).
    lag: Lag,
    /// What stands in front of the intake: a hot-standby pair's gate (`HA_GROUP`).
    gate: Option<Arc<dyn Gate>>,
}

static FILTER_DEBUG: RateLimit = RateLimit::new(Duration::from_secs(60));
static SLOW_WARN: RateLimit = RateLimit::new(Duration::from_secs(10));

impl EslClient {
    pub(crate) fn new(
        config: EslConfig,
        max_latency: Duration,
        router: Router,
        intake: Arc<Intake>,
        state: Arc<AgentState>,
        shutdown: Shutdown,
    ) -> EslClient {
        EslClient {
            config,
            max_latency,
            router,
            intake,
            state,
            shutdown,
            keys: KeyAssigner::new(),
            lag: Lag::default(),
            gate: None,
        }
    }

    /// The same reader as one agent of a hot-standby pair: events go through the pair's gate
    /// (written when active, kept for replay when standby).
    pub(crate) fn with_gate(self, gate: Arc<dyn Gate>) -> EslClient {
        EslClient { gate: Some(gate), ..self }
    }

    /// Connects and reads until shutdown, reconnecting after every failure.
    pub(crate) fn run(self) {
        let _span = info_span!("esl", host = %self.config.host, port = self.config.port).entered();
        let mut delay = self.config.reconnect_delay;
        let mut connections = 0u64;
        while !self.shutdown.is_triggered() {
            let mut subscribed = false;
            let result = self.session(&mut subscribed);
            let was_connected = self.state.esl_connected.swap(false, Ordering::AcqRel);
            metrics().esl.connected.set(0);
            if subscribed {
                connections += 1;
                delay = self.config.reconnect_delay;
            }
            if self.shutdown.is_triggered() {
                break;
            }
            let reason = match &result {
                Ok(()) => "session ended".to_owned(),
                Err(e) => e.to_string(),
            };
            if let Err(SessionError::Protocol(_)) = &result {
                metrics().esl.protocol_errors.inc();
            }
            self.state.record_error(format!("ESL: {reason}"));
            if was_connected {
                warn!(reason = %reason, retry_in = ?delay, "ESL disconnected");
            } else {
                error!(reason = %reason, retry_in = ?delay, "ESL connection failed");
            }
            if !self.shutdown.sleep(delay) {
                break;
            }
            delay = (delay * 2).min(self.config.max_reconnect_delay);
            if connections > 0 {
                metrics().esl.reconnections.inc();
                self.state.esl_reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
        info!("ESL reader stopped");
    }

    fn connect(&self) -> Result<TcpStream, SessionError> {
        let addr = format!("{}:{}", self.config.host, self.config.port);
        let connect_err = |source| SessionError::Connect { addr: addr.clone(), source };
        let addrs: Vec<_> = addr.to_socket_addrs().map_err(connect_err)?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, self.config.connect_timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(READ_TICK))?;
                    stream.set_write_timeout(Some(self.config.health_check_timeout))?;
                    return Ok(stream);
                }
                Err(e) => last = e,
            }
        }
        Err(connect_err(last))
    }

    /// One connection: handshake, subscribe, then read events until it ends.
    fn session(&self, subscribed: &mut bool) -> Result<(), SessionError> {
        let mut stream = self.connect()?;
        self.lag.reset();
        let mut conn = Connection {
            stream: &mut stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            decoder: FrameDecoder::new(),
            quiet: Duration::ZERO,
            frames: 0,
            newest_stamp_us: None,
        };

        let first = conn.read_frame(&self.shutdown, self.config.health_check_timeout)?;
        match first.as_ref().and_then(|f| f.content_type()) {
            Some("auth/request") => {}
            Some("text/rude-rejection") => {
                return Err(SessionError::RudeRejection(body_text(first.as_ref().expect("frame matched"))))
            }
            other => return Err(SessionError::Handshake(format!("{other:?} instead of auth/request"))),
        }
        conn.send(&format!("auth {}\n\n", self.config.password))?;
        let reply = conn.command_reply(&self.shutdown, self.config.health_check_timeout)?;
        if !reply.starts_with("+OK") {
            return Err(SessionError::AuthRejected);
        }
        let word = self.config.event_format.word();
        let command = format!("event {word} {}\n\n", self.router.subscription());
        conn.send(&command)?;
        let reply = conn.command_reply(&self.shutdown, self.config.health_check_timeout)?;
        if !reply.starts_with("+OK") {
            return Err(SessionError::SubscribeRejected(reply));
        }
        *subscribed = true;
        self.state.esl_connected.store(true, Ordering::Release);
        metrics().esl.connected.set(1);
        info!(format = word, subscription = %self.router.subscription(), "ESL connected and subscribed");

        let mut last_data = Instant::now();
        let mut waiting_since = last_data;
        let mut probe_sent: Option<Instant> = None;
        let mut stopping: Option<CatchUp> = None;
        loop {
            if stopping.is_none() && self.shutdown.is_triggered() {
                stopping = Some(CatchUp::begin(&self.shutdown, &conn)?);
            }
            let waited = Instant::now();
            let read = conn.fill()?;
            if read > 0 {
                last_data = Instant::now();
                conn.quiet = last_data - waiting_since;
                probe_sent = None;
                self.state.last_esl_read_us.store(now_us(), Ordering::Relaxed);
                let handled = self.handle_buffered(&mut conn);
                self.intake.flush();
                handled?;
                waiting_since = Instant::now();
            }
            if let Some(stop) = &stopping {
                // Quiet: a read that waited its whole timeout for nothing (not one cut short by
                // a signal, and not the time spent handling what came).
                let quiet = read == 0 && waited.elapsed() >= CATCH_UP_QUIET;
                if stop.finished(quiet, &conn, &self.lag) {
                    break;
                }
                continue;
            }
            let silent = last_data.elapsed();
            match probe_sent {
                None if silent >= self.config.silence_timeout => {
                    debug!(silent = ?silent, "socket silent; probing with api status");
                    conn.send("api status\n\n")?;
                    probe_sent = Some(Instant::now());
                }
                Some(at) if at.elapsed() >= self.config.health_check_timeout => {
                    return Err(SessionError::Silent { silent, timeout: self.config.health_check_timeout });
                }
                _ => {}
            }
        }
        let _ = conn.send("exit\n\n");
        Ok(())
    }

    /// Handles every whole frame in the read buffer.
    fn handle_buffered(&self, conn: &mut Connection<'_>) -> Result<(), SessionError> {
        while let Some(frame) = conn.decoder.decode(&mut conn.buf)? {
            // The last whole frame of what arrived after a quiet spell: the reader would only
            // wait for the socket next, so it may write the event itself if its lane is idle.
            let idle = conn.buf.is_empty() && conn.quiet >= WRITE_NOW_AFTER_QUIET;
            if let Some(stamp) = self.handle(frame, idle)? {
                conn.newest_stamp_us = conn.newest_stamp_us.max(Some(stamp));
            }
            conn.frames += 1;
        }
        Ok(())
    }

    /// Handles one frame; returns the event's `Event-Date-Timestamp`, if it is a stamped event.
    fn handle(&self, frame: Frame, idle: bool) -> Result<Option<i64>, SessionError> {
        let content_type = frame.content_type().unwrap_or("");
        let format = match EventFormat::from_content_type(content_type) {
            Some(format) => format,
            None => {
                return match content_type {
                    "text/disconnect-notice" => Err(SessionError::DisconnectNotice(body_text(&frame))),
                    "text/rude-rejection" => Err(SessionError::RudeRejection(body_text(&frame))),
                    _ => Ok(None), // api/response, command/reply, log/data: nothing to store
                };
            }
        };
        self.intake.received(Source::Esl, 1);
        let parsed_at_us = now_us();
        // The switch's JSON is written as it came when it is valid and each key occurs once;
        // otherwise the writer rewrites it (first occurrence kept) or decodes the plain text.
        let mut body = frame.body().clone();
        let (scanned, body_format) = match format {
            EventFormat::Plain => (scan_meta(format, &body), BodyFormat::EslPlain),
            EventFormat::Json => match scan_json(&body) {
                Ok(scan) => {
                    if scan.duplicate_keys {
                        metrics().esl.duplicate_keys.inc();
                    }
                    let body_format = match scan.rewritten {
                        Some(rewritten) => {
                            body = bytes::Bytes::from(rewritten);
                            BodyFormat::Json
                        }
                        None if scan.verbatim => BodyFormat::Json,
                        None => BodyFormat::EslJson,
                    };
                    (Ok(scan.meta), body_format)
                }
                Err(e) => (Err(e), BodyFormat::EslJson),
            },
        };
        let mut meta = match scanned {
            Ok(meta) => meta,
            Err(e) => {
                metrics().events.dropped.with_label_values(&["none", "malformed", "esl"]).inc();
                self.state.add_dropped(Source::Esl, 1);
                error!(error = %e, bytes = body.len(), "malformed event dropped");
                return Ok(None);
            }
        };
        if let Some(ts) = meta.timestamp_us {
            let latency = seconds_between(ts, parsed_at_us);
            metrics().latency.reader.observe(latency);
            if latency > self.max_latency.as_secs_f64() {
                if let Some(suppressed) = SLOW_WARN.check() {
                    warn!(event = %meta.name, uuid = %meta.unique_id, reader_seconds = latency, suppressed, "event over READER_MAX_LATENCY when parsed (switch clock ahead, or the agent starved of CPU)");
                }
            }
        }
        if meta.name == "HEARTBEAT" {
            self.state.last_heartbeat_us.store(parsed_at_us, Ordering::Relaxed);
        }
        let Some(stream) = self.router.route(&meta) else {
            metrics().events.filtered.inc();
            if FILTER_DEBUG.check().is_some() {
                debug!(event = %meta.name, "event not in EVENTS_TO_PUBLISH/EVENTS_TO_PUSH; not written");
            }
            return Ok(meta.timestamp_us);
        };
        let stamp = meta.timestamp_us;
        // Memory full: wait for room while the switch is less than MAX_LAG behind, then spool.
        let wait_until = meta.timestamp_us.and_then(|ts| self.lag.wait_until(ts, parsed_at_us, Instant::now()));
        let envelope = Envelope {
            source: Source::Esl,
            stream: stream.clone(),
            format: body_format,
            body,
            key: self.key_of(&mut meta),
            name: meta.name,
            ordering_key: meta.unique_id,
            timestamp_us: meta.timestamp_us,
            parsed_at_us,
            spool_pos: None,
            maybe_written: false,
            ack: None,
        };
        let offer = Offer { wait_until, write_now: idle };
        match &self.gate {
            Some(gate) => gate.offer(envelope, offer),
            None => {
                self.intake.offer(envelope, offer);
            }
        }
        Ok(stamp)
    }
}

impl EslClient {
    /// `(Core-UUID, Event-Sequence)`, or a key of the agent's own when the event lacks one (or
    /// its sequence is not a decimal number, which the dedup bitmaps cannot index).
    fn key_of(&self, meta: &mut EventMeta) -> IdempotencyKey {
        match meta.sequence.parse::<u64>() {
            Ok(sequence) if !meta.core_uuid.is_empty() => IdempotencyKey {
                producer: std::mem::replace(&mut meta.core_uuid, Text::new()),
                id: EventId::Seq(sequence),
            },
            _ => self.keys.next(),
        }
    }
}

/// The byte side of one connection.
struct Connection<'a> {
    stream: &'a mut TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    /// How long the reader waited for the data of the latest read.
    quiet: Duration,
    /// Frames read, and the newest `Event-Date-Timestamp` among them.
    frames: u64,
    newest_stamp_us: Option<i64>,
}

/// The reader after a stop was asked for: it reads on until it has read every event the
/// switch made before the stop, so none of them is left unread in the socket when it closes.
///
/// FreeSWITCH sends every event to every listener, so in a hot-standby pair the standby holds
/// everything made since it subscribed; what it cannot hold is what the switch made before
/// that and the active has not read yet. A rolling upgrade restarts the standby, then stops the
/// active at once: an active a few hundred milliseconds behind the switch (a busy host) would
/// leave those events unread, and nobody would write them. An event made after the stop ends
/// the catch-up (its stamp, by the connection's clock offset, [`Lag::made_at`]), or a quiet
/// socket (nothing more queued for this listener), or [`CATCH_UP_LIMIT`].
struct CatchUp {
    at_us: i64,
    started: Instant,
    frames_before: u64,
}

/// A read that waits this long for nothing means the switch has nothing queued for us (it
/// writes a listener's queue out as fast as the socket takes it; a busy host can still hold
/// it up for tens of milliseconds).
const CATCH_UP_QUIET: Duration = Duration::from_millis(200);
/// Read past the stop by this much of the switch's time, for stamps taken on different
/// threads of the switch and queued slightly out of order.
const CATCH_UP_MARGIN_US: i64 = 50_000;
/// The longest a stop waits for the reader to catch up (normally it is within `MAX_LAG` of
/// the switch: the reader spools rather than fall further behind).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(2);

impl CatchUp {
    fn begin(shutdown: &Shutdown, conn: &Connection<'_>) -> Result<CatchUp, SessionError> {
        conn.stream.set_read_timeout(Some(CATCH_UP_QUIET))?;
        let at_us = shutdown.triggered_at_us().unwrap_or_else(now_us);
        Ok(CatchUp { at_us, started: Instant::now(), frames_before: conn.frames })
    }

    /// Whether the reader may stop now (`quiet`: the last read waited for nothing); logs how
    /// it ended.
    fn finished(&self, quiet: bool, conn: &Connection<'_>, lag: &Lag) -> bool {
        let frames = conn.frames - self.frames_before;
        let took = self.started.elapsed();
        let made_at = conn.newest_stamp_us.and_then(|stamp| lag.made_at(stamp));
        if quiet {
            let newest_before_stop = made_at.map(|made| seconds_between(made, self.at_us));
            info!(frames, took = ?took, newest_before_stop_seconds = newest_before_stop, "stopping: read everything the switch had sent (the socket is quiet)");
            return true;
        }
        if made_at.is_some_and(|made| made >= self.at_us + CATCH_UP_MARGIN_US) {
            info!(frames, took = ?took, "stopping: read every event the switch made before the stop");
            return true;
        }
        if took >= CATCH_UP_LIMIT {
            let behind = made_at.map(|made| seconds_between(made, self.at_us));
            warn!(frames, behind_seconds = behind, "stopping behind the switch: events it made before the stop and not read are lost unless a standby of the pair holds them");
            return true;
        }
        false
    }
}

impl Connection<'_> {
    fn send(&mut self, command: &str) -> io::Result<()> {
        self.stream.write_all(command.as_bytes())
    }

    /// Reads what is available (waiting at most one tick) straight into the buffer's free
    /// space; 0 when nothing came.
    fn fill(&mut self) -> Result<usize, SessionError> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        let len = self.buf.len();
        match socket2::SockRef::from(&*self.stream).recv(self.buf.spare_capacity_mut()) {
            Ok(0) => Err(SessionError::Closed),
            Ok(n) => {
                // SAFETY: `recv` initialized the first `n` bytes of the spare capacity.
                unsafe { self.buf.set_len(len + n) };
                Ok(n)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The next frame, or `None` on shutdown; an error if none arrives within `timeout`.
    fn read_frame(&mut self, shutdown: &Shutdown, timeout: Duration) -> Result<Option<Frame>, SessionError> {
        let started = Instant::now();
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if shutdown.is_triggered() {
                return Ok(None);
            }
            if started.elapsed() >= timeout {
                return Err(SessionError::Handshake(format!("silence for {timeout:?}")));
            }
            self.fill()?;
        }
    }

    /// Waits for the `command/reply` to a command and returns its `Reply-Text`, skipping
    /// frames that may come first (events of an earlier subscription, logs).
    fn command_reply(&mut self, shutdown: &Shutdown, timeout: Duration) -> Result<String, SessionError> {
        loop {
            let Some(frame) = self.read_frame(shutdown, timeout)? else {
                return Err(SessionError::Closed);
            };
            match frame.content_type() {
                Some("command/reply") => return Ok(frame.header("Reply-Text").unwrap_or("").to_owned()),
                Some("text/rude-rejection") => return Err(SessionError::RudeRejection(body_text(&frame))),
                Some("text/disconnect-notice") => return Err(SessionError::DisconnectNotice(body_text(&frame))),
                _ => continue,
            }
        }
    }
}

fn body_text(frame: &Frame) -> String {
    String::from_utf8_lossy(frame.body()).trim().replace('\n', " ")
}
