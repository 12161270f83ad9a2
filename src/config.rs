//! Configuration: every variable of the contract, read from the environment (and `.env`),
//! validated once at start-up into plain typed values.
//!
//! Each variable is read as a string and parsed by hand (rather than deserialized with `envy`)
//! so that a bad value is reported with its variable name, the value given and what was
//! expected: a [`ConfigError`], which `main` turns into exit code 2.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// A configuration problem: which variable, what it held, what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: String,
    pub value: String,
    pub expected: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}={:?}: expected {}", self.variable, self.value, self.expected)
    }
}

impl std::error::Error for ConfigError {}

/// Parses a duration such as `250ms`, `3s`, `10m`, `1h` (also `1.5s`, `500us`; a bare `0`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "us" | "µs" => number / 1_000_000.0,
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// Parses a byte size: `1073741824`, `512MiB`, `1GiB`, `64KB`, `10M`.
/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`), any case.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

pub fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// Reference variables that our design does not need, with the reason shown at start-up.
const IGNORED: &[(&str, &str)] = &[
    ("REDIS_REMOTE_POOL_SIZE", "each writer owns one pipelined connection (WRITER_WORKERS)"),
    ("REDIS_REMOTE_MIN_IDLE_CONNS", "each writer owns one pipelined connection (WRITER_WORKERS)"),
    ("REDIS_REMOTE_POOL_TIMEOUT", "there is no connection pool to wait for"),
    ("REDIS_REMOTE_MAX_RETRIES", "writes are retried by WRITER_RETRY_TTL / WRITER_MAX_RETRIES, then spooled"),
    ("READER_BLOCK_TIME", "the socket reader never blocks on the pipeline"),
    ("READER_PROCESSING_WORKERS", "events are decoded by the writer threads"),
    ("READER_WORKERS", "events are decoded by the writer threads"),
    (
        "WRITER_RETRY_QUEUE_SIZE",
        "a failing batch is retried in place and then spooled to disk; BUFFER_SIZE bounds memory",
    ),
    ("METRICS_UPDATE_INTERVAL", "metrics are updated as events flow"),
];

/// Which fields a stream entry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryFormat {
    /// `event` plus the index fields `event_name`, `unique_id`, `core_uuid`, `event_sequence`.
    Full,
    /// The reference service's layout: `event` alone.
    Reference,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where and how to reach the event socket.
#[derive(Debug, Clone)]
pub struct EslConfig {
    /// `ESL_ENABLED`: read the event socket at all (off for HTTP-only or outbox-only agents).
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    pub password: String,
    pub reconnect_delay: Duration,
    pub max_reconnect_delay: Duration,
    /// How long an `api status` probe may take before the connection is declared dead.
    pub health_check_timeout: Duration,
    /// How long the socket may be silent before it is probed.
    pub silence_timeout: Duration,
    pub connect_timeout: Duration,
}

/// Where and how to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// A `redis://` or `rediss://` URL (built from `REDIS_REMOTE_*` when `REDIS_URL` is unset).
    /// With Sentinel or Cluster its credentials, database and scheme apply to every node.
    pub url: String,
    pub dial_timeout: Duration,
    pub write_timeout: Duration,
    /// One server, a Sentinel-managed primary, or a Redis Cluster.
    pub topology: RedisTopology,
    /// `REDIS_TLS_CA_CERT`, `REDIS_TLS_CERT` / `REDIS_TLS_KEY`, read at start-up.
    pub tls: RedisTls,
    /// `REDIS_WAIT_REPLICAS`: replicas that must confirm a batch (`WAIT`) before it counts as
    /// written (0: the primary's reply is enough).
    pub wait_replicas: u32,
    /// `REDIS_WAIT_TIMEOUT`: how long a batch waits for those replicas.
    pub wait_timeout: Duration,
}

/// How the Redis that holds the streams is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// The server of `REDIS_URL`.
    Standalone,
    /// `REDIS_SENTINELS`: the primary the sentinels name for `master`.
    Sentinel {
        /// `host:port` of each sentinel.
        sentinels: Vec<String>,
        /// `REDIS_SENTINEL_MASTER`.
        master: String,
        /// `REDIS_SENTINEL_PASSWORD` (the sentinels' own, not the primary's).
        password: Option<String>,
    },
    /// `REDIS_CLUSTER_NODES`: `host:port` seeds of a Redis Cluster.
    Cluster { seeds: Vec<String> },
}

/// A PEM file named by a variable, read at start-up.
#[derive(Clone, PartialEq, Eq)]
pub struct PemFile {
    pub path: String,
    pub pem: Vec<u8>,
}

impl fmt::Debug for PemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes)", self.path, self.pem.len())
    }
}

/// TLS material for `rediss://` beyond the system's roots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// `REDIS_TLS_CA_CERT`: the certificates trusted instead of the built-in roots.
    pub ca_cert: Option<PemFile>,
    /// `REDIS_TLS_CERT` and `REDIS_TLS_KEY`: the client certificate chain and its key.
    pub client: Option<(PemFile, PemFile)>,
}

/// Stream keys, caps and retention.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub events_key: String,
    pub jobs_key: String,
    pub events_max_len: u64,
    pub jobs_max_len: u64,
    pub events_expire: Duration,
    pub jobs_expire: Duration,
    pub trim_interval: Duration,
    pub entry_format: EntryFormat,
}

impl StreamConfig {
    /// `STREAM_EVENTS`, as events are routed to it.
    pub fn events_target(&self) -> std::sync::Arc<crate::envelope::StreamTarget> {
        crate::envelope::StreamTarget::new(&self.events_key, self.events_max_len, "events")
    }

    /// `STREAM_JOBS`, as events are routed to it.
    pub fn jobs_target(&self) -> std::sync::Arc<crate::envelope::StreamTarget> {
        crate::envelope::StreamTarget::new(&self.jobs_key, self.jobs_max_len, "jobs")
    }
}

/// Writer threads, batching and retry.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub workers: usize,
    pub batch_size: usize,
    /// How long a batch may keep collecting while events keep arriving.
    pub pipeline_timeout: Duration,
    pub max_retries: u32,
    pub retry_pause: Duration,
    pub retry_ttl: Duration,
    /// Events held in memory across all lanes before the spool takes over.
    pub buffer_size: usize,
    /// `BUFFER_MAX_BYTES`: bytes of event bodies held in memory across all lanes.
    pub buffer_max_bytes: u64,
    /// `WRITER_WRITE_NOW`: the ESL reader writes an event itself when its lane is idle.
    pub write_now: bool,
}

/// A producer allowed to post events, and its bearer token (`HTTP_INGRESS_TOKENS`).
#[derive(Clone)]
pub struct IngressToken {
    pub name: String,
    pub token: String,
}

impl fmt::Debug for IngressToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:********", self.name)
    }
}

