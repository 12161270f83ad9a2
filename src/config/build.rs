//! Building the typed [`Config`] from the variables: each read through its declaration, then
//! the rules that tie variables together (kept here, by hand).

use std::collections::HashMap;
use std::time::Duration;

use crate::esl::event::EventFormat;

use super::read::{parse_bytes, parse_event_list, split_host_port, Reader};
use super::vars::*;
use super::*;

impl Config {
    /// Builds the configuration from a set of variables (tests pass their own).
    pub fn from_vars(vars: HashMap<String, String>) -> Result<Config, ConfigError> {
        let r = Reader::new(&vars);

        let esl = EslConfig {
            enabled: r.flag(&ESL_ENABLED)?,
            host: r.string(&ESL_HOST),
            port: r.number(&ESL_PORT, 1u16, u16::MAX)?,
            // Empty is a password too (unlike other variables, where empty means default).
            password: r.set(&ESL_PASSWORD).unwrap_or(ESL_PASSWORD.default).to_owned(),
            reconnect_delay: r.positive_duration(&ESL_RECONNECT_DELAY)?,
            max_reconnect_delay: r.positive_duration(&ESL_MAX_RECONNECT_DELAY)?,
            health_check_timeout: r.positive_duration(&ESL_HEALTH_CHECK_TIMEOUT)?,
            silence_timeout: r.positive_duration(&ESL_SILENCE_TIMEOUT)?,
            connect_timeout: r.positive_duration(&ESL_CONNECT_TIMEOUT)?,
            event_format: EventFormat::from_word(&r.string(&ESL_EVENT_FORMAT))
                .ok_or_else(|| r.error(&ESL_EVENT_FORMAT, "json or plain"))?,
        };
        r.show(&ESL_EVENT_FORMAT, esl.event_format.word());
        r.show(&ESL_PASSWORD, &esl.password);
        if esl.max_reconnect_delay < esl.reconnect_delay {
            return Err(r.error(&ESL_MAX_RECONNECT_DELAY, "a duration not below ESL_RECONNECT_DELAY"));
        }

        let redis = redis_config(&r)?;

        let entry_format = match r.string(&STREAM_ENTRY_FORMAT).to_ascii_lowercase().as_str() {
            "full" => EntryFormat::Full,
            "reference" => EntryFormat::Reference,
            _ => return Err(r.error(&STREAM_ENTRY_FORMAT, "full or reference")),
        };
        r.show(&STREAM_ENTRY_FORMAT, &format!("{entry_format:?}").to_lowercase());
        let streams = StreamConfig {
            events_key: r.string(&STREAM_EVENTS),
            jobs_key: r.string(&STREAM_JOBS),
            events_max_len: r.number(&EVENTS_MAX_LEN, 0u64, u64::MAX)?,
            jobs_max_len: r.number(&JOBS_MAX_LEN, 0u64, u64::MAX)?,
            events_expire: r.duration(&EVENTS_EXPIRE_TIME)?,
            jobs_expire: r.duration(&JOBS_EXPIRE_TIME)?,
            trim_interval: r.positive_duration(&TRIM_INTERVAL)?,
            entry_format,
        };
        if streams.events_key == streams.jobs_key {
            return Err(r.error(&STREAM_JOBS, "a key different from STREAM_EVENTS"));
        }

        let writer = WriterConfig {
            workers: r.number(&WRITER_WORKERS, 1usize, 256)?,
            batch_size: r.number(&WRITER_BATCH_SIZE, 1usize, 100_000)?,
            pipeline_timeout: r.duration(&WRITER_PIPELINE_TIMEOUT)?,
            max_retries: r.number(&WRITER_MAX_RETRIES, 0u32, u32::MAX)?,
            retry_pause: r.positive_duration(&WRITER_RETRY_PAUSE_AFTER)?,
            retry_ttl: r.positive_duration(&WRITER_RETRY_TTL)?,
            buffer_size: r.number(&BUFFER_SIZE, 16usize, 100_000_000)?,
            buffer_max_bytes: r.bytes(&BUFFER_MAX_BYTES, 0, "a size such as 67108864, 64MiB or 1GiB")?,
            write_now: r.flag(&WRITER_WRITE_NOW)?,
        };
        let latency = LatencyThresholds {
            reader: r.positive_duration(&READER_MAX_LATENCY)?,
            writer: r.positive_duration(&WRITER_MAX_LATENCY)?,
            total: r.positive_duration(&TOTAL_MAX_LATENCY)?,
        };

        // Set but empty means "none" (unlike other variables, where empty means default).
        let list = |var: &Var| {
            let list = parse_event_list(r.set(var).unwrap_or(var.default));
            r.show(var, &list.join(","));
            list
        };
        let events_to_publish = list(&EVENTS_TO_PUBLISH);
        let events_to_push = list(&EVENTS_TO_PUSH);
        if events_to_publish.is_empty() && events_to_push.is_empty() {
            return Err(r.error(&EVENTS_TO_PUSH, "at least one event name in EVENTS_TO_PUSH or EVENTS_TO_PUBLISH"));
        }
        for (var, list) in [(&EVENTS_TO_PUBLISH, &events_to_publish), (&EVENTS_TO_PUSH, &events_to_push)] {
            if let Some(bad) = list.iter().find(|e| !e.chars().all(|c| c.is_ascii_alphanumeric() || "_:-.".contains(c)))
            {
                return Err(ConfigError {
                    variable: var.name.into(),
                    value: bad.clone(),
                    expected: "event names such as CHANNEL_ANSWER, CUSTOM or CUSTOM::sofia::register".into(),
                });
            }
        }

        let log_format = match r.string(&LOG_FORMAT).to_ascii_lowercase().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(r.error(&LOG_FORMAT, "text or json")),
        };
        r.show(&LOG_FORMAT, &format!("{log_format:?}").to_lowercase());
        let log_level = r.string(&LOG_LEVEL).to_ascii_lowercase();
        r.show(&LOG_LEVEL, &log_level);
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(r.error(&LOG_LEVEL, "error, warn, info, debug or trace (or a tracing filter)"));
        }

        let http_ingress = http_ingress(&r)?;
        let health_bind = r.string(&HEALTH_BIND);
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
                variable: HTTP_INGRESS_ALLOW_ANONYMOUS.name.into(),
                value: String::new(),
                expected: format!("true to accept events from anyone on {ingress_bind}, or set HTTP_INGRESS_TOKENS or HTTP_INGRESS_HMAC_SECRET (with neither, ingress only listens on loopback)"),
            });
        }

        let ignored = all()
            .filter(|v| v.show == Show::Ignored && r.raw(v).is_some())
            .map(|v| (v.name.to_owned(), v.help.to_owned()))
            .collect();

        let rest = Config {
            esl,
            redis,
            streams,
            writer,
            latency,
            events_to_publish,
            events_to_push,
            health_interval: r.positive_duration(&HEALTH_CHECK_INTERVAL)?,
            health_max_retries: r.number(&HEALTH_MAX_RETRIES, 1u32, u32::MAX)?,
            health_bind,
            health_port: r.number(&HEALTH_PORT, 0u16, u16::MAX)?,
            metrics_print_interval: r.duration(&METRICS_PRINT_INTERVAL)?,
            log_level,
            log_format,
            spool_dir: r.string(&SPOOL_DIR),
            spool_max_bytes: r.bytes(&SPOOL_MAX_BYTES, 0, "a size such as 1073741824, 512MiB or 1GiB")?,
            shutdown_timeout: r.positive_duration(&SHUTDOWN_TIMEOUT)?,
            http_token: secret(&r, &HTTP_TOKEN),
            http_ingress,
            outbox: outbox(&r)?,
            ha: ha(&r)?,
            ignored,
            shown: Default::default(),
        };
        Ok(Config { shown: r.into_shown(), ..rest })
    }
}

