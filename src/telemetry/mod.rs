//! Telemetry, under every wing: the Prometheus metrics ([`metrics`]: one registry, each
//! metric in base units), the log set-up and rate-limited warnings ([`logging`]).

pub mod logging;
pub mod metrics;