/// The HTTP ingress source (`HTTP_INGRESS=true`): `POST /events`.
#[derive(Debug, Clone)]
pub struct HttpIngressConfig {
    pub enabled: bool,
    /// Its own listener (`HTTP_INGRESS_BIND` / `HTTP_INGRESS_PORT`); `None`: the admin one.
    pub listen: Option<(String, u16)>,
    /// `HTTP_INGRESS_TLS_CERT` / `HTTP_INGRESS_TLS_KEY`: PEM files, for the own listener.
    pub tls: Option<(String, String)>,
    pub tokens: Vec<IngressToken>,
    pub hmac_secret: Option<String>,
    pub allow_anonymous: bool,
    pub max_body: usize,
    pub max_batch: usize,
    pub required_fields: Vec<String>,
    pub stream_key: String,
    pub max_len: u64,
    pub expire: Duration,
    pub name_field: String,
    pub order_field: String,
    pub id_field: String,
    pub idempotency_ttl: Duration,
    pub ack_timeout: Duration,
    pub max_connections: usize,
}

impl HttpIngressConfig {
    /// `HTTP_STREAM`, as events are routed to it.
    pub fn stream_target(&self) -> std::sync::Arc<crate::envelope::StreamTarget> {
        crate::envelope::StreamTarget::new(&self.stream_key, self.max_len, "http")
    }
}

/// The PostgreSQL outbox source (`OUTBOX_DATABASE_URL` set): rows an application commits to
/// an outbox table, relayed to a stream.
#[derive(Clone)]
pub struct OutboxConfig {
    /// `OUTBOX_DATABASE_URL`: a libpq-style URL or `key=value` string (TLS per `sslmode`).
    pub database_url: String,
    /// `OUTBOX_TABLE`: `table` or `schema.table`.
    pub table: String,
    pub stream_key: String,
    pub max_len: u64,
    pub expire: Duration,
    pub batch_size: usize,
    pub poll_interval: Duration,
    /// `OUTBOX_KEEP=true`: published rows get `published_at` instead of being deleted.
    pub keep: bool,
    /// `OUTBOX_PRODUCER`: the idempotency keys' producer; `None`: `<database>.<schema>.<table>`.
    pub producer: Option<String>,
}

impl fmt::Debug for OutboxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxConfig")
            .field("database_url", &outbox_mask(&self.database_url))
            .field("table", &self.table)
            .field("stream_key", &self.stream_key)
            .finish_non_exhaustive()
    }
}

impl OutboxConfig {
    /// `OUTBOX_STREAM`, as rows without a `stream` of their own are routed to it.
    pub fn stream_target(&self) -> std::sync::Arc<crate::envelope::StreamTarget> {
        crate::envelope::StreamTarget::new(&self.stream_key, self.max_len, "outbox")
    }
}

/// The hot-standby pair (`HA_GROUP` set): two agents beside one switch, one writing.
#[derive(Debug, Clone)]
pub struct HaConfig {
    /// `HA_GROUP`: one name per switch; both agents of the pair use it.
    pub group: String,
    /// `HA_LEASE_TTL`: how long the active's lease lasts unless renewed.
    pub lease_ttl: Duration,
    /// `HA_REPLAY_WINDOW` / `HA_REPLAY_MAX_BYTES`: what a standby keeps to replay at takeover.
    pub replay_window: Duration,
    pub replay_max_bytes: u64,
    /// `HA_AGENT_ID`: how this agent is named as the lease holder (default `<hostname>:<pid>`).
    pub agent_id: String,
}

/// Latency thresholds that produce warnings.
#[derive(Debug, Clone)]
pub struct LatencyThresholds {
    pub reader: Duration,
    pub writer: Duration,
    pub total: Duration,
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub esl: EslConfig,
    pub redis: RedisConfig,
    pub streams: StreamConfig,
    pub writer: WriterConfig,
    pub latency: LatencyThresholds,
    pub events_to_publish: Vec<String>,
    pub events_to_push: Vec<String>,
    pub health_interval: Duration,
    pub health_max_retries: u32,
    pub health_bind: String,
    pub health_port: u16,
    pub metrics_print_interval: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    pub spool_dir: String,
    pub spool_max_bytes: u64,
    pub shutdown_timeout: Duration,
    pub http_token: Option<String>,
    pub http_ingress: HttpIngressConfig,
    /// The outbox source, when `OUTBOX_DATABASE_URL` is set.
    pub outbox: Option<OutboxConfig>,
    /// The hot-standby pair, when `HA_GROUP` is set.
    pub ha: Option<HaConfig>,
    /// Reference variables that were set but mean nothing here, with the reason.
    pub ignored: Vec<(String, String)>,
}

/// Reads one variable through a parser, naming it in the error.
struct Reader<'a> {
    vars: &'a HashMap<String, String>,
}

impl Reader<'_> {
    fn raw(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(|s| s.as_str()).filter(|s| !s.trim().is_empty())
    }

    fn get<T>(
        &self,
        name: &str,
        default: T,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        match self.raw(name) {
            None => Ok(default),
            Some(text) => parse(text).ok_or_else(|| ConfigError {
                variable: name.to_owned(),
                value: text.to_owned(),
                expected: expected.to_owned(),
            }),
        }
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.raw(name).map(str::trim).unwrap_or(default).to_owned()
    }

    fn duration(&self, name: &str, default: &str) -> Result<Duration, ConfigError> {
        let default = parse_duration(default).expect("built-in default durations parse");
        self.get(name, default, "a duration such as 250ms, 3s, 10m or 1h", parse_duration)
    }

    fn positive_duration(&self, name: &str, default: &str) -> Result<Duration, ConfigError> {
        let d = self.duration(name, default)?;
        if d.is_zero() {
            return Err(self.error(name, "a duration greater than zero"));
        }
        Ok(d)
    }

    fn number<T>(&self, name: &str, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + Copy + fmt::Display,
    {
        let expected = format!("a whole number from {min} to {max}");
        self.get(name, default, &expected, |s| s.trim().parse::<T>().ok().filter(|v| *v >= min && *v <= max))
    }

    fn error(&self, name: &str, expected: &str) -> ConfigError {
        ConfigError {
            variable: name.to_owned(),
            value: self.raw(name).unwrap_or_default().to_owned(),
            expected: expected.to_owned(),
        }
    }
}

