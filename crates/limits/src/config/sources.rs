//! The three sources of the config, each as a figment provider shaped as
//! `{limits: {...}}`: the YAML file, the `MERCATOR_LIMITS_*` environment and
//! the command-line flags.

use std::path::Path;

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

use super::declare::{Key, join};
use super::error::{ConfigError, Result};
use super::keys::SECTIONS;
use super::setting::EnvKind;
use super::{ENV_PREFIX, Overrides, yaml};

/// Names of the sources, as figment metadata; errors use them to say where a
/// bad value came from.
pub(crate) const SOURCE_FILE: &str = "YAML file";
pub(crate) const SOURCE_STRING: &str = "YAML string";
pub(crate) const SOURCE_ENV: &str = "environment";
pub(crate) const SOURCE_FLAGS: &str = "command-line flags";

/// One source's values, already shaped as `{limits: {...}}`.
#[derive(Debug)]
pub(crate) struct SourceDict {
    metadata: Metadata,
    pub(crate) dict: Dict,
    /// `(full key, where it came from)` for each value of an environment or
    /// flag source.
    pub(crate) origins: Vec<(String, String)>,
}

impl Provider for SourceDict {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Map::from([(Profile::Default, self.dict.clone())]))
    }
}

// ---------------------------------------------------------------------------
// The file.
// ---------------------------------------------------------------------------

pub(crate) fn read_file(path: &Path) -> Result<SourceDict> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(&origin, format!("cannot read config file: {e}")))?;
    parse_yaml(&text, Metadata::from(SOURCE_FILE, path), &origin)
}

/// Parses YAML text and puts it under `limits` unless it already is.
pub(crate) fn parse_yaml(text: &str, metadata: Metadata, origin: &str) -> Result<SourceDict> {
    let value =
        yaml::parse(text).map_err(|e| ConfigError::new(origin, format!("invalid YAML: {e}")))?;
    // A file that sets nothing would run with no limits at all: refuse it,
    // so that an empty or truncated file (a ConfigMap caught mid-update)
    // cannot turn every limit off, at start-up or on reload.
    let mut top = match value {
        Value::Dict(_, dict) if !dict.is_empty() => dict,
        Value::Dict(..) | Value::Empty(..) => {
            return Err(ConfigError::new(
                origin,
                "the file sets nothing (it is empty or holds only comments); a config file \
                 needs a `limits:` mapping",
            ));
        }
        other => {
            return Err(ConfigError::new(
                origin,
                format!(
                    "the top level must be a mapping with a `limits:` key, found {}",
                    yaml::shape(&other)
                ),
            ));
        }
    };
    let mut limits = match top.remove("limits") {
        // `limits: {}` says, on purpose, "no limits": allowed.
        Some(Value::Dict(_, d)) => Value::from(d),
        // `limits:` with nothing after it is what a truncated file looks like.
        Some(Value::Empty(..)) => {
            return Err(ConfigError::new(
                "limits",
                "is empty: it must be a mapping of settings (budgets, rate_limits, ...); \
                 write `limits: {}` to run without limits on purpose",
            ));
        }
        Some(other) => {
            return Err(ConfigError::new(
                "limits",
                format!(
                    "must be a mapping of settings (budgets, rate_limits, ...), found {}",
                    yaml::shape(&other)
                ),
            ));
        }
        // The guide's fragments: the whole document is the limits section.
        None => Value::from(top),
    };
    yaml::strip_nulls(&mut limits);
    Ok(SourceDict {
        metadata,
        dict: Dict::from([("limits".to_owned(), limits)]),
        origins: Vec::new(),
    })
}

/// The keys (by path, `*` for any list index) whose value is a list.
/// serde accepts a list for a struct too (its fields by position), so
/// `budgets: [true, 0.8]` would silently mean something: a list anywhere
/// else is an error.
const LIST_KEYS: &[&str] = &[
    "limits.rls.domains",
    "limits.rls.domains.*.tokens",
    "limits.rls.config_files",
    "limits.storage.redis.nodes",
    "limits.security.tokens",
    "limits.security.clients",
    "limits.alerts.webhooks",
];

/// Keys whose value is a list wherever they are (the section's and each
/// entry's, under ids that may contain dots).
const LIST_NAMES: &[&str] = &["alert_thresholds"];

fn is_list_key(path: &str) -> bool {
    LIST_KEYS.contains(&path)
        || path
            .rsplit_once('.')
            .is_some_and(|(_, name)| LIST_NAMES.contains(&name))
}