/// A secret exactly as given (not trimmed), when set and not blank.
fn secret(r: &Reader<'_>, var: &Var) -> Option<String> {
    let value = r.raw(var).map(str::to_owned);
    r.show(var, value.as_deref().unwrap_or_default());
    value
}

/// `HTTP_INGRESS*` and `HTTP_STREAM`, `HTTP_MAX_LEN`, `HTTP_EXPIRE_TIME`.
fn http_ingress(r: &Reader<'_>) -> Result<HttpIngressConfig, ConfigError> {
    let enabled = r.flag(&HTTP_INGRESS)?;
    let listen = match (r.raw(&HTTP_INGRESS_BIND), r.raw(&HTTP_INGRESS_PORT)) {
        (None, None) => None,
        (bind, _) => {
            let bind = bind.unwrap_or("0.0.0.0").trim().to_owned();
            r.show(&HTTP_INGRESS_BIND, &bind);
            Some((bind, r.number_or(&HTTP_INGRESS_PORT, "9877", 0u16, u16::MAX)?))
        }
    };
    let mut tokens = Vec::new();
    for item in r.optional(&HTTP_INGRESS_TOKENS).unwrap_or_default().split(',').map(str::trim) {
        if item.is_empty() {
            continue;
        }
        let (name, token) = item.split_once(':').unwrap_or(("", ""));
        let label_ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if !label_ok || token.len() < 16 || tokens.iter().any(|t: &IngressToken| t.name == name) {
            return Err(ConfigError {
                variable: HTTP_INGRESS_TOKENS.name.into(),
                value: "********".into(),
                expected: "a comma-separated list of name:token, each name unique (letters, digits, _ - .) and each token at least 16 characters".into(),
            });
        }
        tokens.push(IngressToken { name: name.to_owned(), token: token.to_owned() });
    }
    let tls = match (r.optional(&HTTP_INGRESS_TLS_CERT), r.optional(&HTTP_INGRESS_TLS_KEY)) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            for (var, path) in [(&HTTP_INGRESS_TLS_CERT, &cert), (&HTTP_INGRESS_TLS_KEY, &key)] {
                if let Err(e) = std::fs::File::open(path) {
                    return Err(r.error(var, &format!("a readable PEM file ({e})")));
                }
            }
            if listen.is_none() {
                return Err(r.error(
                    &HTTP_INGRESS_TLS_CERT,
                    "set together with HTTP_INGRESS_PORT: TLS is served on the ingress's own listener",
                ));
            }
            Some((cert, key))
        }
        (Some(_), None) => return Err(r.error(&HTTP_INGRESS_TLS_KEY, "the PEM private key for HTTP_INGRESS_TLS_CERT")),
        (None, Some(_)) => {
            return Err(r.error(&HTTP_INGRESS_TLS_CERT, "the PEM certificate chain for HTTP_INGRESS_TLS_KEY"))
        }
    };
    let required_fields: Vec<String> = r
        .optional(&HTTP_INGRESS_REQUIRED_FIELDS)
        .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    r.show(&HTTP_INGRESS_REQUIRED_FIELDS, &required_fields.join(","));
    Ok(HttpIngressConfig {
        enabled,
        listen,
        tls,
        tokens,
        hmac_secret: secret(r, &HTTP_INGRESS_HMAC_SECRET),
        allow_anonymous: r.flag(&HTTP_INGRESS_ALLOW_ANONYMOUS)?,
        max_body: r.get(&HTTP_INGRESS_MAX_BODY, "a size such as 1048576, 512KiB or 8MiB", |s| {
            parse_bytes(s).and_then(|b| usize::try_from(b).ok()).filter(|b| *b >= 1024)
        })?,
        max_batch: r.number(&HTTP_INGRESS_MAX_BATCH, 1usize, 100_000)?,
        required_fields,
        stream_key: r.string(&HTTP_STREAM),
        max_len: r.number(&HTTP_MAX_LEN, 0u64, u64::MAX)?,
        expire: r.duration(&HTTP_EXPIRE_TIME)?,
        name_field: r.string(&HTTP_INGRESS_NAME_FIELD),
        order_field: r.string(&HTTP_INGRESS_ORDER_FIELD),
        id_field: r.string(&HTTP_INGRESS_ID_FIELD),
        idempotency_ttl: r.positive_duration(&HTTP_INGRESS_IDEMPOTENCY_TTL)?,
        ack_timeout: r.positive_duration(&HTTP_INGRESS_ACK_TIMEOUT)?,
        max_connections: r.number(&HTTP_INGRESS_MAX_CONNECTIONS, 1usize, 65_536)?,
    })
}