/// Splits an event list: comma- or space-separated, trimmed, upper-cased except subclasses.
pub fn parse_event_list(text: &str) -> Vec<String> {
    text.split([',', ' ', '\t', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once("::") {
            Some((head, sub)) if head.eq_ignore_ascii_case("CUSTOM") => format!("CUSTOM::{sub}"),
            _ => s.to_ascii_uppercase(),
        })
        .collect()
}

const DEFAULT_PUBLISH: &str = "BACKGROUND_JOB,CHANNEL_EXECUTE,CHANNEL_EXECUTE_COMPLETE,DTMF,DETECTED_SPEECH";
const DEFAULT_PUSH: &str = "CHANNEL_ANSWER,CHANNEL_HANGUP,DTMF,CUSTOM";

impl Config {
    /// Whether this agent reads `source`.
    pub fn reads(&self, source: crate::envelope::Source) -> bool {
        match source {
            crate::envelope::Source::Esl => self.esl.enabled,
            crate::envelope::Source::Http => self.http_ingress.enabled,
            crate::envelope::Source::Outbox => self.outbox.is_some(),
        }
    }

    /// Loads `.env` (if present; the real environment wins) and the environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let _ = dotenvy::dotenv();
        Self::from_vars(std::env::vars().collect())
    }

    /// Builds the configuration from a set of variables (tests pass their own).
    pub fn from_vars(vars: HashMap<String, String>) -> Result<Config, ConfigError> {
        let r = Reader { vars: &vars };

        let esl = EslConfig {
            enabled: r.get("ESL_ENABLED", true, "true or false", parse_bool)?,
            host: r.string("ESL_HOST", "127.0.0.1"),
            port: r.number("ESL_PORT", 8021u16, 1, u16::MAX)?,
            password: r.vars.get("ESL_PASSWORD").cloned().unwrap_or_else(|| "ClueCon".into()),
            reconnect_delay: r.positive_duration("ESL_RECONNECT_DELAY", "1s")?,
            max_reconnect_delay: r.positive_duration("ESL_MAX_RECONNECT_DELAY", "10s")?,
            health_check_timeout: r.positive_duration("ESL_HEALTH_CHECK_TIMEOUT", "3s")?,
            silence_timeout: r.positive_duration("ESL_SILENCE_TIMEOUT", "25s")?,
            connect_timeout: r.positive_duration("ESL_CONNECT_TIMEOUT", "3s")?,
        };
        if esl.max_reconnect_delay < esl.reconnect_delay {
            return Err(r.error("ESL_MAX_RECONNECT_DELAY", "a duration not below ESL_RECONNECT_DELAY"));
        }

        let redis = redis_config(&r)?;

        let entry_format = match r.string("STREAM_ENTRY_FORMAT", "full").to_ascii_lowercase().as_str() {
            "full" => EntryFormat::Full,
            "reference" => EntryFormat::Reference,
            _ => return Err(r.error("STREAM_ENTRY_FORMAT", "full or reference")),
        };
        let streams = StreamConfig {
            events_key: r.string("STREAM_EVENTS", "freeswitch:telephony:events"),
            jobs_key: r.string("STREAM_JOBS", "freeswitch:telephony:background-jobs"),
            events_max_len: r.number("EVENTS_MAX_LEN", 1_000_000u64, 0, u64::MAX)?,
            jobs_max_len: r.number("JOBS_MAX_LEN", 100_000u64, 0, u64::MAX)?,
            events_expire: r.duration("EVENTS_EXPIRE_TIME", "10m")?,
            jobs_expire: r.duration("JOBS_EXPIRE_TIME", "10m")?,
            trim_interval: r.positive_duration("TRIM_INTERVAL", "10s")?,
            entry_format,
        };
        if streams.events_key == streams.jobs_key {
            return Err(r.error("STREAM_JOBS", "a key different from STREAM_EVENTS"));
        }

        let writer = WriterConfig {
            workers: r.number("WRITER_WORKERS", 4usize, 1, 256)?,
            batch_size: r.number("WRITER_BATCH_SIZE", 256usize, 1, 100_000)?,
            pipeline_timeout: r.duration("WRITER_PIPELINE_TIMEOUT", "1ms")?,
            max_retries: r.number("WRITER_MAX_RETRIES", 10u32, 0, u32::MAX)?,
            retry_pause: r.positive_duration("WRITER_RETRY_PAUSE_AFTER", "100ms")?,
            retry_ttl: r.positive_duration("WRITER_RETRY_TTL", "5s")?,
            buffer_size: r.number("BUFFER_SIZE", 50_000usize, 16, 100_000_000)?,
            buffer_max_bytes: r.get(
                "BUFFER_MAX_BYTES",
                64 << 20,
                "a size such as 67108864, 64MiB or 1GiB",
                parse_bytes,
            )?,
            write_now: r.get("WRITER_WRITE_NOW", true, "true or false", parse_bool)?,
        };
        let latency = LatencyThresholds {
            reader: r.positive_duration("READER_MAX_LATENCY", "300ms")?,
            writer: r.positive_duration("WRITER_MAX_LATENCY", "300ms")?,
            total: r.positive_duration("TOTAL_MAX_LATENCY", "500ms")?,
        };

        // Set but empty means "none" (unlike other variables, where empty means default).
        let list = |name: &str, default: &str| parse_event_list(vars.get(name).map_or(default, |v| v.as_str()));
        let events_to_publish = list("EVENTS_TO_PUBLISH", DEFAULT_PUBLISH);
        let events_to_push = list("EVENTS_TO_PUSH", DEFAULT_PUSH);
        if events_to_publish.is_empty() && events_to_push.is_empty() {
            return Err(r.error("EVENTS_TO_PUSH", "at least one event name in EVENTS_TO_PUSH or EVENTS_TO_PUBLISH"));
        }
        for (name, list) in [("EVENTS_TO_PUBLISH", &events_to_publish), ("EVENTS_TO_PUSH", &events_to_push)] {
            if let Some(bad) = list.iter().find(|e| !e.chars().all(|c| c.is_ascii_alphanumeric() || "_:-.".contains(c)))
            {
                return Err(ConfigError {
                    variable: name.into(),
                    value: bad.clone(),
                    expected: "event names such as CHANNEL_ANSWER, CUSTOM or CUSTOM::sofia::register".into(),
                });
            }
        }

        let log_format = match r.string("LOG_FORMAT", "text").to_ascii_lowercase().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(r.error("LOG_FORMAT", "text or json")),
        };
        let log_level = r.string("LOG_LEVEL", "info").to_ascii_lowercase();
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(r.error("LOG_LEVEL", "error, warn, info, debug or trace (or a tracing filter)"));
        }

        let http_ingress = http_ingress(&r)?;
        let health_bind = r.string("HEALTH_BIND", "0.0.0.0");
        let ingress_bind = http_ingress.listen.as_ref().map_or(health_bind.as_str(), |(h, _)| h.as_str());
        let loopback =
            ["127.0.0.1", "localhost", "::1", "[::1]"].contains(&ingress_bind) || ingress_bind.starts_with("127.");
        if http_ingress.enabled
            && http_ingress.tokens.is_empty()
            && http_ingress.hmac_secret.is_none()
            && !http_ingress.allow_anonymous
            && !loopback
        {
            return Err(ConfigError {
                variable: "HTTP_INGRESS_ALLOW_ANONYMOUS".into(),
                value: String::new(),
                expected: format!("true to accept events from anyone on {ingress_bind}, or set HTTP_INGRESS_TOKENS or HTTP_INGRESS_HMAC_SECRET (with neither, ingress only listens on loopback)"),
            });
        }

        let ignored = IGNORED
            .iter()
            .filter(|(name, _)| r.raw(name).is_some())
            .map(|(name, why)| (name.to_string(), why.to_string()))
            .collect();

        Ok(Config {
            esl,
            redis,
            streams,
            writer,
            latency,
            events_to_publish,
            events_to_push,
            health_interval: r.positive_duration("HEALTH_CHECK_INTERVAL", "5s")?,
            health_max_retries: r.number("HEALTH_MAX_RETRIES", 3u32, 1, u32::MAX)?,
            health_bind,
            health_port: r.number("HEALTH_PORT", 9876u16, 0, u16::MAX)?,
            metrics_print_interval: r.duration("METRICS_PRINT_INTERVAL", "60s")?,
            log_level,
            log_format,
            spool_dir: r.string("SPOOL_DIR", "./spool"),
            spool_max_bytes: r.get(
                "SPOOL_MAX_BYTES",
                1 << 30,
                "a size such as 1073741824, 512MiB or 1GiB",
                parse_bytes,
            )?,
            shutdown_timeout: r.positive_duration("SHUTDOWN_TIMEOUT", "10s")?,
            http_token: r.raw("HTTP_TOKEN").map(str::to_owned),
            http_ingress,
            outbox: outbox(&r)?,
            ha: ha(&r)?,
            ignored,
        })
    }

    /// The effective configuration as `NAME=value` lines, secrets masked.
    pub fn describe(&self) -> String {
        let d = |d: Duration| format!("{d:?}");
        let lines: Vec<(&str, String)> = vec![
            ("ESL_ENABLED", self.esl.enabled.to_string()),
            ("ESL_HOST", self.esl.host.clone()),
            ("ESL_PORT", self.esl.port.to_string()),
            ("ESL_PASSWORD", mask(&self.esl.password)),
            ("ESL_RECONNECT_DELAY", d(self.esl.reconnect_delay)),
            ("ESL_MAX_RECONNECT_DELAY", d(self.esl.max_reconnect_delay)),
            ("ESL_HEALTH_CHECK_TIMEOUT", d(self.esl.health_check_timeout)),
            ("ESL_SILENCE_TIMEOUT", d(self.esl.silence_timeout)),
            ("ESL_CONNECT_TIMEOUT", d(self.esl.connect_timeout)),
            ("REDIS_URL", mask_url(&self.redis.url)),
            ("REDIS_REMOTE_DIAL_TIMEOUT", d(self.redis.dial_timeout)),
            ("REDIS_REMOTE_WRITE_TIMEOUT", d(self.redis.write_timeout)),
            ("REDIS_SENTINELS", self.redis.sentinel_field(|s, _, _| s.join(","))),
            ("REDIS_SENTINEL_MASTER", self.redis.sentinel_field(|_, m, _| m.to_owned())),
            ("REDIS_SENTINEL_PASSWORD", self.redis.sentinel_field(|_, _, p| p.map(mask).unwrap_or_default())),
            (
                "REDIS_CLUSTER_NODES",
                match &self.redis.topology {
                    RedisTopology::Cluster { seeds } => seeds.join(","),
                    _ => String::new(),
                },
            ),
            ("REDIS_WAIT_REPLICAS", self.redis.wait_replicas.to_string()),
            ("REDIS_WAIT_TIMEOUT", d(self.redis.wait_timeout)),
            ("REDIS_TLS_CA_CERT", self.redis.tls.ca_cert.as_ref().map(|f| f.path.clone()).unwrap_or_default()),
            ("REDIS_TLS_CERT", self.redis.tls.client.as_ref().map(|(c, _)| c.path.clone()).unwrap_or_default()),
            ("REDIS_TLS_KEY", self.redis.tls.client.as_ref().map(|(_, k)| k.path.clone()).unwrap_or_default()),
            ("STREAM_EVENTS", self.streams.events_key.clone()),
            ("STREAM_JOBS", self.streams.jobs_key.clone()),
            ("STREAM_ENTRY_FORMAT", format!("{:?}", self.streams.entry_format).to_lowercase()),
            ("EVENTS_MAX_LEN", self.streams.events_max_len.to_string()),
            ("JOBS_MAX_LEN", self.streams.jobs_max_len.to_string()),
            ("EVENTS_EXPIRE_TIME", d(self.streams.events_expire)),
            ("JOBS_EXPIRE_TIME", d(self.streams.jobs_expire)),
            ("TRIM_INTERVAL", d(self.streams.trim_interval)),
            ("READER_MAX_LATENCY", d(self.latency.reader)),
            ("WRITER_MAX_LATENCY", d(self.latency.writer)),
            ("TOTAL_MAX_LATENCY", d(self.latency.total)),
            ("WRITER_WORKERS", self.writer.workers.to_string()),
            ("WRITER_BATCH_SIZE", self.writer.batch_size.to_string()),
            ("WRITER_PIPELINE_TIMEOUT", d(self.writer.pipeline_timeout)),
            ("WRITER_MAX_RETRIES", self.writer.max_retries.to_string()),
            ("WRITER_RETRY_PAUSE_AFTER", d(self.writer.retry_pause)),
            ("WRITER_RETRY_TTL", d(self.writer.retry_ttl)),
            ("BUFFER_SIZE", self.writer.buffer_size.to_string()),
            ("BUFFER_MAX_BYTES", self.writer.buffer_max_bytes.to_string()),
            ("WRITER_WRITE_NOW", self.writer.write_now.to_string()),
            ("EVENTS_TO_PUBLISH", self.events_to_publish.join(",")),
            ("EVENTS_TO_PUSH", self.events_to_push.join(",")),
            ("HEALTH_CHECK_INTERVAL", d(self.health_interval)),
            ("HEALTH_MAX_RETRIES", self.health_max_retries.to_string()),
            ("HEALTH_BIND", self.health_bind.clone()),
            ("HEALTH_PORT", self.health_port.to_string()),
            ("METRICS_PRINT_INTERVAL", d(self.metrics_print_interval)),
            ("LOG_LEVEL", self.log_level.clone()),
            ("LOG_FORMAT", format!("{:?}", self.log_format).to_lowercase()),
            ("SPOOL_DIR", self.spool_dir.clone()),
            ("SPOOL_MAX_BYTES", self.spool_max_bytes.to_string()),
            ("SHUTDOWN_TIMEOUT", d(self.shutdown_timeout)),
            ("HTTP_TOKEN", self.http_token.as_deref().map(mask).unwrap_or_default()),
            ("HTTP_INGRESS", self.http_ingress.enabled.to_string()),
            ("HTTP_INGRESS_BIND", self.http_ingress.listen.as_ref().map(|(h, _)| h.clone()).unwrap_or_default()),
            ("HTTP_INGRESS_PORT", self.http_ingress.listen.as_ref().map(|(_, p)| p.to_string()).unwrap_or_default()),
            (
                "HTTP_INGRESS_TOKENS",
                self.http_ingress.tokens.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(","),
            ),
            ("HTTP_INGRESS_HMAC_SECRET", self.http_ingress.hmac_secret.as_deref().map(mask).unwrap_or_default()),
            ("HTTP_INGRESS_TLS_CERT", self.http_ingress.tls.as_ref().map(|(c, _)| c.clone()).unwrap_or_default()),
            ("HTTP_INGRESS_TLS_KEY", self.http_ingress.tls.as_ref().map(|(_, k)| k.clone()).unwrap_or_default()),
            ("HTTP_INGRESS_ALLOW_ANONYMOUS", self.http_ingress.allow_anonymous.to_string()),
            ("HTTP_INGRESS_MAX_BODY", self.http_ingress.max_body.to_string()),
            ("HTTP_INGRESS_MAX_BATCH", self.http_ingress.max_batch.to_string()),
            ("HTTP_INGRESS_REQUIRED_FIELDS", self.http_ingress.required_fields.join(",")),
            ("HTTP_INGRESS_NAME_FIELD", self.http_ingress.name_field.clone()),
            ("HTTP_INGRESS_ORDER_FIELD", self.http_ingress.order_field.clone()),
            ("HTTP_INGRESS_ID_FIELD", self.http_ingress.id_field.clone()),
            ("HTTP_INGRESS_IDEMPOTENCY_TTL", d(self.http_ingress.idempotency_ttl)),
            ("HTTP_INGRESS_ACK_TIMEOUT", d(self.http_ingress.ack_timeout)),
            ("HTTP_INGRESS_MAX_CONNECTIONS", self.http_ingress.max_connections.to_string()),
            ("HTTP_STREAM", self.http_ingress.stream_key.clone()),
            ("HTTP_MAX_LEN", self.http_ingress.max_len.to_string()),
            ("HTTP_EXPIRE_TIME", d(self.http_ingress.expire)),
        ];
        let o = self.outbox.as_ref();
        let outbox: Vec<(&str, String)> = vec![
            ("OUTBOX_DATABASE_URL", o.map(|o| outbox_mask(&o.database_url)).unwrap_or_default()),
            ("OUTBOX_TABLE", o.map(|o| o.table.clone()).unwrap_or_default()),
            ("OUTBOX_STREAM", o.map(|o| o.stream_key.clone()).unwrap_or_default()),
            ("OUTBOX_MAX_LEN", o.map(|o| o.max_len.to_string()).unwrap_or_default()),
            ("OUTBOX_EXPIRE_TIME", o.map(|o| d(o.expire)).unwrap_or_default()),
            ("OUTBOX_BATCH_SIZE", o.map(|o| o.batch_size.to_string()).unwrap_or_default()),
            ("OUTBOX_POLL_INTERVAL", o.map(|o| d(o.poll_interval)).unwrap_or_default()),
            ("OUTBOX_KEEP", o.map(|o| o.keep.to_string()).unwrap_or_default()),
            ("OUTBOX_PRODUCER", o.and_then(|o| o.producer.clone()).unwrap_or_default()),
        ];
        let h = self.ha.as_ref();
        let ha: Vec<(&str, String)> = vec![
            ("HA_GROUP", h.map(|h| h.group.clone()).unwrap_or_default()),
            ("HA_LEASE_TTL", h.map(|h| d(h.lease_ttl)).unwrap_or_default()),
            ("HA_REPLAY_WINDOW", h.map(|h| d(h.replay_window)).unwrap_or_default()),
            ("HA_REPLAY_MAX_BYTES", h.map(|h| h.replay_max_bytes.to_string()).unwrap_or_default()),
            ("HA_AGENT_ID", h.map(|h| h.agent_id.clone()).unwrap_or_default()),
        ];
        let mut out = String::new();
        for (name, value) in lines.into_iter().chain(outbox).chain(ha) {
            out.push_str(&format!("{name}={value}\n"));
        }
        for (name, why) in &self.ignored {
            out.push_str(&format!("# {name} is accepted and ignored: {why}\n"));
        }
        out
    }
}

