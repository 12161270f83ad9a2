//! The metrics, grouped by the component that records them: each group registers its own
//! series in the one registry ([`super::Metrics`]).

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use super::{counter, counter_vec, float_gauge, gauge, gauge_vec, histogram, register, LATENCY_BUCKETS};

/// What became of events, whatever their source.
pub struct EventMetrics {
    /// Events taken in, by source (`esl`, `http`, `outbox`).
    pub received: IntCounterVec,
    /// Entries acknowledged by Redis, by stream, event name and source.
    pub written: IntCounterVec,
    /// Events that will never reach Redis, by stream, reason and source.
    pub dropped: IntCounterVec,
    /// Events Redis refused for good, kept as dead letters, by stream and source.
    pub dead_lettered: IntCounterVec,
    /// Events received but not routed to any stream (not in EVENTS_TO_PUBLISH/PUSH).
    pub filtered: IntCounter,
    /// Writes that Redis reported as already present (idempotency key seen before).
    pub duplicates_suppressed: IntCounter,
    /// Events handed back to a source that keeps its own (outbox rows stay in their table and
    /// are sent again), by source.
    pub deferred: IntCounterVec,
    /// Event values whose percent-decoding was not valid UTF-8 (kept with U+FFFD).
    pub lossy_decodes: IntCounter,
}

impl EventMetrics {
    pub(super) fn new(r: &Registry) -> EventMetrics {
        EventMetrics {
            received: counter_vec(
                r,
                "eslstream_events_received_total",
                "Events taken in from a source",
                &["source"],
            ),
            written: counter_vec(
                r,
                "eslstream_events_written_total",
                "Entries acknowledged by Redis",
                &["stream", "event", "source"],
            ),
            dropped: counter_vec(
                r,
                "eslstream_events_dropped_total",
                "Events that will never reach Redis",
                &["stream", "reason", "source"],
            ),
            dead_lettered: counter_vec(
                r,
                "eslstream_dead_lettered_total",
                "Events Redis refused for good, kept as dead letters",
                &["stream", "source"],
            ),
            filtered: counter(r, "eslstream_events_filtered_total", "Events received but routed to no stream"),
            duplicates_suppressed: counter(
                r,
                "eslstream_duplicates_suppressed_total",
                "Writes skipped because the idempotency key was already written",
            ),
            deferred: counter_vec(
                r,
                "eslstream_events_deferred_total",
                "Events handed back to a source that keeps its own (outbox rows stay in their table and are sent again)",
                &["source"],
            ),
            lossy_decodes: counter(
                r,
                "eslstream_lossy_decodes_total",
                "Events whose decoded values were not valid UTF-8 (kept with U+FFFD)",
            ),
        }
    }
}

/// The event socket reader.
pub struct EslMetrics {
    /// Frames the ESL client could not parse (the connection is re-made).
    pub protocol_errors: IntCounter,
    pub connected: IntGauge,
    pub reconnections: IntCounter,
    /// Seconds the reader waited for room in memory (instead of spooling) while the switch
    /// was less than 250 ms behind.
    pub reader_wait: prometheus::Counter,
    /// Events the reader wrote itself because their lane was idle (no hand-off to a writer).
    pub writes_now: IntCounter,
    /// JSON events with a repeated header name: rewritten with the first occurrence kept.
    pub duplicate_keys: IntCounter,
}

impl EslMetrics {
    pub(super) fn new(r: &Registry) -> EslMetrics {
        EslMetrics {
            protocol_errors: counter(
                r,
                "eslstream_esl_protocol_errors_total",
                "Unparseable ESL input (the connection is re-made)",
            ),
            connected: gauge(r, "eslstream_esl_connected", "1 while the event socket is connected and subscribed"),
            reconnections: counter(r, "eslstream_esl_reconnections_total", "Event socket connections re-made"),
            duplicate_keys: counter(
                r,
                "eslstream_esl_duplicate_keys_total",
                "JSON events with a repeated header name, rewritten with the first occurrence kept",
            ),
            reader_wait: register(
                r,
                prometheus::Counter::new(
                    "eslstream_reader_wait_seconds_total",
                    "Seconds the reader waited for room in memory instead of spooling",
                ),
            ),
            writes_now: counter(
                r,
                "eslstream_writes_now_total",
                "Events written by the ESL reader itself because their lane was idle",
            ),
        }
    }
}

