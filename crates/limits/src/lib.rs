//! limitsd as a library: the limits engine (`limits-core`), its stores
//! (`limits-store`) and the config they run on, read from the same YAML
//! files and `MERCATOR_LIMITS_*` environment as the service, behind one
//! facade, [`Limiter`].
//!
//! A Rust gateway (or a proxy built on Pingora, hyper or axum) embeds the
//! same engine limitsd serves over gRPC, without a network hop: check
//! before a model call (holding its estimate), record after it, acquire and
//! release a concurrency slot around it. The semantics, the errors and the
//! reasons are limitsd's own: its handlers only convert messages and call
//! this crate.
//!
//! Storage backends are cargo features: `sled` (the durable embedded store)
//! and `redis` (shared by several replicas), both on by default. With
//! `default-features = false` only the memory store is compiled.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod alerts;
pub mod config;
mod error;
pub mod explain;
pub mod identity;
pub mod ids;
mod limiter;
mod open;
pub mod runtime;
mod scoped;
pub mod validate;

pub use config::rls;
pub use error::Error;
pub use explain::Queued;
pub use limiter::{
    Acquired, Check, CheckRequest, Decision, Limiter, Limits, RecordRequest, Recorded, Usage, now,
    usd,
};
pub use limits_core::{
    Action, Denial, Dimension, LimitKind, LimitStatus, NanoUsd, Nanos, Subject, SubjectLimits,
};
pub use limits_store::{AnyStore, Health, Secret, Store, StoreError};
pub use open::{MAX_GROUP_WAIT, OpenError, open_store};
pub use runtime::Source;

/// The longest TTL a caller may ask for a reservation or a lease (and the
/// longest configured one).
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