/// `HTTP_INGRESS*` and `HTTP_STREAM`, `HTTP_MAX_LEN`, `HTTP_EXPIRE_TIME`.
fn http_ingress(r: &Reader<'_>) -> Result<HttpIngressConfig, ConfigError> {
    let enabled = r.get("HTTP_INGRESS", false, "true or false", parse_bool)?;
    let listen = match (r.raw("HTTP_INGRESS_BIND"), r.raw("HTTP_INGRESS_PORT")) {
        (None, None) => None,
        (bind, _) => {
            Some((bind.unwrap_or("0.0.0.0").trim().to_owned(), r.number("HTTP_INGRESS_PORT", 9877u16, 0, u16::MAX)?))
        }
    };
    let mut tokens = Vec::new();
    if let Some(list) = r.raw("HTTP_INGRESS_TOKENS") {
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, token) = item.split_once(':').unwrap_or(("", ""));
            let label_ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            if !label_ok || token.len() < 16 || tokens.iter().any(|t: &IngressToken| t.name == name) {
                return Err(ConfigError {
                    variable: "HTTP_INGRESS_TOKENS".into(),
                    value: "********".into(),
                    expected: "a comma-separated list of name:token, each name unique (letters, digits, _ - .) and each token at least 16 characters".into(),
                });
            }
            tokens.push(IngressToken { name: name.to_owned(), token: token.to_owned() });
        }
    }
    let tls = match (r.raw("HTTP_INGRESS_TLS_CERT"), r.raw("HTTP_INGRESS_TLS_KEY")) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            for (name, path) in [("HTTP_INGRESS_TLS_CERT", cert), ("HTTP_INGRESS_TLS_KEY", key)] {
                if let Err(e) = std::fs::File::open(path.trim()) {
                    return Err(r.error(name, &format!("a readable PEM file ({e})")));
                }
            }
            if listen.is_none() {
                return Err(r.error(
                    "HTTP_INGRESS_TLS_CERT",
                    "set together with HTTP_INGRESS_PORT: TLS is served on the ingress's own listener",
                ));
            }
            Some((cert.trim().to_owned(), key.trim().to_owned()))
        }
        (Some(_), None) => return Err(r.error("HTTP_INGRESS_TLS_KEY", "the PEM private key for HTTP_INGRESS_TLS_CERT")),
        (None, Some(_)) => {
            return Err(r.error("HTTP_INGRESS_TLS_CERT", "the PEM certificate chain for HTTP_INGRESS_TLS_KEY"))
        }
    };
    let list = |name: &str| -> Vec<String> {
        r.raw(name)
            .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let field = |name: &str, default: &str| r.string(name, default);
    let config = HttpIngressConfig {
        enabled,
        listen,
        tls,
        tokens,
        hmac_secret: r.raw("HTTP_INGRESS_HMAC_SECRET").map(str::to_owned),
        allow_anonymous: r.get("HTTP_INGRESS_ALLOW_ANONYMOUS", false, "true or false", parse_bool)?,
        max_body: r.get("HTTP_INGRESS_MAX_BODY", 1 << 20, "a size such as 1048576, 512KiB or 8MiB", |s| {
            parse_bytes(s).and_then(|b| usize::try_from(b).ok()).filter(|b| *b >= 1024)
        })?,
        max_batch: r.number("HTTP_INGRESS_MAX_BATCH", 1000usize, 1, 100_000)?,
        required_fields: list("HTTP_INGRESS_REQUIRED_FIELDS"),
        stream_key: r.string("HTTP_STREAM", "freeswitch:telephony:http-events"),
        max_len: r.number("HTTP_MAX_LEN", 1_000_000u64, 0, u64::MAX)?,
        expire: r.duration("HTTP_EXPIRE_TIME", "10m")?,
        name_field: field("HTTP_INGRESS_NAME_FIELD", "event_type"),
        order_field: field("HTTP_INGRESS_ORDER_FIELD", "call_id"),
        id_field: field("HTTP_INGRESS_ID_FIELD", "event_id"),
        idempotency_ttl: r.positive_duration("HTTP_INGRESS_IDEMPOTENCY_TTL", "24h")?,
        ack_timeout: r.positive_duration("HTTP_INGRESS_ACK_TIMEOUT", "5s")?,
        max_connections: r.number("HTTP_INGRESS_MAX_CONNECTIONS", 1024usize, 1, 65_536)?,
    };
    Ok(config)
}

