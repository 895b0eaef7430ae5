//! `limits.storage`: the backend and its settings.

use crate::config::error::{ConfigError, Result};
use crate::config::keys::{Backend, RawStorage};
use crate::config::setting::RedisUrl;
use crate::config::{RedisSettings, Storage};

pub(super) fn build(raw: &RawStorage, warnings: &mut Vec<String>) -> Result<Storage> {
    let backend = raw.check()?.backend;
    // Every section is checked, selected or not, so switching the backend
    // later cannot surface an old mistake.
    let memory = raw.memory.check()?;
    let sled = raw.sled.check()?;
    let sqlite = raw.sqlite.check()?;
    let redis = redis_settings(raw)?;
    let (name, path, snapshot_interval) = match backend {
        Backend::Memory => {
            return Ok(Storage::Memory {
                max_entries: memory.max_entries,
                cleanup_interval: memory.cleanup_interval,
            });
        }
        Backend::Redis => return Ok(Storage::Redis(redis)),
        Backend::Sled => ("sled", sled.path, sled.snapshot_interval),
        Backend::Sqlite => ("sqlite", sqlite.path, sqlite.snapshot_interval),
    };
    let Some(path) = path else {
        return Err(ConfigError::new(
            format!("limits.storage.{name}.path"),
            format!("required when limits.storage.backend is {name}"),
        ));
    };
    if backend == Backend::Sqlite {
        warnings.push(format!(
            "storage.backend: sqlite is served by the embedded sled store at {}",
            path.display()
        ));
    }
    Ok(Storage::Sled {
        path,
        snapshot_interval,
    })
}

fn redis_settings(raw: &RawStorage) -> Result<RedisSettings> {
    let keys = raw.redis.check()?;
    Ok(RedisSettings {
        url: keys.url,
        nodes: raw
            .redis
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| RedisUrl::parse(&format!("limits.storage.redis.nodes.{i}"), n))
            .collect::<Result<_>>()?,
        cluster: keys.cluster,
        password: keys.password,
        key_prefix: keys.key_prefix,
        connect_timeout: keys.connect_timeout,
        command_timeout: keys.command_timeout,
        max_entries: keys.max_entries,
        shards: keys.shards,
        fail_open: keys.fail_open,
    })
}
