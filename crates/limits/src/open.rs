//! Opening the store a config names.

use std::time::Duration;

use limits_store::{AnyStore, Bounds, MemoryStore};

use crate::config::{Config, ConfigError, Storage};

/// The longest a durable write waits for its group flush, whatever the
/// config says: the usage guide's `snapshot_interval: 5m` was a snapshot
/// period, and nobody wants a RecordUsage held for minutes.
pub const MAX_GROUP_WAIT: Duration = Duration::from_secs(1);

/// Why a limiter could not be made.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The config is wrong (the error names the key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The config names a backend this build was compiled without.
    #[error("limits.storage.backend: {0} is not in this build (its cargo feature is off)")]
    NotBuilt(&'static str),
    #[cfg(feature = "sled")]
    #[error(transparent)]
    /// The sled store could not be opened (its error names the path).
    Sled(#[from] limits_store::OpenError),
    #[cfg(feature = "redis")]
    #[error(transparent)]
    /// The Redis settings could not be used (a bad URL or TLS setting).
    Redis(#[from] limits_store::RedisOpenError),
}

/// Opens the configured store. A sled store is loaded from disk here,
/// dropping what expired while the service was down; a Redis store
/// connects on first use.
pub fn open_store(config: &Config) -> Result<AnyStore, OpenError> {
    match &config.storage {
        Storage::Memory { max_entries, .. } => {
            let bounds = Bounds {
                subjects: *max_entries,
                counters: config.rls.max_counters,
            };
            Ok(AnyStore::Memory(MemoryStore::with_options(
                bounds,
                config.secret.clone(),
            )))
        }
        #[cfg(feature = "sled")]
        Storage::Sled {
            path,
            snapshot_interval,
        } => {
            let options = limits_store::SledOptions {
                snapshot_interval: (*snapshot_interval).min(MAX_GROUP_WAIT),
                max_counters: config.rls.max_counters,
                secret: config.secret.clone(),
                ..limits_store::SledOptions::default()
            };
            let store = limits_store::SledStore::open(path, options, crate::now())?;
            Ok(AnyStore::Sled(store))
        }
        #[cfg(not(feature = "sled"))]
        Storage::Sled { .. } => Err(OpenError::NotBuilt("sled")),
        #[cfg(feature = "redis")]
        Storage::Redis(r) => {
            let options = limits_store::RedisOptions {
                url: r.url.clone(),
                nodes: r.nodes.clone(),
                cluster: r.cluster,
                password: r.password.clone(),
                key_prefix: r.key_prefix.clone(),
                connect_timeout: r.connect_timeout,
                command_timeout: r.command_timeout,
                max_entries: r.max_entries,
                max_counters: config.rls.max_counters,
                shards: r.shards,
                secret: config.secret.clone(),
            };
            Ok(AnyStore::Redis(limits_store::RedisStore::open(&options)?))
        }
        #[cfg(not(feature = "redis"))]
        Storage::Redis(_) => Err(OpenError::NotBuilt("redis")),
    }
}
