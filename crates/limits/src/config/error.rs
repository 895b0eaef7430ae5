//! The one error the loader gives, naming the key, and the rewriting of
//! figment's and serde's errors into it.

use figment::error::Kind;

use super::sources::{SOURCE_ENV, SOURCE_FLAGS, env_name};

/// A configuration value that cannot be used, naming its key.
///
/// `key` is the full dotted path (`limits.budgets.by_api_key.prod.daily`),
/// the name of an unknown environment variable, or the config file for
/// errors about the file as a whole.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// The key (or variable, or file) at fault.
    pub key: String,
    /// What is wrong with it, and what would be accepted.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

pub(crate) type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// Turns a figment extraction error into one naming the full key.
pub(crate) fn from_figment(error: figment::Error) -> ConfigError {
    let mut path = error.path.clone();
    let reason = describe(&error.kind, &mut path);
    let key = if path.is_empty() {
        "limits".to_owned()
    } else {
        path.join(".")
    };
    let from = match &error.metadata {
        Some(md) if md.name == SOURCE_ENV && path.len() > 1 => {
            format!(
                " (from environment variable {})",
                env_name(&path[1..].join("."))
            )
        }
        Some(md) if md.name == SOURCE_FLAGS => " (from a command-line flag)".to_owned(),
        _ => String::new(),
    };
    ConfigError::new(key, format!("{reason}{from}"))
}

/// The reason a deserialization failed, in the config's words. `path` is
/// the key it failed at; a missing (or unknown) field's own name is added to
/// it where the deserializer left it out, so the error names the key itself.
pub(crate) fn describe(kind: &Kind, path: &mut Vec<String>) -> String {
    match kind {
        Kind::UnknownField(field, expected) => {
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            format!("unknown key; expected one of: {}", expected.join(", "))
        }
        Kind::MissingField(field) => {
            if path.last().map(String::as_str) != Some(&**field) {
                path.push(field.to_string());
            }
            "required key is missing".to_owned()
        }
        Kind::InvalidType(actual, expected) => {
            format!("expected {}, found {actual}", friendly(expected))
        }
        Kind::InvalidValue(actual, expected) => {
            format!("invalid value {actual}, expected {}", friendly(expected))
        }
        other => other.to_string(),
    }
}

/// Serde's Rust type names, in words.
fn friendly(expected: &str) -> &str {
    match expected {
        "u64" | "usize" => "a whole number, 0 or more",
        "u32" => "a whole number from 0 to 4294967295",
        "f64" => "a number",
        "a boolean" => "true or false",
        "a sequence" => "a list",
        other => other,
    }
}