/// `OUTBOX_*`: `None` unless `OUTBOX_DATABASE_URL` is set.
fn outbox(r: &Reader<'_>) -> Result<Option<OutboxConfig>, ConfigError> {
    let Some(url) = r.raw("OUTBOX_DATABASE_URL").map(str::trim) else { return Ok(None) };
    if let Err(e) = crate::source::outbox::connect::ConnectTarget::parse(url) {
        return Err(ConfigError {
            variable: "OUTBOX_DATABASE_URL".into(),
            value: outbox_mask(url),
            expected: format!("a PostgreSQL URL such as postgres://user:password@host:5432/db?sslmode=require ({e})"),
        });
    }
    let table = r.string("OUTBOX_TABLE", "eslstream_outbox");
    if crate::source::outbox::schema::TableName::parse(&table).is_none() {
        return Err(r.error(
            "OUTBOX_TABLE",
            "a table name such as eslstream_outbox or app.outbox (letters, digits, _; at most 63 each)",
        ));
    }
    let producer = r.raw("OUTBOX_PRODUCER").map(|p| p.trim().to_owned());
    if producer.as_ref().is_some_and(|p| p.len() > 200 || !p.bytes().all(|b| b.is_ascii_graphic())) {
        return Err(r.error("OUTBOX_PRODUCER", "1-200 visible ASCII characters"));
    }
    Ok(Some(OutboxConfig {
        database_url: url.to_owned(),
        table,
        stream_key: r.string("OUTBOX_STREAM", "freeswitch:telephony:outbox-events"),
        max_len: r.number("OUTBOX_MAX_LEN", 1_000_000u64, 0, u64::MAX)?,
        expire: r.duration("OUTBOX_EXPIRE_TIME", "10m")?,
        batch_size: r.number("OUTBOX_BATCH_SIZE", 500usize, 1, 10_000)?,
        poll_interval: r.positive_duration("OUTBOX_POLL_INTERVAL", "1s")?,
        keep: r.get("OUTBOX_KEEP", false, "true or false", parse_bool)?,
        producer,
    }))
}