pub(crate) fn check_lists(value: &Value, path: &str) -> Result<()> {
    match value {
        Value::Dict(_, dict) => {
            for (k, v) in dict {
                check_lists(v, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        Value::Array(_, items) => {
            if !is_list_key(path) {
                return Err(ConfigError::new(
                    path,
                    "expected a mapping or a single value, found a list",
                ));
            }
            for v in items {
                check_lists(v, &format!("{path}.*"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// The environment.
// ---------------------------------------------------------------------------

/// Every key of the fixed sections, relative to `limits.`, with how the
/// environment sets it (`None`: in the file only).
pub(crate) fn section_keys() -> impl Iterator<Item = (String, Option<EnvKind>)> {
    SECTIONS
        .iter()
        .filter(|section| section.fixed)
        .flat_map(|section| {
            section
                .keys
                .iter()
                .map(|&Key { name, env }| (join(section.at, name), env))
        })
}

/// Every key the environment can set, relative to `limits.`.
pub(crate) fn env_keys() -> impl Iterator<Item = (String, EnvKind)> {
    section_keys().filter_map(|(key, env)| Some((key, env?)))
}

/// `budgets.alert_threshold` -> `MERCATOR_LIMITS_BUDGETS_ALERT_THRESHOLD`.
pub(crate) fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Builds the environment source. Names are matched whole against the known
/// keys' names rather than split at `_`, since keys such as `rate_limits` and
/// `alert_threshold` contain underscores themselves.
pub(crate) fn env_source(env: impl IntoIterator<Item = (String, String)>) -> Result<SourceDict> {
    let mut limits = Dict::new();
    let mut origins = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        // Deployment templates often define a variable and leave it empty to
        // mean "not set"; treating that as a value would break them.
        if raw.is_empty() {
            continue;
        }
        let wanted = rest.to_ascii_uppercase();
        let found =
            section_keys().find(|(key, _)| key.replace('.', "_").eq_ignore_ascii_case(&wanted));
        let (key, kind) = match found {
            Some((key, Some(kind))) => (key, kind),
            Some((key, None)) => {
                return Err(ConfigError::new(
                    &name,
                    format!("limits.{key} is set in the config file only"),
                ));
            }
            None => return Err(ConfigError::new(&name, unknown_env_reason(&name))),
        };
        insert_path(&mut limits, &key, env_value(&raw, kind));
        origins.push((
            format!("limits.{key}"),
            format!("environment variable {name}"),
        ));
    }
    Ok(SourceDict {
        metadata: Metadata::named(SOURCE_ENV),
        dict: Dict::from([("limits".to_owned(), Value::from(limits))]),
        origins,
    })
}

fn unknown_env_reason(name: &str) -> String {
    let mut reason = String::from("unknown setting: no config key has this environment name");
    let closest = env_keys()
        .map(|(key, _)| env_name(&key))
        .map(|candidate| (strsim::levenshtein(name, &candidate), candidate))
        .min();
    match closest {
        Some((distance, candidate)) if distance <= 3 => {
            reason.push_str(&format!("; did you mean {candidate}?"));
        }
        _ => {
            reason.push_str(
                " (per-id limits, model_downgrades and pricing are set in the file only)",
            );
        }
    }
    reason
}

fn env_value(raw: &str, kind: EnvKind) -> Value {
    let text = raw.trim();
    match kind {
        EnvKind::Bool => Value::from(text)
            .to_bool_lossy()
            .map_or_else(|| Value::from(text), Value::from),
        // Parsed here rather than with figment's parser, which reads short
        // decimals such as "0.8" as f32 and so loses precision.
        EnvKind::Number => {
            if let Ok(n) = text.parse::<u64>() {
                Value::from(n)
            } else if let Ok(n) = text.parse::<i64>() {
                Value::from(n)
            } else if let Ok(n) = text.parse::<f64>() {
                Value::from(n)
            } else {
                // Left as text, so extraction reports a type error naming
                // the key and the variable.
                Value::from(text)
            }
        }
        EnvKind::Text => Value::from(text),
    }
}

/// Sets `a.b.c` in `dict`, creating the intermediate tables.
fn insert_path(dict: &mut Dict, dotted: &str, value: Value) {
    let mut parts = dotted.split('.').peekable();
    let mut current = dict;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            current.insert(part.to_owned(), value);
            return;
        }
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| Value::from(Dict::new()));
        if !matches!(entry, Value::Dict(..)) {
            *entry = Value::from(Dict::new());
        }
        let Value::Dict(_, next) = entry else {
            return;
        };
        current = next;
    }
}

// ---------------------------------------------------------------------------
// The flags.
// ---------------------------------------------------------------------------

pub(crate) fn flag_source(overrides: &Overrides) -> SourceDict {
    let mut limits = Dict::new();
    let mut origins = Vec::new();
    let flags = [
        ("server.grpc_addr", "--grpc-addr", overrides.grpc_addr),
        (
            "server.metrics_addr",
            "--metrics-addr",
            overrides.metrics_addr,
        ),
    ];
    for (key, flag, addr) in flags {
        if let Some(addr) = addr {
            insert_path(&mut limits, key, Value::from(addr.to_string()));
            origins.push((format!("limits.{key}"), format!("the {flag} flag")));
        }
    }
    SourceDict {
        metadata: Metadata::named(SOURCE_FLAGS),
        dict: Dict::from([("limits".to_owned(), Value::from(limits))]),
        origins,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_are_unique_and_match_the_guide() {
        let names: Vec<String> = env_keys().map(|(key, _)| env_name(&key)).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        for guide in [
            "MERCATOR_LIMITS_BUDGETS_ENABLED",
            "MERCATOR_LIMITS_BUDGETS_ALERT_THRESHOLD",
            "MERCATOR_LIMITS_RATE_LIMITS_ENABLED",
            "MERCATOR_LIMITS_ENFORCEMENT_ACTION",
            "MERCATOR_LIMITS_STORAGE_BACKEND",
            "MERCATOR_LIMITS_STORAGE_SQLITE_PATH",
        ] {
            assert!(names.iter().any(|n| n == guide), "{guide}");
        }
    }

    #[test]
    fn insert_path_builds_nested_tables() {
        let mut dict = Dict::new();
        insert_path(&mut dict, "storage.sqlite.path", Value::from("/x"));
        insert_path(&mut dict, "storage.backend", Value::from("sqlite"));
        let storage = dict
            .get("storage")
            .and_then(Value::as_dict)
            .expect("storage table");
        assert!(storage.contains_key("backend"));
        assert!(storage.get("sqlite").and_then(Value::as_dict).is_some());
    }
}
