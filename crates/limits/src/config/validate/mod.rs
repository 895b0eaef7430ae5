//! Validation: the raw config (what the sources said) turned into the
//! [`Config`] the engine runs on. Each key's own check comes from its
//! declaration; what is here is what spans several keys.

pub(crate) mod security;
mod server;
mod storage;
mod table;

use std::collections::BTreeMap;
use std::path::PathBuf;

use limits_core::enforcement::MAX_DOWNGRADE_STEPS;
use limits_core::{EnforcementMode, ModelPrice, Policy, Pricing, Thresholds};
use limits_store::Secret;

use super::error::{ConfigError, Result};
use super::keys::{IdMap, RawAlerts, RawLimits, RawPrice, RawSecurity};
use super::{AdminSettings, AlertsSettings, Config, LoggingSettings, MetricsSettings, Webhook};

pub(crate) fn validate(raw: RawLimits, rls_files: &[PathBuf]) -> Result<Config> {
    let mut warnings = Vec::new();

    // The root has no keys of its own; checking it keeps one added there
    // from going unchecked.
    raw.check()?;
    let budgets = raw.budgets.check()?;
    let rates = raw.rate_limits.check()?;
    let table = table::build(&raw, &budgets, rates.enabled)?;

    let enforcement = raw.enforcement.check()?;
    let downgrades = &raw.enforcement.model_downgrades;
    check_downgrades(downgrades)?;
    if enforcement.action == EnforcementMode::Downgrade && downgrades.is_empty() {
        warnings.push(
            "enforcement.action is downgrade but enforcement.model_downgrades is empty: \
             requests over a limit are blocked"
                .to_owned(),
        );
    }
    // The guide's single threshold is one more of the list.
    let listed = budgets.alert_thresholds.clone().unwrap_or_default();
    let all = listed
        .as_slice()
        .iter()
        .copied()
        .chain(budgets.alert_threshold);
    let thresholds = Thresholds::new(all).ok_or_else(|| {
        ConfigError::new(
            "limits.budgets.alert_thresholds",
            format!(
                "at most {} thresholds, alert_threshold included",
                limits_core::alerts::MAX_THRESHOLDS
            ),
        )
    })?;
    let policy = Policy {
        mode: enforcement.action,
        alert_threshold_ppm: budgets.alert_threshold.or(thresholds.lowest()),
        alert_thresholds: thresholds,
        downgrades: downgrades
            .iter()
            .map(|(from, to)| (from.clone(), to.clone()))
            .collect(),
        pricing: build_pricing(&raw.pricing)?,
    };

    let storage = storage::build(&raw.storage, &mut warnings)?;
    let server = server::build(&raw.server)?;
    let logging = raw.logging.check()?;
    let metrics = raw.metrics.check()?;
    let rls = crate::config::rls::build(&raw.rls, rls_files, &mut warnings)?;
    let secret = build_secret(&raw.security)?;
    let security = security::build(&raw.security)?;
    let admin = raw.admin.check()?;
    let alerts = build_alerts(&raw.alerts)?;

    Ok(Config {
        table,
        policy,
        queue_depth: enforcement.queue_depth,
        queue_timeout: enforcement.queue_timeout,
        reservation_ttl: enforcement.reservation_ttl,
        lease_ttl: rates.lease_ttl,
        storage,
        server,
        logging: LoggingSettings {
            format: logging.format,
            level: logging.level,
        },
        metrics: MetricsSettings {
            identifier_cap: metrics.identifier_cap,
            show_user_ids: metrics.show_user_ids,
            show_team_ids: metrics.show_team_ids,
        },
        rls,
        secret,
        security,
        admin: AdminSettings {
            audit_max_events: admin.audit_max_events,
            sync_interval: admin.sync_interval,
        },
        alerts,
        warnings,
    })
}

