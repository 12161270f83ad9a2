//! Health: the monitor that looks at the agent every `HEALTH_CHECK_INTERVAL`, the pure rules
//! that turn what it saw into `healthy` / `degraded` / `unhealthy`, and the report `/health`
//! serves.
//!
//! Five checks, each with a reason when it fails:
//! 1. `esl` (unless `ESL_ENABLED=false`): the socket is connected, and something (a HEARTBEAT or any other data) arrived
//!    within [`ESL_SILENCE_TOLERANCE`] (2.5 of FreeSWITCH's 20 s heartbeats); a socket connected
//!    for less than that is not yet expected to have spoken.
//! 2. `redis`: Redis answers `PING` on the monitor's own connection within
//!    `min(REDIS_REMOTE_WRITE_TIMEOUT, HEALTH_CHECK_INTERVAL)`.
//! 3. `queue`: the memory queue is below [`HIGH_WATER_PERCENT`] of `BUFFER_SIZE`.
//! 4. `spool`: the spool is below [`HIGH_WATER_PERCENT`] of `SPOOL_MAX_BYTES` (always holds
//!    when the spool is off, `SPOOL_MAX_BYTES=0`).
//! 5. `drops`: no event was dropped within [`DROP_WINDOW`] (the total since start is always
//!    reported; the counter `eslstream_events_dropped_total` keeps every drop for alerting).
//!
//! Status: `healthy` (HTTP 200) when every check holds. `unhealthy` when the agent cannot do
//! its job: ESL has failed `HEALTH_MAX_RETRIES` checks in a row (nothing is being read), or
//! Redis has failed `HEALTH_MAX_RETRIES` checks in a row while the last buffer is nearly full
//! (the spool, or the memory queue when the spool is off: events are about to be lost). Anything else failing is `degraded`: the agent is working around it
//! (buffering, spooling, reconnecting). Both answer HTTP 503.
//!
//! [`rules`] holds the checks and the verdict (pure functions of a [`rules::Snapshot`]),
//! [`report`] what `/health` serves and where the latest one is kept, [`monitor`] the thread
//! that takes a snapshot every interval.

pub(crate) mod monitor;
pub(crate) mod report;
pub(crate) mod rules;

pub(crate) use monitor::HealthMonitor;
pub(crate) use report::HealthBoard;
