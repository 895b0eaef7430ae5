//! Operating limitsd: metrics, logs and traces, config reload, signals.

pub mod metrics;
pub mod reload;
pub mod signal;
pub mod telemetry;
