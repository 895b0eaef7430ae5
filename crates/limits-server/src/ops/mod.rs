//! Operating limitsd: metrics, logs and traces, signals. These are leaves:
//! they depend on no other module of the server.

pub mod metrics;
pub mod signal;
pub mod telemetry;