/// The pipeline's lanes.
pub struct LaneMetrics {
    /// Events waiting in memory (channels and overflow), per lane.
    pub queue_depth: IntGaugeVec,
    /// Events held in memory past the channels, per lane.
    pub overflow_depth: IntGaugeVec,
}

impl LaneMetrics {
    pub(super) fn new(r: &Registry) -> LaneMetrics {
        LaneMetrics {
            queue_depth: gauge_vec(r, "eslstream_queue_depth", "Events waiting in memory, per writer lane", &["lane"]),
            overflow_depth: gauge_vec(
                r,
                "eslstream_overflow_depth",
                "Events held in the memory overflow past the channel, per lane",
                &["lane"],
            ),
        }
    }
}

/// The writers and their Redis connections.
pub struct WriterMetrics {
    /// Redis connections currently open, one per writer.
    pub redis_connected: IntGauge,
    pub redis_reconnections: IntCounter,
    /// Batches fewer replicas than `REDIS_WAIT_REPLICAS` confirmed in time (retried).
    pub wait_timeouts: IntCounter,
    /// Failed write attempts that were retried, by kind of failure.
    pub retries: IntCounterVec,
    pub duration: HistogramVec,
    pub batch_size: Histogram,
    /// Times a writer moved events it could not write into the spool.
    pub spills: IntCounter,
}

impl WriterMetrics {
    pub(super) fn new(r: &Registry) -> WriterMetrics {
        WriterMetrics {
            redis_connected: gauge(r, "eslstream_redis_connections", "Open Redis connections (one per writer)"),
            redis_reconnections: counter(
                r,
                "eslstream_redis_reconnections_total",
                "Redis connections re-made after a failure",
            ),
            wait_timeouts: counter(
                r,
                "eslstream_redis_wait_timeouts_total",
                "Batches that fewer replicas than REDIS_WAIT_REPLICAS confirmed within REDIS_WAIT_TIMEOUT (retried)",
            ),
            retries: counter_vec(
                r,
                "eslstream_write_retries_total",
                "Write attempts that failed and were retried",
                &["kind"],
            ),
            duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "eslstream_redis_write_duration_seconds",
                        "Round trip of one pipelined write to Redis",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["outcome"],
                ),
            ),
            batch_size: histogram(
                r,
                "eslstream_batch_size",
                "Events per pipelined write",
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0],
            ),
            spills: counter(r, "eslstream_spills_total", "Times a writer moved unwritable events to the spool"),
        }
    }
}

/// Latency from the switch to Redis.
pub struct LatencyMetrics {
    pub reader: Histogram,
    pub writer: Histogram,
    pub total: Histogram,
}

impl LatencyMetrics {
    pub(super) fn new(r: &Registry) -> LatencyMetrics {
        LatencyMetrics {
            reader: histogram(r, "eslstream_reader_latency_seconds", "Event timestamp to parsed", LATENCY_BUCKETS),
            writer: histogram(
                r,
                "eslstream_writer_latency_seconds",
                "Parsed to acknowledged by Redis",
                LATENCY_BUCKETS,
            ),
            total: histogram(
                r,
                "eslstream_total_latency_seconds",
                "Event timestamp to acknowledged by Redis",
                LATENCY_BUCKETS,
            ),
        }
    }
}

/// The trimmer.
pub struct TrimMetrics {
    /// Trimmer passes (one per `TRIM_INTERVAL`, over every stream).
    pub runs: IntCounter,
    /// Entries removed by the trimmer, by stream.
    pub entries: IntCounterVec,
    pub duration: Histogram,
    /// Trimmer passes that failed (Redis down, refused the command, ...).
    pub errors: IntCounter,
}

impl TrimMetrics {
    pub(super) fn new(r: &Registry) -> TrimMetrics {
        TrimMetrics {
            runs: counter(r, "eslstream_trim_runs_total", "Trimmer passes over the streams"),
            entries: counter_vec(
                r,
                "eslstream_trimmed_entries_total",
                "Entries removed by the trimmer (older than EVENTS_EXPIRE_TIME / JOBS_EXPIRE_TIME)",
                &["stream"],
            ),
            duration: histogram(
                r,
                "eslstream_trim_duration_seconds",
                "Time taken by one trimmer pass",
                LATENCY_BUCKETS,
            ),
            errors: counter(r, "eslstream_trim_errors_total", "Trimmer passes that failed"),
        }
    }
}

