//! Helpers shared by the config tests: fixtures, sources, and assertions
//! on errors.

// Each test file uses some of these, none uses all.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use limits::config::{Config, ConfigError, Overrides, load, parse_str};
use limits_core::{Dimension, LimitKind, NanoUsd};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

pub fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

pub fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub fn write_temp(yaml: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    std::io::Write::write_all(&mut file, yaml.as_bytes()).expect("write temp file");
    file
}

pub fn load_fixture(name: &str) -> Config {
    load(Some(&fixture(name)), no_env(), &Overrides::default())
        .unwrap_or_else(|e| panic!("{name} should load: {e}"))
}

pub fn parse(yaml: &str) -> Config {
    parse_str(yaml).unwrap_or_else(|e| panic!("should load: {e}\n{yaml}"))
}

/// Asserts `yaml` is rejected with exactly `key` and a reason containing
/// `reason`, and that the message starts with the key.
#[track_caller]
pub fn assert_rejects(yaml: &str, key: &str, reason: &str) {
    match parse_str(yaml) {
        Ok(_) => panic!("should be rejected ({key}):\n{yaml}"),
        Err(e) => check_error(&e, key, reason),
    }
}

#[track_caller]
pub fn check_error(e: &ConfigError, key: &str, reason: &str) {
    assert_eq!(e.key, key, "wrong key in {e}");
    assert!(
        e.reason.contains(reason),
        "reason of {e:?} should contain {reason:?}"
    );
    assert_eq!(e.to_string(), format!("{}: {}", e.key, e.reason));
}

pub fn usd(x: f64) -> u64 {
    NanoUsd::try_from_usd(x).expect("valid amount").0
}

pub fn get(cfg: &Config, dimension: Dimension, id: &str, kind: LimitKind) -> Option<u64> {
    cfg.table.resolve(dimension, id).get(kind)
}

pub const FAMILIES: &str = r#"
limits:
  budgets:
    by_api_key:
      default: { daily: 10 }
      "budget-only": { daily: 50, alias: spender }
      "both": { daily: 70, alias: twice }
      "exempt": {}
  rate_limits:
    by_api_key:
      default: { requests_per_second: 5, max_concurrent: 2 }
      "rate-only": { requests_per_second: 20, alias: fast }
      "both": { requests_per_second: 30, alias: twice }
    by_user:
      default: { requests_per_minute: 60 }
"#;
