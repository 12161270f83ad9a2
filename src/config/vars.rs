//! Every variable of the contract, declared once: its name, its default, how `check-config`
//! shows it (secrets masked) and what it means. The reading code names these declarations; the
//! README's table and `.env.example` are generated from them (`tests/ops.rs` keeps both in
//! step).

/// How a variable's value may be shown (`check-config`, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// As it is.
    Plain,
    /// Never: `********` when set.
    Secret,
    /// A URL whose password is masked (Redis or PostgreSQL; libpq `password=` too).
    Url,
    /// `name:token` pairs: the names shown, the tokens masked.
    Tokens,
    /// Accepted for compatibility with the reference service and ignored; the help says why.
    Ignored,
}

/// One environment variable.
#[derive(Debug, Clone, Copy)]
pub struct Var {
    pub name: &'static str,
    /// The value used when it is unset or empty, as it would be written (`""`: none).
    pub default: &'static str,
    /// The default as documented, where it is not a plain value (`built from REDIS_REMOTE_*`).
    pub documented_default: Option<&'static str>,
    pub show: Show,
    /// What it means, for the README's table and `.env.example`.
    pub help: &'static str,
}

/// Variables under one heading of `.env.example`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Section {
    pub title: &'static str,
    pub vars: &'static [Var],
}

macro_rules! declare {
    ($( $title:literal { $( $name:ident = $default:literal $(($doc:literal))?, $show:ident, $help:literal; )* } )*) => {
        $( $(
            #[doc = $help]
            pub const $name: Var = Var {
                name: stringify!($name),
                default: $default,
                documented_default: declare!(@doc $($doc)?),
                show: Show::$show,
                help: $help,
            };
        )* )*
        /// Every variable, in `.env.example`'s order.
        pub(crate) const SECTIONS: &[Section] = &[ $( Section { title: $title, vars: &[ $( $name ),* ] } ),* ];
    };
    (@doc) => { None };
    (@doc $doc:literal) => { Some($doc) };
}

