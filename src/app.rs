//! The agent: wires source → pipeline → writers, and runs them until a signal, then drains.
//!
//! Threads: one ESL reader (unless `ESL_ENABLED=false`), the outbox relay (when
//! `OUTBOX_DATABASE_URL` is set), `WRITER_WORKERS` writers. A small tokio runtime serves
//! signals (and the HTTP endpoints). Shutdown order: stop the sources, close the pipeline, let writers drain to Redis within `SHUTDOWN_TIMEOUT`, then force what
//! is left out.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::config::{Config, ConfigError};
use crate::ha::{Fence, Pair};
use crate::ops::context::AppContext;
use crate::pipeline::spool::record::V1Streams;
use crate::pipeline::spool::{open_lanes, SpoolBudget};
use crate::pipeline::{Pipeline, PipelineShape, WriteNow};
use crate::shutdown::Shutdown;
use crate::sink::dlq::DeadLetters;
use crate::sink::writer::LaneWriter;
use crate::source::esl::client::EslClient;
use crate::source::esl::routes::Router;
use crate::source::http::HttpIngress;
use crate::source::outbox::OutboxSource;
use crate::source::Intake;
use crate::state::AgentState;

/// The configuration from `vars`, with what the sources own of it checked too (the outbox's
/// URL and table name): the one way the binary loads it.
pub fn load_config(vars: std::collections::HashMap<String, String>) -> Result<Config, ConfigError> {
    let config = Config::from_vars(vars)?;
    if let Some(outbox) = &config.outbox {
        crate::source::outbox::check_config(outbox)?;
    }
    Ok(config)
}

/// A running agent: its threads and the handles to stop them.
pub struct Agent {
    pub config: Arc<Config>,
    pub state: Arc<AgentState>,
    pub pipeline: Arc<Pipeline>,
    pub spool: Arc<SpoolBudget>,
    pub dead_letters: Arc<DeadLetters>,
    /// Where every source hands its events in.
    pub intake: Arc<Intake>,
    pub shutdown: Shutdown,
    reader: Option<JoinHandle<()>>,
    /// The hot-standby pair's lease thread, and the signal that ends it (after the drain).
    pair: Option<(Arc<Pair>, JoinHandle<()>, Shutdown)>,
    outbox: Option<OutboxSource>,
    writers: Vec<JoinHandle<()>>,
    ops: crate::ops::Ops,
}

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A port, the spool, a thread: exit 1.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Something the operator must change (the outbox table is wrong): exit 2.
    #[error("{0}")]
    Setup(String),
}

impl StartError {
    /// The process's exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Io(_) => 1,
            StartError::Setup(_) => 2,
        }
    }
}

/// How long the start waits for the outbox database to answer its table check.
const OUTBOX_STARTUP_CHECK: Duration = Duration::from_secs(5);