/// The durable spool and the dead letters (copied when scraped).
pub struct SpoolMetrics {
    /// Bytes and events in the durable spool (copied from `AgentState` when scraped).
    pub bytes: IntGauge,
    pub events: IntGauge,
    /// `SPOOL_MAX_BYTES` (0: no spool), so a rule can compare `eslstream_spool_bytes` with it.
    pub max_bytes: IntGauge,
    /// Dead letters stored now under `SPOOL_DIR/dlq` (copied from the store when scraped).
    pub dead_letters: IntGauge,
}

impl SpoolMetrics {
    pub(super) fn new(r: &Registry) -> SpoolMetrics {
        SpoolMetrics {
            bytes: gauge(r, "eslstream_spool_bytes", "Bytes held in the durable spool"),
            events: gauge(r, "eslstream_spool_events", "Events held in the durable spool"),
            max_bytes: gauge(r, "eslstream_spool_max_bytes", "SPOOL_MAX_BYTES: the spool's budget (0: no spool)"),
            dead_letters: gauge(r, "eslstream_dead_letters", "Dead letters stored now (GET /dlq lists them)"),
        }
    }
}

/// The health monitor's findings.
pub struct HealthMetrics {
    /// 1 when the health monitor's last `PING` succeeded, 0 when it failed.
    pub redis_up: IntGauge,
    /// 1 for each source this agent reads (`esl` unless `ESL_ENABLED=false`), 0 for the others.
    pub source_enabled: IntGaugeVec,
    /// Result of the last health check: 0 healthy, 1 degraded, 2 unhealthy.
    pub status: IntGauge,
    /// Round trip of the health monitor's last `PING` (absent until one succeeded).
    pub redis_ping: prometheus::Gauge,
}

impl HealthMetrics {
    pub(super) fn new(r: &Registry) -> HealthMetrics {
        HealthMetrics {
            redis_up: gauge(r, "eslstream_redis_up", "1 when the health monitor's last Redis PING succeeded, else 0"),
            source_enabled: gauge_vec(
                r,
                "eslstream_source_enabled",
                "1 for each source the agent reads, 0 for the others",
                &["source"],
            ),
            status: gauge(
                r,
                "eslstream_health_status",
                "Result of the last health check: 0 healthy, 1 degraded, 2 unhealthy",
            ),
            redis_ping: float_gauge(
                r,
                "eslstream_redis_ping_seconds",
                "Round trip of the health monitor's last Redis PING",
            ),
        }
    }
}

/// The HTTP server's connections.
pub struct HttpMetrics {
    /// Connections open to the admin HTTP port.
    pub connections: IntGauge,
    /// New admin HTTP connections closed at once, by reason (`per_peer`, `full`).
    pub rejected: IntCounterVec,
    /// Admin HTTP connections closed by the server, by reason (`timeout`: no complete request
    /// head in time; `evicted`: the oldest idle one, to make room).
    pub closed: IntCounterVec,
}

impl HttpMetrics {
    pub(super) fn new(r: &Registry) -> HttpMetrics {
        HttpMetrics {
            connections: gauge(r, "eslstream_http_connections", "Connections open to the admin HTTP port"),
            rejected: counter_vec(
                r,
                "eslstream_http_connections_rejected_total",
                "New admin HTTP connections closed at once: per_peer (too many from the address), full (all busy)",
                &["reason"],
            ),
            closed: counter_vec(
                r,
                "eslstream_http_connections_closed_total",
                "Admin HTTP connections closed by the server: timeout (no complete request head in time), evicted (oldest idle, to make room)",
                &["reason"],
            ),
        }
    }
}

/// `POST /events`.
pub struct IngressMetrics {
    /// `POST /events` answers, by status code and producer.
    pub requests: IntCounterVec,
    /// `POST /events`: from the request's arrival to its answer.
    pub duration: Histogram,
    /// Events of `POST /events` by producer and outcome (`accepted`, `duplicate`).
    pub events: IntCounterVec,
}

