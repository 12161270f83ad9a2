//! What the admin HTTP handlers, the health monitor and the summary line share: the agent's
//! configuration and live state.

use std::sync::Arc;

use crate::config::Config;
use crate::ha::Pair;
use crate::ops::health::HealthBoard;
use crate::pipeline::spool::SpoolBudget;
use crate::pipeline::Pipeline;
use crate::sink::dlq::DeadLetters;
use crate::source::http::HttpIngress;
use crate::source::outbox::OutboxStatus;
use crate::state::AgentState;

/// The agent's parts, as the ops side sees them.
pub(crate) struct AppContext {
    pub config: Arc<Config>,
    pub state: Arc<AgentState>,
    pub pipeline: Arc<Pipeline>,
    pub spool: Arc<SpoolBudget>,
    pub dead_letters: Arc<DeadLetters>,
    /// The health monitor's latest report.
    pub health: Arc<HealthBoard>,
    /// `POST /events`, when `HTTP_INGRESS=true`.
    pub ingress: Option<Arc<HttpIngress>>,
    /// The outbox relay's state, when `OUTBOX_DATABASE_URL` is set.
    pub outbox: Option<Arc<OutboxStatus>>,
    /// This agent's side of a hot-standby pair, when `HA_GROUP` is set.
    pub pair: Option<Arc<Pair>>,
}

impl AppContext {
    /// A context over the agent's parts, with a fresh health board.
    pub(crate) fn new(
        config: &Arc<Config>,
        state: &Arc<AgentState>,
        pipeline: &Arc<Pipeline>,
        spool: &Arc<SpoolBudget>,
        dead_letters: &Arc<DeadLetters>,
    ) -> Arc<AppContext> {
        Arc::new(AppContext {
            config: config.clone(),
            state: state.clone(),
            pipeline: pipeline.clone(),
            spool: spool.clone(),
            dead_letters: dead_letters.clone(),
            health: Arc::new(HealthBoard::default()),
            ingress: None,
            outbox: None,
            pair: None,
        })
    }

    /// The same context serving `POST /events` through `ingress`.
    pub(crate) fn with_ingress(self: Arc<Self>, ingress: Arc<HttpIngress>) -> Arc<AppContext> {
        Arc::new(AppContext { ingress: Some(ingress), ..self.unshared() })
    }

    /// The same context reporting the outbox relay's state.
    pub(crate) fn with_outbox(self: Arc<Self>, outbox: Arc<OutboxStatus>) -> Arc<AppContext> {
        Arc::new(AppContext { outbox: Some(outbox), ..self.unshared() })
    }

    /// The same context reporting this agent's side of a hot-standby pair.
    pub(crate) fn with_pair(self: Arc<Self>, pair: Arc<Pair>) -> Arc<AppContext> {
        Arc::new(AppContext { pair: Some(pair), ..self.unshared() })
    }

    /// The context itself, or a copy of it when it is shared already.
    fn unshared(self: Arc<Self>) -> AppContext {
        Arc::try_unwrap(self).unwrap_or_else(|shared| AppContext {
            config: shared.config.clone(),
            state: shared.state.clone(),
            pipeline: shared.pipeline.clone(),
            spool: shared.spool.clone(),
            dead_letters: shared.dead_letters.clone(),
            health: shared.health.clone(),
            ingress: shared.ingress.clone(),
            outbox: shared.outbox.clone(),
            pair: shared.pair.clone(),
        })
    }
}