/// `OUTBOX_*`: `None` unless `OUTBOX_DATABASE_URL` is set. The URL's and the table name's
/// forms are the outbox's to check (`app::load` does, at start-up).
fn outbox(r: &Reader<'_>) -> Result<Option<OutboxConfig>, ConfigError> {
    let Some(url) = r.optional(&OUTBOX_DATABASE_URL) else { return Ok(None) };
    let producer = r.optional(&OUTBOX_PRODUCER);
    if producer.as_ref().is_some_and(|p| p.len() > 200 || !p.bytes().all(|b| b.is_ascii_graphic())) {
        return Err(r.error(&OUTBOX_PRODUCER, "1-200 visible ASCII characters"));
    }
    Ok(Some(OutboxConfig {
        database_url: url,
        table: r.string(&OUTBOX_TABLE),
        stream_key: r.string(&OUTBOX_STREAM),
        max_len: r.number(&OUTBOX_MAX_LEN, 0u64, u64::MAX)?,
        expire: r.duration(&OUTBOX_EXPIRE_TIME)?,
        batch_size: r.number(&OUTBOX_BATCH_SIZE, 1usize, 10_000)?,
        poll_interval: r.positive_duration(&OUTBOX_POLL_INTERVAL)?,
        keep: r.flag(&OUTBOX_KEEP)?,
        producer,
    }))
}