impl IngressMetrics {
    pub(super) fn new(r: &Registry) -> IngressMetrics {
        IngressMetrics {
            requests: counter_vec(
                r,
                "eslstream_http_requests_total",
                "POST /events answers, by status code and producer",
                &["code", "producer"],
            ),
            duration: histogram(
                r,
                "eslstream_http_request_duration_seconds",
                "POST /events: from the request's arrival to its answer",
                LATENCY_BUCKETS,
            ),
            events: counter_vec(
                r,
                "eslstream_http_events_total",
                "Events of POST /events by producer and outcome (accepted, duplicate)",
                &["producer", "outcome"],
            ),
        }
    }
}

/// The PostgreSQL outbox relay.
pub struct OutboxMetrics {
    /// Outbox rows relayed, by outcome (`written`, `duplicate`, `dead_lettered`).
    pub rows: IntCounterVec,
    /// Rows waiting in the outbox table (as of the relay's last count).
    pub backlog: IntGauge,
    /// From a row's `created_at` to its entry acknowledged by Redis.
    pub lag: Histogram,
    /// 1 while this agent's relay is the active one (holds the outbox lock), else 0.
    pub active: IntGauge,
    /// Connections to PostgreSQL made after the first.
    pub reconnections: IntCounter,
}

impl OutboxMetrics {
    pub(super) fn new(r: &Registry) -> OutboxMetrics {
        OutboxMetrics {
            rows: counter_vec(
                r,
                "eslstream_outbox_rows_total",
                "Outbox rows relayed and removed from the table, by outcome (written, duplicate, dead_lettered)",
                &["outcome"],
            ),
            backlog: gauge(r, "eslstream_outbox_backlog_rows", "Rows waiting in the outbox table (last count)"),
            lag: histogram(
                r,
                "eslstream_outbox_lag_seconds",
                "From an outbox row's created_at to its entry acknowledged by Redis",
                LATENCY_BUCKETS,
            ),
            active: gauge(
                r,
                "eslstream_outbox_active",
                "1 while this agent's relay is the active one for the outbox table, else 0",
            ),
            reconnections: counter(
                r,
                "eslstream_outbox_reconnections_total",
                "Connections to PostgreSQL made after the first",
            ),
        }
    }
}

/// The hot-standby pair.
pub struct HaMetrics {
    /// Hot-standby pair: 1 while this agent is the active one, 0 while standby.
    pub role: IntGauge,
    /// Times this agent took the pair's lease over.
    pub takeovers: IntCounter,
    /// Events of the replay window written at a takeover, by outcome (`written`, `duplicate`).
    pub replayed: IntCounterVec,
    /// Switch events this agent did not write because it held no lease (the active one did).
    pub fenced: IntCounter,
}

impl HaMetrics {
    pub(super) fn new(r: &Registry) -> HaMetrics {
        HaMetrics {
            role: gauge(r, "eslstream_ha_role", "Hot-standby pair: 1 while this agent is active, 0 while standby"),
            takeovers: counter(r, "eslstream_ha_takeovers_total", "Times this agent took the pair's lease over"),
            replayed: counter_vec(
                r,
                "eslstream_ha_replayed_events_total",
                "Events of the replay window written at a takeover, by outcome (written, duplicate)",
                &["outcome"],
            ),
            fenced: counter(
                r,
                "eslstream_ha_fenced_total",
                "Switch events not written by this agent because it held no lease (the pair's active agent wrote them)",
            ),
        }
    }
}

/// The process itself.
pub struct ProcessMetrics {
    /// Always 1; the labels say which build is running.
    pub build_info: IntGaugeVec,
    /// When the process started, in seconds since the epoch.
    pub start_time: prometheus::Gauge,
}

impl ProcessMetrics {
    pub(super) fn new(r: &Registry) -> ProcessMetrics {
        ProcessMetrics {
            build_info: gauge_vec(
                r,
                "eslstream_build_info",
                "Always 1; labelled with the running version",
                &["version"],
            ),
            start_time: float_gauge(
                r,
                "eslstream_start_time_seconds",
                "Start time of the process in seconds since the Unix epoch",
            ),
        }
    }
}