impl Agent {
    /// Starts the writers and the sources.
    pub fn start(config: Config) -> Result<Agent, StartError> {
        // Bound first: a taken HEALTH_PORT fails the start before anything runs.
        let listener = crate::http::bind(&config.health_bind, config.health_port)?;
        let ingress_listener = match (&config.http_ingress.listen, config.http_ingress.enabled) {
            (Some((host, port)), true) => Some(crate::http::bind(host, *port)?),
            _ => None,
        };
        let config = Arc::new(config);
        let state = Arc::new(AgentState::default());
        let shutdown = Shutdown::new();
        let shape = PipelineShape::from_buffer(
            config.writer.workers,
            config.writer.buffer_size,
            config.writer.buffer_max_bytes,
        );
        let budget = SpoolBudget::new(config.spool_max_bytes);
        let spools = if config.spool_max_bytes == 0 {
            (0..shape.lanes).map(|_| None).collect()
        } else {
            let dir = std::path::Path::new(&config.spool_dir);
            let v1 = V1Streams { events: config.streams.events_target(), jobs: config.streams.jobs_target() };
            let spools = open_lanes(dir, shape.lanes, budget.clone(), &v1).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot open the spool in SPOOL_DIR={}: {e}", dir.display()))
            })?;
            spools.into_iter().map(Some).collect()
        };
        let pipeline = Pipeline::with_spools(shape, spools);

        let dlq_dir = std::path::Path::new(&config.spool_dir).join("dlq");
        let dead_letters = Arc::new(DeadLetters::open(&dlq_dir).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot open the dead-letter store in {}: {e}", dlq_dir.display()))
        })?);
        let fence = config.ha.as_ref().map(|ha| Arc::new(Fence::new(&ha.group)));
        let mut writers = Vec::new();
        let mut write_now: Vec<Arc<dyn WriteNow>> = Vec::new();
        for lane in pipeline.lanes() {
            let writer =
                LaneWriter::new(lane.clone(), config.clone(), state.clone(), shutdown.clone(), dead_letters.clone());
            let writer = Arc::new(match &fence {
                Some(fence) => writer.with_fence(fence.clone()),
                None => writer,
            });
            write_now.push(writer.clone());
            writers.push(
                std::thread::Builder::new().name(format!("writer-{}", lane.index())).spawn(move || writer.run())?,
            );
        }
        if config.writer.write_now {
            pipeline.attach_writers(write_now);
        }

        let intake = Intake::new(pipeline.clone(), state.clone());
        let pair = match (&config.ha, &fence) {
            (Some(ha), Some(fence)) => {
                let streams = vec![config.streams.events_key.clone(), config.streams.jobs_key.clone()];
                let pair = Pair::new(ha.clone(), config.redis.clone(), streams, fence.clone(), intake.clone());
                let stop = Shutdown::new();
                let thread = {
                    let (pair, stop) = (pair.clone(), stop.clone());
                    std::thread::Builder::new().name("ha-lease".into()).spawn(move || pair.run(stop))?
                };
                info!(group = %ha.group, agent = %ha.agent_id, "hot-standby pair: starting as standby");
                Some((pair, thread, stop))
            }
            _ => None,
        };
        let reader = if config.esl.enabled {
            let streams = &config.streams;
            let router = Router::new(
                &config.events_to_publish,
                &config.events_to_push,
                streams.events_target(),
                streams.jobs_target(),
            );
            let client = EslClient::new(
                config.esl.clone(),
                config.latency.reader,
                router,
                intake.clone(),
                state.clone(),
                shutdown.clone(),
            );
            let client = match &pair {
                Some((pair, _, _)) => client.with_gate(pair.clone()),
                None => client,
            };
            Some(std::thread::Builder::new().name("esl-reader".into()).spawn(move || client.run())?)
        } else {
            info!("ESL_ENABLED=false: no event socket is read");
            None
        };

        let outbox = match &config.outbox {
            None => None,
            Some(outbox) => {
                let source =
                    OutboxSource::start(outbox.clone(), intake.clone(), shutdown.clone(), OUTBOX_STARTUP_CHECK);
                match source {
                    Ok(source) => Some(source),
                    Err(crate::source::outbox::StartError::Io(e)) => return Err(StartError::Io(e)),
                    Err(e) => {
                        shutdown.trigger();
                        return Err(StartError::Setup(e.to_string()));
                    }
                }
            }
        };

        let mut ctx = AppContext::new(&config, &state, &pipeline, &budget, &dead_letters);
        if let Some(outbox) = &outbox {
            ctx = ctx.with_outbox(outbox.status.clone());
        }
        if let Some((pair, _, _)) = &pair {
            ctx = ctx.with_pair(pair.clone());
        }
        if config.http_ingress.enabled {
            ctx = ctx.with_ingress(HttpIngress::new(config.http_ingress.clone(), intake.clone()));
        }
        let ops = crate::ops::Ops::start(listener, ingress_listener, ctx, shutdown.clone())?;
        Ok(Agent {
            config,
            state,
            pipeline,
            spool: budget,
            dead_letters,
            intake,
            shutdown,
            reader,
            pair,
            outbox,
            writers,
            ops,
        })
    }

    /// Where `/health` and `/metrics` are served (the real port when `HEALTH_PORT=0`).
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.ops.http_addr()
    }

    /// Stops reading, drains the pipeline within `SHUTDOWN_TIMEOUT`, and joins every thread.
    /// Returns whether everything in flight was written.
    pub fn stop(mut self) -> bool {
        let started = Instant::now();
        self.shutdown.trigger();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        if let Some(outbox) = self.outbox.as_mut() {
            outbox.join();
        }
        self.pipeline.close();
        let in_flight = self.pipeline.depth();
        info!(in_flight, "draining");
        let deadline = started + self.config.shutdown_timeout;
        while self.writers.iter().any(|w| !w.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let clean = self.writers.iter().all(|w| w.is_finished());
        if !clean {
            warn!(left = self.pipeline.depth(), "drain deadline passed; handing off what is left");
            self.shutdown.force();
        }
        for w in self.writers.drain(..) {
            let _ = w.join();
        }
        // Drained: now the pair's lease can go (the other agent takes over at once).
        if let Some((_, thread, stop)) = self.pair.take() {
            stop.trigger();
            let _ = thread.join();
        }
        for lane in self.pipeline.lanes() {
            if let Err(e) = lane.sync_spool() {
                error!(lane = lane.index(), error = %e, "cannot sync the spool");
            }
        }
        self.ops.stop();
        info!(elapsed = ?started.elapsed(), clean, "stopped");
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_url_and_table_are_checked_at_load() {
        let load = |pairs: &[(&str, &str)]| {
            load_config(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).map(|_| ())
        };
        let bad = |pairs: &[(&str, &str)]| load(pairs).unwrap_err().variable;
        assert_eq!(bad(&[("OUTBOX_DATABASE_URL", "postgres://db/app?sslmode=maybe")]), "OUTBOX_DATABASE_URL");
        let e = load(&[("OUTBOX_DATABASE_URL", "postgres://u:secret@db/app?sslmode=maybe")]).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let url = ("OUTBOX_DATABASE_URL", "postgres://db/app");
        assert_eq!(bad(&[url, ("OUTBOX_TABLE", "a;b")]), "OUTBOX_TABLE");
        assert_eq!(bad(&[url, ("OUTBOX_BATCH_SIZE", "0")]), "OUTBOX_BATCH_SIZE");
        load(&[url, ("OUTBOX_TABLE", "app.outbox")]).unwrap();
        load(&[("OUTBOX_TABLE", "a;b")]).unwrap();
    }
}
