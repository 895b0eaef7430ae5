//! Hot reload of limits: when the config file changes (including a
//! Kubernetes ConfigMap update, which swaps a `..data` symlink instead of
//! writing the file) or on SIGHUP, the file is loaded and validated again and
//! swapped in whole (with the rate limit rule files it names, whose
//! changes are watched too). Counters, reservations and leases live in the store and
//! are untouched; a subject's new limits apply from its next check. A bad
//! new file is rejected with a log line and a failure metric, and the old
//! limits stay in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use limits_store::AnyStore;

use crate::api::Shared;
use crate::config::{self, Config, Overrides};
use crate::ops::metrics as m;

/// What the watcher compares: the file's bytes, read through any symlinks,
/// so a swapped ConfigMap symlink counts as a change even when timestamps
/// do not move.
fn fingerprint(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    Some(ahash::RandomState::with_seeds(1, 2, 3, 4).hash_one(&bytes))
}

/// The config file's fingerprint combined with those of the rate limit
/// rule files the running config loaded, so an edit to a rule file reloads
/// too. `None` while the config file itself cannot be read.
fn fingerprint_all(shared: &Shared<AnyStore>, path: &Path) -> Option<u64> {
    let main = fingerprint(path)?;
    let config = shared.limiter.config();
    let rules: Vec<Option<u64>> = config
        .rls
        .config_files
        .iter()
        .map(|f| fingerprint(f))
        .collect();
    Some(ahash::RandomState::with_seeds(1, 2, 3, 4).hash_one((main, rules)))
}

/// Settings that only take effect at start-up.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.storage != new.storage {
        changed.push("limits.storage");
    }
    if old.server != new.server {
        changed.push("limits.server");
    }
    if old.logging != new.logging {
        changed.push("limits.logging");
    }
    if old.metrics != new.metrics {
        changed.push("limits.metrics");
    }
    if old.secret != new.secret {
        changed.push("limits.security.secret");
    }
    if old.admin.sync_interval != new.admin.sync_interval {
        changed.push("limits.admin.sync_interval");
    }
    if old.alerts != new.alerts {
        changed.push("limits.alerts");
    }
    changed
}

/// Loads the file again and swaps it in, or keeps the old config.
pub fn reload(shared: &Shared<AnyStore>, path: &Path, overrides: &Overrides, why: &str) -> bool {
    match config::load_from_env(Some(path), overrides) {
        Ok(new) => {
            let old = shared.limiter.config();
            for key in restart_only_changes(&old, &new) {
                tracing::warn!(
                    key,
                    "config change needs a restart to take effect; keeping the running value"
                );
            }
            // Keep the start-up-only sections as they run.
            let new = Config {
                storage: old.storage.clone(),
                server: old.server.clone(),
                logging: old.logging.clone(),
                metrics: old.metrics.clone(),
                secret: old.secret.clone(),
                // The webhooks' delivery tasks run from start-up; events
                // are kept for those webhooks only.
                alerts: old.alerts.clone(),
                admin: limits::config::AdminSettings {
                    sync_interval: old.admin.sync_interval,
                    ..new.admin
                },
                ..new
            };
            shared.limiter.reload(new);
            metrics::counter!(m::CONFIG_RELOADS, "result" => "success").increment(1);
            tracing::info!(path = %path.display(), trigger = why, "config reloaded");
            // New limits may admit what is queued.
            shared.queues.wake_all();
            true
        }
        Err(e) => {
            metrics::counter!(m::CONFIG_RELOADS, "result" => "failure").increment(1);
            tracing::error!(
                path = %path.display(),
                trigger = why,
                error = %e,
                "config reload rejected; the previous limits stay in force"
            );
            false
        }
    }
}

/// What the watcher starts from, taken when the config was loaded (before
/// anything is served), so that a change or a SIGHUP in between is not
/// missed.
#[derive(Debug)]
pub struct Watch {
    last: Option<u64>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Watch {
    /// Listens for SIGHUP from now on, and notes what the files hold now.
    pub fn start(shared: &Shared<AnyStore>, path: &Path) -> Watch {
        Watch {
            last: fingerprint_all(shared, path),
            #[cfg(unix)]
            hup: match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; reload on file change only");
                    None
                }
            },
        }
    }
}

/// Watches `path` (polling every `interval`; zero turns polling off) and
/// SIGHUP, reloading on either.
pub async fn watch(
    shared: Arc<Shared<AnyStore>>,
    path: PathBuf,
    overrides: Overrides,
    interval: Duration,
    from: Watch,
) {
    let mut last = from.last;
    #[cfg(unix)]
    let mut hup = from.hup;
    let mut tick = tokio::time::interval(if interval.is_zero() {
        Duration::from_secs(3600)
    } else {
        interval
    });
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        tokio::select! {
            () = hangup => {
                last = fingerprint_all(&shared, &path);
                reload(&shared, &path, &overrides, "SIGHUP");
            }
            _ = tick.tick(), if !interval.is_zero() => {
                // A reload that names other rule files changes the
                // fingerprint once more: one extra, harmless reload.
                let now = fingerprint_all(&shared, &path);
                if now.is_some() && now != last {
                    last = now;
                    reload(&shared, &path, &overrides, "file change");
                }
            }
        }
    }
}
