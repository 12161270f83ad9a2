//! Hot-standby pairs (`HA_GROUP`): two agents beside one switch, both reading its event
//! socket (FreeSWITCH sends every event to every listener), one writing.
//!
//! The active agent holds a lease in Redis: `eslstream:ha:{<group>}:lease`, set with `NX` and
//! an expiry of `HA_LEASE_TTL`, renewed every quarter of it, its value the holder's
//! `HA_AGENT_ID` and an *epoch*. Epochs only grow: each is the larger of the Redis clock in
//! milliseconds and the last epoch plus one (`eslstream:ha:{<group>}:epoch`), so a Redis
//! that lost its keys, or a clock set back, still hands out a larger one.
//!
//! The standby parses every event like the active one and keeps the last `HA_REPLAY_WINDOW`
//! of them (at most `HA_REPLAY_MAX_BYTES`) in memory instead of writing them. When the lease
//! is free (released at once by a graceful stop, expired after a crash), it takes it, hands
//! its window to the pipeline through the checking path (what the old active wrote is skipped
//! by key; the rest fills the gap, in order, before any live event), and carries on as active.
//!
//! Every ESL write carries the lease's epoch ([`Fence`]); Redis refuses, atomically with the
//! write, one whose epoch is older than an epoch that already wrote to that stream, so an
//! active that lost its lease without knowing it (paused longer than the TTL, cut off from
//! Redis) never writes after the other took over. Locally an epoch counts only until three
//! quarters of the TTL after the renewal that granted it was sent.
//!
//! - [`lease`]: the lease thread ([`Pair`]): take, renew, lose and release the lease, raise
//!   the streams' fences at takeover, hand the window over;
//! - [`fence`]: the epoch the writers carry ([`Fence`]);
//! - [`window`]: what a standby keeps to replay.
//!
//! The pair stands beside the flow: the ESL reader hands events to it as a
//! [`crate::source::Gate`], the writers read its fence as a [`crate::sink::writer::WriteFence`],
//! and its lease and fence keys are named in [`crate::sink::redis::keys`].

mod fence;
mod lease;
mod window;

pub(crate) use fence::Fence;
pub(crate) use lease::{Pair, PairView};
