//! Operating limitsd: metrics, logs and traces, signals, alert delivery.
//! These are leaves: they depend on no other module of the server.

pub mod metrics;
pub mod signal;
pub mod telemetry;
pub mod webhooks;
