//! Configuration: every variable of the contract, read from the environment (and `.env`),
//! validated once at start-up into plain typed values.
//!
//! [`vars`] declares each variable once (name, default, masking, meaning); [`read`] reads one
//! through its declaration and records its effective value for `check-config`; `build` makes
//! the typed sections below and keeps the rules that tie variables together.
//!
//! Neither `envy` nor clap's `env` feature: both read the process environment (clap) or report
//! a bad value without saying what was expected (envy), neither carries a description to
//! derive the README and `.env.example` from, and tests build configurations from maps in
//! parallel. A bad value is a [`ConfigError`] naming the variable, the value (masked if
//! secret) and what was expected, which `main` turns into exit code 2.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

mod build;
mod read;
pub mod vars;

pub use read::parse_duration;
#[cfg(test)]
pub(crate) use read::parse_event_list;
pub(crate) use read::{mask_url, parse_bool, split_host_port};

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
#[derive(Clone)]
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
    /// `ESL_EVENT_FORMAT`: what the reader subscribes in (`event json` or `event plain`).
    pub event_format: crate::esl::event::EventFormat,
}

impl fmt::Debug for EslConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EslConfig")
            .field("enabled", &self.enabled)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("password", &"********")
            .finish_non_exhaustive()
    }
}

/// Where and how to reach Redis.
#[derive(Clone)]
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

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let topology = match &self.topology {
            RedisTopology::Standalone => "standalone".to_owned(),
            RedisTopology::Sentinel { sentinels, master, .. } => {
                format!("sentinel {master} via {}", sentinels.join(","))
            }
            RedisTopology::Cluster { seeds } => format!("cluster via {}", seeds.join(",")),
        };
        f.debug_struct("RedisConfig")
            .field("url", &mask_url(&self.url))
            .field("topology", &topology)
            .field("wait_replicas", &self.wait_replicas)
            .finish_non_exhaustive()
    }
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
    pub(crate) fn events_target(&self) -> std::sync::Arc<crate::envelope::StreamTarget> {
        crate::envelope::StreamTarget::new(&self.events_key, self.events_max_len, "events")
    }

    /// `STREAM_JOBS`, as events are routed to it.
    pub(crate) fn jobs_target(&self) -> std::sync::Arc<crate::envelope::StreamTarget> {
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
#[derive(Clone)]
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

impl fmt::Debug for HttpIngressConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpIngressConfig")
            .field("enabled", &self.enabled)
            .field("listen", &self.listen)
            .field("tokens", &self.tokens)
            .field("hmac_secret", &self.hmac_secret.as_ref().map(|_| "********"))
            .field("stream_key", &self.stream_key)
            .finish_non_exhaustive()
    }
}

impl HttpIngressConfig {
    /// `HTTP_STREAM`, as events are routed to it.
    pub(crate) fn stream_target(&self) -> std::sync::Arc<crate::envelope::StreamTarget> {
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
            .field("database_url", &mask_url(&self.database_url))
            .field("table", &self.table)
            .field("stream_key", &self.stream_key)
            .finish_non_exhaustive()
    }
}

impl OutboxConfig {
    /// `OUTBOX_STREAM`, as rows without a `stream` of their own are routed to it.
    pub(crate) fn stream_target(&self) -> std::sync::Arc<crate::envelope::StreamTarget> {
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

/// The whole, validated configuration. Its `Debug` is the effective values as `check-config`
/// shows them (secrets masked); so are the sections' that hold a secret.
#[derive(Clone)]
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
    /// Each variable read, as `check-config` shows it (secrets masked).
    shown: BTreeMap<&'static str, String>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.shown.iter()).finish()
    }
}

impl Config {
    /// Whether this agent reads `source`.
    pub fn reads(&self, source: crate::envelope::Source) -> bool {
        match source {
            crate::envelope::Source::Esl => self.esl.enabled,
            crate::envelope::Source::Http => self.http_ingress.enabled,
            crate::envelope::Source::Outbox => self.outbox.is_some(),
        }
    }

    /// The effective configuration as `NAME=value` lines, secrets masked: every declared
    /// variable (empty where its section is off), then the ignored ones that were set.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for var in vars::all().filter(|v| v.show != vars::Show::Ignored) {
            let value = self.shown.get(var.name).map(String::as_str).unwrap_or_default();
            out.push_str(&format!("{}={value}\n", var.name));
        }
        for (name, why) in &self.ignored {
            out.push_str(&format!("# {name} is accepted and ignored: {why}\n"));
        }
        out
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
}

#[cfg(test)]
mod tests {
    use super::read::parse_bytes;
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn outbox_passwords_are_masked_in_both_forms() {
        assert_eq!(mask_url("postgres://u:secret@db/app"), "postgres://u:********@db/app");
        assert_eq!(mask_url("host=db password=secret"), "host=db password=********");
        let c = Config::from_vars(vars(&[("OUTBOX_DATABASE_URL", "postgres://u:secret@db/app")])).unwrap();
        assert!(c.describe().contains("OUTBOX_DATABASE_URL=postgres://u:********@db/app"));
        assert!(!format!("{:?}", c.outbox).contains("secret"));
        assert!(!format!("{c:?}").contains("u:secret"), "{c:?}");
        let c = Config::from_vars(vars(&[
            ("ESL_PASSWORD", "topsecret"),
            ("REDIS_URL", "redis://:hunter2@h:1/0"),
            ("HTTP_INGRESS_HMAC_SECRET", "hmac-secret"),
            ("HTTP_TOKEN", "admin-token"),
        ]))
        .unwrap();
        for shown in [format!("{c:?}"), format!("{:?} {:?} {:?}", c.esl, c.redis, c.http_ingress)] {
            for secret in ["topsecret", "hunter2", "hmac-secret", "admin-token"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
        }
        let bad = |pairs: &[(&str, &str)]| Config::from_vars(vars(pairs)).unwrap_err().variable;
        let url = ("OUTBOX_DATABASE_URL", "postgres://db/app");
        assert_eq!(bad(&[url, ("OUTBOX_BATCH_SIZE", "0")]), "OUTBOX_BATCH_SIZE");
        assert_eq!(bad(&[url, ("OUTBOX_POLL_INTERVAL", "0s")]), "OUTBOX_POLL_INTERVAL");
        assert!(Config::from_vars(vars(&[("OUTBOX_TABLE", "a;b")])).unwrap().outbox.is_none());
        // The URL's and the table name's forms are the outbox's to check: `app::load_config`.
    }

    #[test]
    fn every_declared_default_parses_and_every_variable_is_shown() {
        let c = Config::from_vars(vars(&[
            ("OUTBOX_DATABASE_URL", "postgres://db/app"),
            ("HA_GROUP", "switch-1"),
            ("HTTP_INGRESS_BIND", "127.0.0.1"),
            ("REDIS_SENTINELS", "127.0.0.1:26379"),
            ("REDIS_SENTINEL_MASTER", "events"),
        ]))
        .unwrap();
        let shown = c.describe();
        for var in vars::all().filter(|v| v.show != vars::Show::Ignored) {
            let line = shown.lines().find(|l| l.split('=').next() == Some(var.name));
            assert!(line.is_some(), "{} is not shown: {shown}", var.name);
        }
        for var in vars::all().filter(|v| !v.default.is_empty()) {
            assert!(c.shown.contains_key(var.name), "{} (default {:?}) was not read", var.name, var.default);
        }
        // A secret's bad value is not repeated in the error.
        let e = Config::from_vars(vars(&[("REDIS_URL", "http://u:hunter2@x")])).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
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