/// `limits.alerts`: the webhooks, each with a URL and a signing secret
/// from the environment, a file or (for tests) the file itself.
fn build_alerts(raw: &RawAlerts) -> Result<AlertsSettings> {
    let keys = raw.check()?;
    let mut webhooks = Vec::with_capacity(raw.webhooks.len());
    for (i, w) in raw.webhooks.iter().enumerate() {
        let at = |k: &str| format!("limits.alerts.webhooks[{i}].{k}");
        let url = match w.url.as_deref().map(str::trim) {
            None | Some("") => return Err(ConfigError::new(at("url"), "required key is missing")),
            Some(u) => u,
        };
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        if rest
            .is_none_or(|r| r.is_empty() || r.starts_with('/') || r.contains(char::is_whitespace))
        {
            return Err(ConfigError::new(
                at("url"),
                "must be an http:// or https:// URL with a host",
            ));
        }
        let given = [
            ("secret_env", w.secret_env.is_some()),
            ("secret_file", w.secret_file.is_some()),
            ("secret", w.secret.is_some()),
        ];
        let secret: Vec<u8> = match given.iter().filter(|(_, set)| *set).count() {
            0 => {
                return Err(ConfigError::new(
                    at("secret_env"),
                    "a signing secret is required: secret_env (a variable), secret_file or secret",
                ));
            }
            1 => {
                if let Some(name) = &w.secret_env {
                    std::env::var(name).map(String::into_bytes).map_err(|_| {
                        ConfigError::new(
                            at("secret_env"),
                            format!("the variable {name} is not set"),
                        )
                    })?
                } else if let Some(path) = &w.secret_file {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        ConfigError::new(at("secret_file"), format!("cannot read {path}: {e}"))
                    })?;
                    text.trim_end_matches(['\r', '\n']).as_bytes().to_vec()
                } else {
                    w.secret.clone().unwrap_or_default().into_bytes()
                }
            }
            _ => {
                return Err(ConfigError::new(
                    at("secret"),
                    "give one of secret_env, secret_file and secret",
                ));
            }
        };
        if secret.len() < 16 {
            return Err(ConfigError::new(
                at("secret"),
                "the signing secret must be at least 16 bytes",
            ));
        }
        let slack = match w.format.as_deref() {
            None | Some("json") => false,
            Some("slack") => true,
            Some(other) => {
                return Err(ConfigError::new(
                    at("format"),
                    format!("expected json or slack, got {other:?}"),
                ));
            }
        };
        webhooks.push(Webhook {
            url: url.to_owned(),
            secret: secret.into(),
            slack,
        });
    }
    Ok(AlertsSettings {
        webhooks,
        max_pending: keys.max_pending,
        max_attempts: keys.max_attempts,
    })
}

/// The secret is given inline or in a file, not both.
fn build_secret(raw: &RawSecurity) -> Result<Option<Secret>> {
    let keys = raw.check()?;
    match (keys.secret, keys.secret_file) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            "limits.security.secret_file",
            "set either limits.security.secret or limits.security.secret_file, not both",
        )),
        (Some(secret), None) => Ok(Some(secret)),
        (None, Some(path)) => {
            let key = "limits.security.secret_file";
            let text = std::fs::read(&path)
                .map_err(|e| ConfigError::new(key, format!("cannot read {path:?}: {e}")))?;
            Secret::new(text.trim_ascii())
                .map(Some)
                .map_err(|e| ConfigError::new(key, e.to_string()))
        }
        (None, None) => Ok(None),
    }
}

fn check_downgrades(map: &BTreeMap<String, String>) -> Result<()> {
    for (from, to) in map {
        let key = format!("limits.enforcement.model_downgrades.{from}");
        if from.trim().is_empty() {
            return Err(ConfigError::new(key, "model name must not be empty"));
        }
        if to.trim().is_empty() {
            return Err(ConfigError::new(key, "must name the model to downgrade to"));
        }
        if from == to {
            return Err(ConfigError::new(key, format!("maps {from:?} to itself")));
        }
        let mut chain = vec![from.as_str()];
        let mut next = Some(to.as_str());
        while let Some(model) = next {
            if chain.contains(&model) {
                chain.push(model);
                return Err(ConfigError::new(
                    key,
                    format!("downgrade chain loops: {}", chain.join(" -> ")),
                ));
            }
            chain.push(model);
            next = map.get(model).map(String::as_str);
        }
        if chain.len() - 1 > MAX_DOWNGRADE_STEPS {
            return Err(ConfigError::new(
                key,
                format!(
                    "downgrade chain has {} steps; at most {MAX_DOWNGRADE_STEPS} are followed",
                    chain.len() - 1
                ),
            ));
        }
    }
    Ok(())
}

fn build_pricing(raw: &IdMap<RawPrice>) -> Result<Pricing> {
    let mut pricing = Pricing::new();
    for (model, price) in raw {
        let price = price.check_at(&format!("limits.pricing.{model}"))?;
        pricing.insert(
            model.clone(),
            ModelPrice {
                input_per_1k: price.input_per_1k,
                output_per_1k: price.output_per_1k,
            },
        );
    }
    Ok(pricing)
}