/// `HA_*`: `None` unless `HA_GROUP` is set.
fn ha(r: &Reader<'_>) -> Result<Option<HaConfig>, ConfigError> {
    let Some(group) = r.raw("HA_GROUP").map(str::trim) else { return Ok(None) };
    let name_ok = |s: &str| {
        !s.is_empty() && s.len() <= 100 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
    };
    if !name_ok(group) {
        return Err(r.error("HA_GROUP", "a name for the switch's pair: 1-100 letters, digits, _ - . :"));
    }
    let lease_ttl = r.positive_duration("HA_LEASE_TTL", "2s")?;
    if lease_ttl < Duration::from_millis(500) {
        return Err(r.error("HA_LEASE_TTL", "500ms or more (it is renewed every quarter of it)"));
    }
    let agent_id = match r.raw("HA_AGENT_ID") {
        Some(id) if name_ok(id.trim()) => id.trim().to_owned(),
        Some(_) => return Err(r.error("HA_AGENT_ID", "1-100 letters, digits, _ - . :")),
        None => format!("{}:{}", hostname(), std::process::id()),
    };
    Ok(Some(HaConfig {
        group: group.to_owned(),
        lease_ttl,
        replay_window: r.positive_duration("HA_REPLAY_WINDOW", "10s")?,
        replay_max_bytes: r.get("HA_REPLAY_MAX_BYTES", 128 << 20, "a size such as 134217728 or 128MiB", |s| {
            parse_bytes(s).filter(|b| *b >= 1 << 20)
        })?,
        agent_id,
    }))
}

/// This host's name (for the default `HA_AGENT_ID`), its characters kept to the safe set.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname(2) writes at most `buf.len()` bytes into `buf`.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name: String = String::from_utf8_lossy(&buf[..if ok { len } else { 0 }])
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "_-.".contains(c) { c } else { '_' })
        .take(80)
        .collect();
    if name.is_empty() {
        "agent".into()
    } else {
        name
    }
}

/// Hides the password of an `OUTBOX_DATABASE_URL` (URL or libpq `key=value` form).
pub fn outbox_mask(url: &str) -> String {
    if url.contains("://") {
        return mask_url(url);
    }
    url.split_ascii_whitespace()
        .map(|t| if t.starts_with("password=") { "password=********" } else { t })
        .collect::<Vec<_>>()
        .join(" ")
}

fn mask(secret: &str) -> String {
    if secret.is_empty() {
        String::new()
    } else {
        "********".into()
    }
}

/// Hides the password part of a Redis URL.
pub fn mask_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split_once(':').map(|(u, _)| u).unwrap_or("");
            format!("{}{}:********{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl RedisConfig {
    /// One server at `url`, no TLS files, no `WAIT`.
    pub fn standalone(url: String, dial_timeout: Duration, write_timeout: Duration) -> RedisConfig {
        RedisConfig {
            url,
            dial_timeout,
            write_timeout,
            topology: RedisTopology::Standalone,
            tls: RedisTls::default(),
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
        }
    }

    /// One field of the Sentinel settings as text (empty when not in Sentinel mode).
    fn sentinel_field(&self, f: impl Fn(&[String], &str, Option<&str>) -> String) -> String {
        match &self.topology {
            RedisTopology::Sentinel { sentinels, master, password } => f(sentinels, master, password.as_deref()),
            _ => String::new(),
        }
    }
}

/// `REDIS_URL` (or `REDIS_REMOTE_*`), the timeouts, the topology, TLS and `WAIT`.
fn redis_config(r: &Reader<'_>) -> Result<RedisConfig, ConfigError> {
    let url = redis_url(r)?;
    let addresses = |name: &str| -> Result<Vec<String>, ConfigError> {
        let list: Vec<String> = r
            .raw(name)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if list.iter().any(|a| split_host_port(a).is_none()) {
            return Err(r.error(name, "a comma-separated list of host:port"));
        }
        Ok(list)
    };
    let sentinels = addresses("REDIS_SENTINELS")?;
    let seeds = addresses("REDIS_CLUSTER_NODES")?;
    let topology = match (sentinels.is_empty(), seeds.is_empty()) {
        (true, true) => {
            if r.raw("REDIS_SENTINEL_MASTER").is_some() {
                return Err(r.error("REDIS_SENTINELS", "the sentinels' host:port list for REDIS_SENTINEL_MASTER"));
            }
            RedisTopology::Standalone
        }
        (false, true) => {
            let Some(master) = r.raw("REDIS_SENTINEL_MASTER") else {
                return Err(r.error("REDIS_SENTINEL_MASTER", "the name the sentinels monitor the primary under"));
            };
            let password = r.vars.get("REDIS_SENTINEL_PASSWORD").filter(|p| !p.is_empty()).cloned();
            RedisTopology::Sentinel { sentinels, master: master.trim().to_owned(), password }
        }
        (true, false) => RedisTopology::Cluster { seeds },
        (false, false) => {
            return Err(r.error("REDIS_CLUSTER_NODES", "unset when REDIS_SENTINELS is set (one topology at a time)"))
        }
    };
    if matches!(topology, RedisTopology::Cluster { .. }) {
        use redis::IntoConnectionInfo;
        if url.as_str().into_connection_info().is_ok_and(|info| info.redis_settings().db() != 0) {
            return Err(r.error("REDIS_URL", "database 0 with REDIS_CLUSTER_NODES (a cluster has no other)"));
        }
    }
    let socket = url.starts_with("redis+unix://") || url.starts_with("unix://");
    if socket && topology != RedisTopology::Standalone {
        return Err(r.error("REDIS_URL", "a redis:// or rediss:// URL with Sentinel or Cluster (not a socket)"));
    }
    let pem = |name: &str| -> Result<Option<PemFile>, ConfigError> {
        let Some(path) = r.raw(name).map(str::trim) else { return Ok(None) };
        let pem = std::fs::read(path).map_err(|e| r.error(name, &format!("a readable PEM file ({e})")))?;
        if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(r.error(name, "a PEM file (no -----BEGIN line in it)"));
        }
        Ok(Some(PemFile { path: path.to_owned(), pem }))
    };
    let tls = RedisTls {
        ca_cert: pem("REDIS_TLS_CA_CERT")?,
        client: match (pem("REDIS_TLS_CERT")?, pem("REDIS_TLS_KEY")?) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert, key)),
            (Some(_), None) => return Err(r.error("REDIS_TLS_KEY", "the PEM private key for REDIS_TLS_CERT")),
            (None, Some(_)) => return Err(r.error("REDIS_TLS_CERT", "the PEM certificate chain for REDIS_TLS_KEY")),
        },
    };
    if tls != RedisTls::default() && !url.starts_with("rediss://") {
        let name = if tls.ca_cert.is_some() { "REDIS_TLS_CA_CERT" } else { "REDIS_TLS_CERT" };
        return Err(r.error(name, "set only with a rediss:// REDIS_URL (TLS)"));
    }
    Ok(RedisConfig {
        url,
        dial_timeout: r.positive_duration("REDIS_REMOTE_DIAL_TIMEOUT", "3s")?,
        write_timeout: r.positive_duration("REDIS_REMOTE_WRITE_TIMEOUT", "2s")?,
        topology,
        tls,
        wait_replicas: r.number("REDIS_WAIT_REPLICAS", 0u32, 0, 100)?,
        wait_timeout: r.positive_duration("REDIS_WAIT_TIMEOUT", "1s")?,
    })
}

