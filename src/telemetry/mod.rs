//! Telemetry, under every wing: the Prometheus metrics ([`metrics`]: one registry, grouped by
//! the component that records them, each metric in base units), the log set-up and
//! rate-limited warnings ([`logging`]), and the wall clock events carry ([`clock`]).

pub mod clock;
pub mod logging;
pub mod metrics;