/// `HA_*`: `None` unless `HA_GROUP` is set.
fn ha(r: &Reader<'_>) -> Result<Option<HaConfig>, ConfigError> {
    let Some(group) = r.optional(&HA_GROUP) else { return Ok(None) };
    let name_ok = |s: &str| {
        !s.is_empty() && s.len() <= 100 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
    };
    if !name_ok(&group) {
        return Err(r.error(&HA_GROUP, "a name for the switch's pair: 1-100 letters, digits, _ - . :"));
    }
    let lease_ttl = r.positive_duration(&HA_LEASE_TTL)?;
    if lease_ttl < Duration::from_millis(500) {
        return Err(r.error(&HA_LEASE_TTL, "500ms or more (it is renewed every quarter of it)"));
    }
    let agent_id = match r.optional(&HA_AGENT_ID) {
        Some(id) if name_ok(&id) => id,
        Some(_) => return Err(r.error(&HA_AGENT_ID, "1-100 letters, digits, _ - . :")),
        None => format!("{}:{}", hostname(), std::process::id()),
    };
    r.show(&HA_AGENT_ID, &agent_id);
    Ok(Some(HaConfig {
        group,
        lease_ttl,
        replay_window: r.positive_duration(&HA_REPLAY_WINDOW)?,
        replay_max_bytes: r.bytes(&HA_REPLAY_MAX_BYTES, 1 << 20, "a size such as 134217728 or 128MiB")?,
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

/// `REDIS_URL` (or `REDIS_REMOTE_*`), the timeouts, the topology, TLS and `WAIT`.
fn redis_config(r: &Reader<'_>) -> Result<RedisConfig, ConfigError> {
    let url = redis_url(r)?;
    let addresses = |var: &Var| -> Result<Vec<String>, ConfigError> {
        let list: Vec<String> = r
            .raw(var)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if list.iter().any(|a| split_host_port(a).is_none()) {
            return Err(r.error(var, "a comma-separated list of host:port"));
        }
        r.show(var, &list.join(","));
        Ok(list)
    };
    let sentinels = addresses(&REDIS_SENTINELS)?;
    let seeds = addresses(&REDIS_CLUSTER_NODES)?;
    let master = r.optional(&REDIS_SENTINEL_MASTER);
    let topology = match (sentinels.is_empty(), seeds.is_empty()) {
        (true, true) => {
            if master.is_some() {
                return Err(r.error(&REDIS_SENTINELS, "the sentinels' host:port list for REDIS_SENTINEL_MASTER"));
            }
            RedisTopology::Standalone
        }
        (false, true) => {
            let Some(master) = master else {
                return Err(r.error(&REDIS_SENTINEL_MASTER, "the name the sentinels monitor the primary under"));
            };
            let password = r.set(&REDIS_SENTINEL_PASSWORD).filter(|p| !p.is_empty()).map(str::to_owned);
            r.show(&REDIS_SENTINEL_PASSWORD, password.as_deref().unwrap_or_default());
            RedisTopology::Sentinel { sentinels, master, password }
        }
        (true, false) => RedisTopology::Cluster { seeds },
        (false, false) => {
            return Err(r.error(&REDIS_CLUSTER_NODES, "unset when REDIS_SENTINELS is set (one topology at a time)"))
        }
    };
    if matches!(topology, RedisTopology::Cluster { .. }) {
        use redis::IntoConnectionInfo;
        if url.as_str().into_connection_info().is_ok_and(|info| info.redis_settings().db() != 0) {
            return Err(r.error(&REDIS_URL, "database 0 with REDIS_CLUSTER_NODES (a cluster has no other)"));
        }
    }
    let socket = url.starts_with("redis+unix://") || url.starts_with("unix://");
    if socket && topology != RedisTopology::Standalone {
        return Err(r.error(&REDIS_URL, "a redis:// or rediss:// URL with Sentinel or Cluster (not a socket)"));
    }
    let pem = |var: &Var| -> Result<Option<PemFile>, ConfigError> {
        let Some(path) = r.optional(var) else { return Ok(None) };
        let pem = std::fs::read(&path).map_err(|e| r.error(var, &format!("a readable PEM file ({e})")))?;
        if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(r.error(var, "a PEM file (no -----BEGIN line in it)"));
        }
        Ok(Some(PemFile { path, pem }))
    };
    let tls = RedisTls {
        ca_cert: pem(&REDIS_TLS_CA_CERT)?,
        client: match (pem(&REDIS_TLS_CERT)?, pem(&REDIS_TLS_KEY)?) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert, key)),
            (Some(_), None) => return Err(r.error(&REDIS_TLS_KEY, "the PEM private key for REDIS_TLS_CERT")),
            (None, Some(_)) => return Err(r.error(&REDIS_TLS_CERT, "the PEM certificate chain for REDIS_TLS_KEY")),
        },
    };
    if tls != RedisTls::default() && !url.starts_with("rediss://") {
        let var = if tls.ca_cert.is_some() { &REDIS_TLS_CA_CERT } else { &REDIS_TLS_CERT };
        return Err(r.error(var, "set only with a rediss:// REDIS_URL (TLS)"));
    }
    Ok(RedisConfig {
        url,
        dial_timeout: r.positive_duration(&REDIS_REMOTE_DIAL_TIMEOUT)?,
        write_timeout: r.positive_duration(&REDIS_REMOTE_WRITE_TIMEOUT)?,
        topology,
        tls,
        wait_replicas: r.number(&REDIS_WAIT_REPLICAS, 0u32, 100)?,
        wait_timeout: r.positive_duration(&REDIS_WAIT_TIMEOUT)?,
    })
}