/// `host:port` split into its parts (`[v6]:port` too).
pub fn split_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.trim().rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

fn redis_url(r: &Reader<'_>) -> Result<String, ConfigError> {
    if let Some(url) = r.raw("REDIS_URL") {
        let url = url.trim();
        if !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("redis+unix://")
            || url.starts_with("unix://"))
        {
            return Err(r.error("REDIS_URL", "a URL such as redis://[user:password@]host:6379/0 or rediss://..."));
        }
        if redis::Client::open(url).is_err() {
            return Err(r.error("REDIS_URL", "a valid redis:// or rediss:// URL"));
        }
        return Ok(url.to_owned());
    }
    let addr = r.string("REDIS_REMOTE_ADDR", "127.0.0.1:6379");
    if !addr.contains(':') || addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
        return Err(r.error("REDIS_REMOTE_ADDR", "host:port, such as 127.0.0.1:6379"));
    }
    let db: u32 = r.number("REDIS_REMOTE_DB", 0u32, 0, 1_000_000)?;
    let password = r.vars.get("REDIS_REMOTE_PASSWORD").map(|s| s.as_str()).unwrap_or("");
    let auth = if password.is_empty() { String::new() } else { format!(":{}@", percent_encode_userinfo(password)) };
    Ok(format!("redis://{auth}{addr}/{db}"))
}