declare! {
    "FreeSWITCH event socket" {
        ESL_ENABLED = "true", Plain, "Read the event socket at all: false for an agent fed only by HTTP ingress or the outbox (then /health does not count the event socket against it).";
        ESL_HOST = "127.0.0.1", Plain, "Host of mod_event_socket (127.0.0.1 when running beside FreeSWITCH).";
        ESL_PORT = "8021", Plain, "Port of mod_event_socket.";
        ESL_PASSWORD = "ClueCon", Secret, "Event socket password (event_socket.conf.xml).";
        ESL_RECONNECT_DELAY = "1s", Plain, "Reconnect backoff: starts here and doubles after each failure.";
        ESL_MAX_RECONNECT_DELAY = "10s", Plain, "The reconnect backoff never goes above this.";
        ESL_HEALTH_CHECK_TIMEOUT = "3s", Plain, "Handshake timeout, and how long an `api status` probe of a silent socket may take.";
        ESL_SILENCE_TIMEOUT = "25s", Plain, "No byte for this long: probe the socket with `api status` (FreeSWITCH sends HEARTBEAT every 20s).";
        ESL_CONNECT_TIMEOUT = "3s", Plain, "TCP connect timeout.";
        ESL_EVENT_FORMAT = "json", Plain, "The format the agent subscribes in. json: the switch's own JSON, every value exact, written to the stream as it came (an event with a repeated header name is rewritten, the first occurrence kept). plain: FreeSWITCH's plain format leaves an existing %XX in a value unencoded, so a value that holds a literal %2B or %20 arrives like an encoded + or space and is stored decoded: it cannot carry every value.";
    }
    "Redis" {
        REDIS_URL = "" ("built from REDIS_REMOTE_*"), Url, "redis://[user:password@]host:port/db, rediss:// for TLS. Overrides REDIS_REMOTE_ADDR, REDIS_REMOTE_PASSWORD and REDIS_REMOTE_DB.";
        REDIS_REMOTE_ADDR = "127.0.0.1:6379", Plain, "Used when REDIS_URL is unset: host:port.";
        REDIS_REMOTE_PASSWORD = "", Secret, "Used when REDIS_URL is unset: the password (empty = none).";
        REDIS_REMOTE_DB = "0", Plain, "Used when REDIS_URL is unset: the database number.";
        REDIS_REMOTE_DIAL_TIMEOUT = "3s", Plain, "Connect timeout.";
        REDIS_REMOTE_WRITE_TIMEOUT = "2s", Plain, "Per-command read/write timeout (writes, the health PING, the trimmer).";
        REDIS_REMOTE_POOL_SIZE = "", Ignored, "each writer owns one pipelined connection (WRITER_WORKERS)";
        REDIS_REMOTE_MIN_IDLE_CONNS = "", Ignored, "each writer owns one pipelined connection (WRITER_WORKERS)";
        REDIS_REMOTE_POOL_TIMEOUT = "", Ignored, "there is no connection pool to wait for";
        REDIS_REMOTE_MAX_RETRIES = "", Ignored, "writes are retried by WRITER_RETRY_TTL / WRITER_MAX_RETRIES, then spooled";
        REDIS_SENTINELS = "", Plain, "Sentinel: host:port of each sentinel, comma-separated. The primary is the one they name for REDIS_SENTINEL_MASTER (checked with ROLE); REDIS_URL then only gives credentials, database and scheme.";
        REDIS_SENTINEL_MASTER = "", Plain, "The name the sentinels monitor the primary under.";
        REDIS_SENTINEL_PASSWORD = "", Secret, "The sentinels' own password (empty = none).";
        REDIS_CLUSTER_NODES = "", Plain, "Redis Cluster: host:port of some nodes (seeds), comma-separated. Credentials and TLS come from REDIS_URL and apply to every node; each stream is written to the primary of its slot.";
        REDIS_WAIT_REPLICAS = "0", Plain, "Replicas that must confirm each batch (WAIT) before it counts as written; 0 = the primary's reply is enough.";
        REDIS_WAIT_TIMEOUT = "1s", Plain, "A batch not confirmed by REDIS_WAIT_REPLICAS within this is retried (no duplicate).";
        REDIS_TLS_CA_CERT = "", Plain, "rediss:// only: PEM bundle of the CAs trusted instead of the built-in roots. Read at start-up (a missing file: exit 2).";
        REDIS_TLS_CERT = "", Plain, "rediss:// only: client certificate chain (PEM) for mutual TLS.";
        REDIS_TLS_KEY = "", Plain, "rediss:// only: the client certificate's private key (PEM).";
    }
    "Streams" {
        STREAM_EVENTS = "freeswitch:telephony:events", Plain, "The stream EVENTS_TO_PUSH events go to.";
        STREAM_JOBS = "freeswitch:telephony:background-jobs", Plain, "The stream EVENTS_TO_PUBLISH events go to.";
        STREAM_ENTRY_FORMAT = "full", Plain, "full = `event` JSON plus event_name, unique_id, core_uuid, event_sequence; reference = `event` only.";
        EVENTS_MAX_LEN = "1000000", Plain, "MAXLEN ~ on every XADD to STREAM_EVENTS (0 = no cap).";
        JOBS_MAX_LEN = "100000", Plain, "MAXLEN ~ on every XADD to STREAM_JOBS (0 = no cap).";
        EVENTS_EXPIRE_TIME = "10m", Plain, "The trimmer removes STREAM_EVENTS entries older than this, by Redis TIME (0 = keep all).";
        JOBS_EXPIRE_TIME = "10m", Plain, "The trimmer removes STREAM_JOBS entries older than this (0 = keep all).";
        TRIM_INTERVAL = "10s", Plain, "How often the trimmer runs (XTRIM MINID ~).";
    }
    "Events" {
        EVENTS_TO_PUBLISH = "BACKGROUND_JOB,CHANNEL_EXECUTE,CHANNEL_EXECUTE_COMPLETE,DTMF,DETECTED_SPEECH", Plain, "Written to STREAM_JOBS (BACKGROUND_JOB only when Event-Calling-Function is api_exec). Set but empty: none.";
        EVENTS_TO_PUSH = "CHANNEL_ANSWER,CHANNEL_HANGUP,DTMF,CUSTOM", Plain, "Written to STREAM_EVENTS. ALL allowed; CUSTOM = every subclass, CUSTOM::sofia::register = one. Set but empty: none.";
    }
    "Writers and buffering" {
        WRITER_WORKERS = "4", Plain, "Lanes and writer threads, one Redis connection each; a call's events always share a lane. On a 2-core host shared with Redis, 2 measured better tails at 20,000 events/s (docs/performance.md).";
        WRITER_BATCH_SIZE = "256", Plain, "Most entries per pipelined write; a batch is sent as soon as the lane is momentarily empty.";
        WRITER_PIPELINE_TIMEOUT = "1ms", Plain, "Longest a batch keeps collecting while events keep arriving.";
        WRITER_RETRY_PAUSE_AFTER = "100ms", Plain, "Retry backoff start.";
        WRITER_MAX_RETRIES = "10", Plain, "Attempts before a failing batch spills to the spool.";
        WRITER_RETRY_TTL = "5s", Plain, "Time before a failing batch spills to the spool.";
        WRITER_WRITE_NOW = "true", Plain, "When the reader waited >= 250 us for an event (under ~4,000 events/s) and its lane is idle, it writes the event itself (one attempt, 100 ms reply timeout, a failure goes to the writer's retries) instead of waking the lane's writer: half the CPU per event at low rates.";
        WRITER_RETRY_QUEUE_SIZE = "", Ignored, "a failing batch is retried in place and then spooled to disk; BUFFER_SIZE bounds memory";
        BUFFER_SIZE = "50000", Plain, "Events held in memory across all lanes before the spool takes over.";
        BUFFER_MAX_BYTES = "64MiB", Plain, "Bytes of events held in memory across all lanes (whichever of the two bounds comes first).";
        SPOOL_DIR = "./spool", Plain, "The durable spool, and the dead letters under SPOOL_DIR/dlq.";
        SPOOL_MAX_BYTES = "1GiB", Plain, "The spool's size limit (0 = no spool).";
        SHUTDOWN_TIMEOUT = "10s", Plain, "On SIGTERM/SIGINT, drain to Redis for this long, then hand what is left to the spool.";
    }
    "Reader" {
        READER_BLOCK_TIME = "", Ignored, "the socket reader never blocks on the pipeline";
        READER_PROCESSING_WORKERS = "", Ignored, "events are decoded by the writer threads";
        READER_WORKERS = "", Ignored, "events are decoded by the writer threads";
    }
    "Latency warnings (rate-limited log lines naming the event)" {
        READER_MAX_LATENCY = "300ms", Plain, "Event timestamp to parsed.";
        WRITER_MAX_LATENCY = "300ms", Plain, "Parsed to acknowledged by Redis.";
        TOTAL_MAX_LATENCY = "500ms", Plain, "Event timestamp to acknowledged by Redis.";
    }
    "Health, HTTP and metrics" {
        HEALTH_BIND = "0.0.0.0", Plain, "Address of /health and /metrics (and /dlq).";
        HEALTH_PORT = "9876", Plain, "Port of /health and /metrics (and /dlq).";
        HEALTH_CHECK_INTERVAL = "5s", Plain, "How often the health monitor checks ESL, Redis (PING), queue, spool and drops.";
        HEALTH_MAX_RETRIES = "3", Plain, "Failed checks in a row before ESL (or Redis with a full spool) counts as down: unhealthy.";
        HTTP_TOKEN = "", Secret, "Bearer token for the /dlq endpoints (empty = /dlq answers loopback clients only, 403 elsewhere).";
        METRICS_PRINT_INTERVAL = "60s", Plain, "Summary log line (rate, totals, p99 latency, queue and spool depth) every this long (0 = off).";
        METRICS_UPDATE_INTERVAL = "", Ignored, "metrics are updated as events flow";
    }
    "Logs" {
        LOG_LEVEL = "info", Plain, "error, warn, info, debug, trace, or a tracing filter such as info,eslstream::sink=debug.";
        LOG_FORMAT = "text", Plain, "text, or json for one JSON object per line.";
    }
    "HTTP ingress (POST /events)" {
        HTTP_INGRESS = "false", Plain, "Accept events over HTTP: POST /events answers 202 only once every event is written to Redis, known as a duplicate, or fsynced to the spool.";
        HTTP_INGRESS_BIND = "" ("0.0.0.0 when HTTP_INGRESS_PORT is set"), Plain, "The ingress's own listener address (else the admin one, HEALTH_BIND:HEALTH_PORT); set it or HTTP_INGRESS_PORT to use it.";
        HTTP_INGRESS_PORT = "" ("9877 when HTTP_INGRESS_BIND is set"), Plain, "The ingress's own listener port.";
        HTTP_INGRESS_TLS_CERT = "", Plain, "TLS on the ingress's own listener: PEM certificate chain.";
        HTTP_INGRESS_TLS_KEY = "", Plain, "TLS on the ingress's own listener: PEM private key.";
        HTTP_INGRESS_TOKENS = "", Tokens, "Producers and their bearer tokens, name:token,name:token (tokens of 16 characters or more).";
        HTTP_INGRESS_HMAC_SECRET = "", Secret, "Webhook signatures: X-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>.";
        HTTP_INGRESS_ALLOW_ANONYMOUS = "false", Plain, "With no token and no secret, ingress refuses to start on a non-loopback address unless true.";
        HTTP_INGRESS_MAX_BODY = "1048576", Plain, "Body limit after decompression.";
        HTTP_INGRESS_MAX_BATCH = "1000", Plain, "Events per request.";
        HTTP_INGRESS_REQUIRED_FIELDS = "", Plain, "Fields every event must have, non-empty (comma-separated).";
        HTTP_INGRESS_NAME_FIELD = "event_type", Plain, "The field that gives the entry's event_name.";
        HTTP_INGRESS_ORDER_FIELD = "call_id", Plain, "The field that gives the entry's ordering key (unique_id).";
        HTTP_INGRESS_ID_FIELD = "event_id", Plain, "The field that gives the event's id.";
        HTTP_INGRESS_IDEMPOTENCY_TTL = "24h", Plain, "How long an event id is remembered (a re-sent id within it is a duplicate).";
        HTTP_INGRESS_ACK_TIMEOUT = "5s", Plain, "Not durable within this: 503 with Retry-After (the events are still written once).";
        HTTP_INGRESS_MAX_CONNECTIONS = "1024", Plain, "Open connections the ingress listener accepts.";
        HTTP_STREAM = "freeswitch:telephony:http-events", Plain, "The stream posted events go to.";
        HTTP_MAX_LEN = "1000000", Plain, "Its MAXLEN ~ cap (0 = none).";
        HTTP_EXPIRE_TIME = "10m", Plain, "Its retention for the trimmer.";
    }
    "PostgreSQL outbox (rows an application commits, relayed to a stream)" {
        OUTBOX_DATABASE_URL = "" ("off"), Url, "Setting it enables the outbox (libpq style; TLS per sslmode: disable, prefer, require, verify-ca, verify-full; sslrootcert=<PEM bundle>), for example postgres://eslstream:password@db.example:5432/app?sslmode=verify-full. Create the table with `eslstream outbox init` (or `--print` for the SQL).";
        OUTBOX_TABLE = "eslstream_outbox", Plain, "The table: table or schema.table.";
        OUTBOX_STREAM = "freeswitch:telephony:outbox-events", Plain, "The stream for rows whose `stream` is null.";
        OUTBOX_MAX_LEN = "1000000", Plain, "Its MAXLEN ~ cap (0 = none).";
        OUTBOX_EXPIRE_TIME = "10m", Plain, "Its retention for the trimmer.";
        OUTBOX_BATCH_SIZE = "500", Plain, "Rows per fetch.";
        OUTBOX_POLL_INTERVAL = "1s", Plain, "How often to look when no NOTIFY arrives.";
        OUTBOX_KEEP = "false", Plain, "true: set published_at on relayed rows instead of deleting them.";
        OUTBOX_PRODUCER = "" ("<database>.<schema>.<table>"), Plain, "The idempotency keys' producer; keep it stable.";
    }
    "Hot-standby pair (two agents beside one switch; one writes)" {
        HA_GROUP = "" ("off"), Plain, "One name per switch, the same on both agents of the pair; setting it enables pair mode.";
        HA_LEASE_TTL = "2s", Plain, "The active's lease in Redis, renewed every quarter of it; a crashed active is replaced after at most this long.";
        HA_REPLAY_WINDOW = "10s", Plain, "What a standby keeps to replay at takeover: this long of events.";
        HA_REPLAY_MAX_BYTES = "128MiB", Plain, "...and at most this many bytes (10 s at 5,000 events/s of 2.5 KB is about 125 MB).";
        HA_AGENT_ID = "" ("<hostname>:<pid>"), Plain, "This agent's name as lease holder.";
    }
}