/// `REDIS_URL`, or the URL `REDIS_REMOTE_ADDR`, `REDIS_REMOTE_PASSWORD` and `REDIS_REMOTE_DB`
/// make.
fn redis_url(r: &Reader<'_>) -> Result<String, ConfigError> {
    if let Some(url) = r.optional(&REDIS_URL) {
        if !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("redis+unix://")
            || url.starts_with("unix://"))
        {
            return Err(r.error(&REDIS_URL, "a URL such as redis://[user:password@]host:6379/0 or rediss://..."));
        }
        if redis::Client::open(url.as_str()).is_err() {
            return Err(r.error(&REDIS_URL, "a valid redis:// or rediss:// URL"));
        }
        return Ok(url);
    }
    let addr = r.string(&REDIS_REMOTE_ADDR);
    if !addr.contains(':') || addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
        return Err(r.error(&REDIS_REMOTE_ADDR, "host:port, such as 127.0.0.1:6379"));
    }
    let db: u32 = r.number(&REDIS_REMOTE_DB, 0u32, 1_000_000)?;
    let password = r.set(&REDIS_REMOTE_PASSWORD).unwrap_or_default();
    r.show(&REDIS_REMOTE_PASSWORD, password);
    let auth = if password.is_empty() { String::new() } else { format!(":{}@", percent_encode_userinfo(password)) };
    let url = format!("redis://{auth}{addr}/{db}");
    r.show(&REDIS_URL, &url);
    Ok(url)
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