fn percent_encode_userinfo(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn outbox_passwords_are_masked_in_both_forms() {
        assert_eq!(outbox_mask("postgres://u:secret@db/app"), "postgres://u:********@db/app");
        assert_eq!(outbox_mask("host=db password=secret"), "host=db password=********");
        let c = Config::from_vars(vars(&[("OUTBOX_DATABASE_URL", "postgres://u:secret@db/app")])).unwrap();
        assert!(c.describe().contains("OUTBOX_DATABASE_URL=postgres://u:********@db/app"));
        assert!(!format!("{:?}", c.outbox).contains("secret"));
        let bad = |pairs: &[(&str, &str)]| Config::from_vars(vars(pairs)).unwrap_err().variable;
        assert_eq!(bad(&[("OUTBOX_DATABASE_URL", "postgres://db/app?sslmode=maybe")]), "OUTBOX_DATABASE_URL");
        let url = ("OUTBOX_DATABASE_URL", "postgres://db/app");
        assert_eq!(bad(&[url, ("OUTBOX_TABLE", "a;b")]), "OUTBOX_TABLE");
        assert_eq!(bad(&[url, ("OUTBOX_BATCH_SIZE", "0")]), "OUTBOX_BATCH_SIZE");
        assert_eq!(bad(&[url, ("OUTBOX_POLL_INTERVAL", "0s")]), "OUTBOX_POLL_INTERVAL");
        assert!(Config::from_vars(vars(&[("OUTBOX_TABLE", "a;b")])).unwrap().outbox.is_none());
    }

    #[test]
    fn http_ingress_is_secure_by_default() {
        let err = |pairs: &[(&str, &str)]| Config::from_vars(vars(pairs)).unwrap_err().variable;
        // Anyone could post on 0.0.0.0 without a token or a secret: refused, naming the switch.
        assert_eq!(err(&[("HTTP_INGRESS", "true")]), "HTTP_INGRESS_ALLOW_ANONYMOUS");
        assert_eq!(err(&[("HTTP_INGRESS", "true"), ("HTTP_INGRESS_BIND", "10.0.0.1")]), "HTTP_INGRESS_ALLOW_ANONYMOUS");
        for ok in [
            vec![("HTTP_INGRESS", "true"), ("HEALTH_BIND", "127.0.0.1")],
            vec![("HTTP_INGRESS", "true"), ("HTTP_INGRESS_ALLOW_ANONYMOUS", "true")],
            vec![("HTTP_INGRESS", "true"), ("HTTP_INGRESS_HMAC_SECRET", "s")],
            vec![("HTTP_INGRESS", "true"), ("HTTP_INGRESS_TOKENS", "crm:0123456789abcdef, billing:fedcba9876543210")],
        ] {
            Config::from_vars(vars(&ok)).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        // Tokens: name:token, names unique, tokens not short; and never shown.
        for bad in
            ["crm", "crm:short", ":0123456789abcdef", "a:0123456789abcdef,a:0123456789abcdeg", "b c:0123456789abcdef"]
        {
            let e = Config::from_vars(vars(&[("HTTP_INGRESS_TOKENS", bad)])).unwrap_err();
            assert_eq!(e.variable, "HTTP_INGRESS_TOKENS", "{bad}");
            assert!(!e.to_string().contains("0123456789abcdef"), "the token is masked: {e}");
        }
        let c = Config::from_vars(vars(&[
            ("HTTP_INGRESS_TOKENS", "crm:0123456789abcdef"),
            ("HTTP_INGRESS_HMAC_SECRET", "s3"),
        ]))
        .unwrap();
        let shown = c.describe();
        assert!(shown.contains("HTTP_INGRESS_TOKENS=crm:********") && !shown.contains("0123456789abcdef"), "{shown}");
        assert!(shown.contains("HTTP_INGRESS_HMAC_SECRET=********"), "{shown}");
        assert_eq!(err(&[("HTTP_INGRESS_TLS_CERT", "/x.pem")]), "HTTP_INGRESS_TLS_KEY");
        assert_eq!(
            err(&[("HTTP_INGRESS_TLS_CERT", "/nope.pem"), ("HTTP_INGRESS_TLS_KEY", "/nope.key")]),
            "HTTP_INGRESS_TLS_CERT"
        );
    }

    #[test]
    fn redis_topologies_wait_and_tls() {
        let c = Config::from_vars(vars(&[])).unwrap();
        assert_eq!((c.redis.topology.clone(), c.redis.wait_replicas), (RedisTopology::Standalone, 0));
        assert_eq!(c.redis.wait_timeout, Duration::from_secs(1));
        let c = Config::from_vars(vars(&[
            ("REDIS_SENTINELS", "10.0.0.1:26379, 10.0.0.2:26379"),
            ("REDIS_SENTINEL_MASTER", "events"),
            ("REDIS_SENTINEL_PASSWORD", "s3cret"),
            ("REDIS_WAIT_REPLICAS", "1"),
            ("REDIS_WAIT_TIMEOUT", "250ms"),
        ]))
        .unwrap();
        assert_eq!(
            c.redis.topology,
            RedisTopology::Sentinel {
                sentinels: vec!["10.0.0.1:26379".into(), "10.0.0.2:26379".into()],
                master: "events".into(),
                password: Some("s3cret".into()),
            }
        );
        assert_eq!((c.redis.wait_replicas, c.redis.wait_timeout), (1, Duration::from_millis(250)));
        let shown = c.describe();
        assert!(shown.contains("REDIS_SENTINEL_PASSWORD=********") && !shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("REDIS_SENTINELS=10.0.0.1:26379,10.0.0.2:26379"), "{shown}");
        let c = Config::from_vars(vars(&[("REDIS_CLUSTER_NODES", "127.0.0.1:7000,127.0.0.1:7001")])).unwrap();
        assert_eq!(
            c.redis.topology,
            RedisTopology::Cluster { seeds: vec!["127.0.0.1:7000".into(), "127.0.0.1:7001".into()] }
        );
        let err = |pairs: &[(&str, &str)]| Config::from_vars(vars(pairs)).unwrap_err().variable;
        assert_eq!(err(&[("REDIS_SENTINELS", "a:1")]), "REDIS_SENTINEL_MASTER");
        assert_eq!(err(&[("REDIS_SENTINEL_MASTER", "m")]), "REDIS_SENTINELS");
        assert_eq!(err(&[("REDIS_CLUSTER_NODES", "nohost")]), "REDIS_CLUSTER_NODES");
        assert_eq!(
            err(&[("REDIS_CLUSTER_NODES", "a:1"), ("REDIS_SENTINELS", "b:2"), ("REDIS_SENTINEL_MASTER", "m")]),
            "REDIS_CLUSTER_NODES"
        );
        assert_eq!(err(&[("REDIS_WAIT_REPLICAS", "-1")]), "REDIS_WAIT_REPLICAS");
        assert_eq!(err(&[("REDIS_CLUSTER_NODES", "a:1"), ("REDIS_URL", "redis://h:1/3")]), "REDIS_URL");
        // TLS files: named when missing or not PEM, and only with rediss://.
        let tls = [("REDIS_URL", "rediss://127.0.0.1:6380/")];
        let missing = [tls[0], ("REDIS_TLS_CA_CERT", "/nonexistent/ca.pem")];
        let e = Config::from_vars(vars(&missing)).unwrap_err();
        assert_eq!(e.variable, "REDIS_TLS_CA_CERT");
        assert!(e.to_string().contains("readable PEM file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n").unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let path = pem.to_str().unwrap();
        assert_eq!(err(&[tls[0], ("REDIS_TLS_CA_CERT", junk.to_str().unwrap())]), "REDIS_TLS_CA_CERT");
        assert_eq!(err(&[("REDIS_TLS_CA_CERT", path)]), "REDIS_TLS_CA_CERT", "plain redis:// has no TLS");
        assert_eq!(err(&[tls[0], ("REDIS_TLS_CERT", path)]), "REDIS_TLS_KEY");
        let c = Config::from_vars(vars(&[
            tls[0],
            ("REDIS_TLS_CA_CERT", path),
            ("REDIS_TLS_CERT", path),
            ("REDIS_TLS_KEY", path),
        ]))
        .unwrap();
        assert_eq!(c.redis.tls.ca_cert.as_ref().map(|f| f.path.as_str()), Some(path));
        assert!(c.describe().contains(&format!("REDIS_TLS_KEY={path}")));
    }

    #[test]
    fn durations_take_the_reference_suffixes() {
        assert_eq!(parse_duration("25ms"), Some(Duration::from_millis(25)));
        assert_eq!(parse_duration("3s"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("3"), None);
        assert_eq!(parse_duration("fast"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_bytes("1GiB"), Some(1 << 30));
        assert_eq!(parse_bytes("512MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("lots"), None);
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_vars(HashMap::new()).unwrap();
        assert_eq!(c.redis.url, "redis://127.0.0.1:6379/0");
        assert_eq!(c.streams.events_key, "freeswitch:telephony:events");
        assert_eq!(c.health_port, 9876);
        assert_eq!(c.writer.buffer_max_bytes, 64 << 20);
        assert!(c.ignored.is_empty());
    }

    #[test]
    fn reference_env_is_accepted() {
        let c = Config::from_vars(vars(&[
            ("REDIS_REMOTE_ADDR", "redis.example.com:6380"),
            ("REDIS_REMOTE_PASSWORD", "p@ss:word"),
            ("REDIS_REMOTE_DB", "2"),
            ("REDIS_REMOTE_POOL_SIZE", "100"),
            ("WRITER_PIPELINE_TIMEOUT", "25ms"),
            ("EVENTS_TO_PUSH", "CHANNEL_ANSWER, CHANNEL_HANGUP ,custom::sofia::register"),
        ]))
        .unwrap();
        assert_eq!(c.redis.url, "redis://:p%40ss%3Aword@redis.example.com:6380/2");
        assert_eq!(c.events_to_push, vec!["CHANNEL_ANSWER", "CHANNEL_HANGUP", "CUSTOM::sofia::register"]);
        assert_eq!(c.ignored.len(), 1);
        let only_push = Config::from_vars(vars(&[("EVENTS_TO_PUBLISH", ""), ("EVENTS_TO_PUSH", "ALL")])).unwrap();
        assert!(only_push.events_to_publish.is_empty());
        assert!(c.describe().contains("REDIS_URL=redis://:********@redis.example.com:6380/2"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = Config::from_vars(vars(&[("WRITER_WORKERS", "many")])).unwrap_err();
        assert_eq!(e.variable, "WRITER_WORKERS");
        assert_eq!(e.value, "many");
        assert!(e.to_string().contains("whole number"));
        let e = Config::from_vars(vars(&[("ESL_RECONNECT_DELAY", "3")])).unwrap_err();
        assert_eq!(e.variable, "ESL_RECONNECT_DELAY");
        let e = Config::from_vars(vars(&[("REDIS_URL", "http://x")])).unwrap_err();
        assert_eq!(e.variable, "REDIS_URL");
        let e =
            Config::from_vars(vars(&[("ESL_RECONNECT_DELAY", "20s"), ("ESL_MAX_RECONNECT_DELAY", "10s")])).unwrap_err();
        assert_eq!(e.variable, "ESL_MAX_RECONNECT_DELAY");
        let e = Config::from_vars(vars(&[("BUFFER_MAX_BYTES", "lots")])).unwrap_err();
        assert_eq!(e.variable, "BUFFER_MAX_BYTES");
        let c = Config::from_vars(vars(&[("BUFFER_MAX_BYTES", "256MiB")])).unwrap();
        assert_eq!(c.writer.buffer_max_bytes, 256 << 20);
    }
}