/// Every variable, in order.
pub fn all() -> impl Iterator<Item = &'static Var> {
    SECTIONS.iter().flat_map(|s| s.vars.iter())
}

/// The README's configuration table: one row per variable (the ignored ones listed after it).
pub fn readme_table() -> String {
    let mut out = String::from("| variable | default | meaning |\n| --- | --- | --- |\n");
    for var in all().filter(|v| v.show != Show::Ignored) {
        let default = match (var.documented_default, var.default) {
            (Some(doc), _) => doc.to_owned(),
            (None, "") => "empty".to_owned(),
            (None, value) => format!("`{value}`"),
        };
        out.push_str(&format!("| `{}` | {} | {} |\n", var.name, default, var.help.replace('|', "\\|")));
    }
    out.push_str("\nAccepted and ignored (one warning at start-up, never a failure):\n\n");
    for var in all().filter(|v| v.show == Show::Ignored) {
        out.push_str(&format!("- `{}`: {}\n", var.name, var.help));
    }
    out
}

/// `.env.example`: every variable commented out at its default, under its heading.
pub fn env_example() -> String {
    let mut out = String::from(
        "# eslstream configuration: every variable with its default. Copy to `.env` (read from the\n\
         # working directory; the real environment wins) or to /etc/eslstream/eslstream.env for systemd.\n\
         # Durations take ms, s, m, h (25ms, 3s, 10m, 1h). Uncomment to change a value.\n\
         # Generated from src/config/vars.rs.\n",
    );
    for section in SECTIONS {
        out.push_str(&format!(
            "\n# --- {} {}\n",
            section.title,
            "-".repeat(86usize.saturating_sub(section.title.len()))
        ));
        for var in section.vars {
            let help = match var.show {
                Show::Ignored => format!("Accepted and ignored: {}.", var.help),
                _ => var.help.to_owned(),
            };
            for line in wrap(&help, 92 - 2) {
                out.push_str(&format!("# {line}\n"));
            }
            out.push_str(&format!("#{}={}\n", var.name, var.default));
        }
    }
    out
}

/// `text` in lines of at most `width` characters, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("one line at least");
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_owned());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}
