//! Loading a file: the defaults, the document's shape, YAML details, unknown
//! keys and what a file of the wrong shape is told.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use limits::config::{Config, ConfigError, LogFormat, Overrides, Storage, load, parse_str};
use limits_core::{Dimension, EnforcementMode, LimitKind, NanoUsd};

#[test]
fn no_file_and_no_env_gives_the_defaults() {
    let cfg = load(None, no_env(), &Overrides::default()).expect("defaults load");
    for dimension in Dimension::ALL {
        assert!(cfg.table.resolve(dimension, "anyone").is_unlimited());
        assert!(cfg.table.default_for(dimension).is_none());
    }
    assert_eq!(cfg.policy.mode, EnforcementMode::Block);
    assert_eq!(cfg.policy.alert_threshold_ppm, None);
    assert!(cfg.policy.downgrades.is_empty());
    assert!(cfg.policy.pricing.is_empty());
    assert_eq!(cfg.queue_depth, 100);
    assert_eq!(cfg.queue_timeout, Duration::from_secs(30));
    assert_eq!(cfg.reservation_ttl, Duration::from_secs(600));
    assert_eq!(cfg.lease_ttl, Duration::from_secs(600));
    assert_eq!(
        cfg.storage,
        Storage::Memory {
            max_entries: 100_000,
            cleanup_interval: Duration::from_secs(60),
        }
    );
    assert_eq!(
        cfg.server.grpc_addr,
        "0.0.0.0:50051".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        cfg.server.metrics_addr,
        "0.0.0.0:9090".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(cfg.server.shutdown_grace, Duration::from_secs(10));
    assert_eq!(cfg.logging.format, LogFormat::Pretty);
    assert_eq!(cfg.logging.level, "info");
    assert_eq!(cfg.metrics.identifier_cap, 1000);
    assert!(cfg.metrics.show_user_ids && cfg.metrics.show_team_ids);
    assert!(cfg.warnings.is_empty());

    let default = Config::default();
    assert_eq!(default.storage, cfg.storage);
    assert_eq!(default.server, cfg.server);
    assert_eq!(default.logging, cfg.logging);
    assert_eq!(default.metrics, cfg.metrics);
    assert_eq!(
        (
            default.queue_depth,
            default.queue_timeout,
            default.reservation_ttl,
            default.lease_ttl
        ),
        (
            cfg.queue_depth,
            cfg.queue_timeout,
            cfg.reservation_ttl,
            cfg.lease_ttl
        )
    );
}

#[test]
fn an_explicitly_empty_limits_mapping_gives_the_defaults() {
    let cfg = parse("limits: {}\n");
    assert_eq!(cfg.storage, Storage::default());
    assert_eq!(cfg.policy.mode, EnforcementMode::Block);
}

/// Regression: a `limits:` that is not a mapping, or a file that sets
/// nothing, validated and ran with no limits at all (a truncated ConfigMap
/// turned every limit off). Each is now an error naming the key.
#[test]
fn a_config_of_the_wrong_shape_is_refused_not_run_without_limits() {
    for (yaml, key, reason) in [
        ("", "config", "sets nothing"),
        ("# just a comment\n", "config", "sets nothing"),
        ("{}", "config", "sets nothing"),
        ("[1, 2]\n", "config", "found a list"),
        ("limits:\n", "limits", "is empty"),
        ("limits: ~\n", "limits", "is empty"),
        ("limits: [ {budgets: {}} ]\n", "limits", "found a list"),
        ("limits: 5\n", "limits", "found a number"),
        ("limits: \"x\"\n", "limits", "found a string"),
        ("limits: true\n", "limits", "found a boolean"),
        // A list where a mapping is expected (serde would read it by position).
        (
            "limits:\n  budgets: [true, 0.8]\n",
            "limits.budgets",
            "found a list",
        ),
        (
            "limits:\n  budgets:\n    by_api_key: [k]\n",
            "limits.budgets.by_api_key",
            "found a list",
        ),
        (
            "limits:\n  storage: [memory]\n",
            "limits.storage",
            "found a list",
        ),
        (
            "limits:\n  budgets:\n    by_team:\n      t: [1, 2, 3]\n",
            "limits.budgets.by_team.t",
            "found a list",
        ),
        // A string where a number is expected.
        (
            "limits:\n  budgets:\n    by_api_key:\n      k: { daily: \"50\" }\n",
            "limits.budgets.by_api_key.k.daily",
            "expected a number",
        ),
        (
            "limits:\n  rate_limits:\n    by_user:\n      u: { requests_per_minute: \"5\" }\n",
            "limits.rate_limits.by_user.u.requests_per_minute",
            "whole number",
        ),
        (
            "limits:\n  budgets:\n    enabled: \"false\"\n",
            "limits.budgets.enabled",
            "true or false",
        ),
        // A scalar where a mapping is expected.
        (
            "limits:\n  budgets: 5\n",
            "limits.budgets",
            "found unsigned int",
        ),
        (
            "limits:\n  budgets:\n    by_api_key:\n      k: 5\n",
            "limits.budgets.by_api_key.k",
            "found unsigned int",
        ),
        ("budgets: 5\n", "limits.budgets", "found unsigned int"),
    ] {
        let e = parse_str(yaml).expect_err(yaml);
        assert_eq!(e.key, key, "{yaml:?}: {e}");
        assert!(e.reason.contains(reason), "{yaml:?}: {e}");
    }
}

/// Merged with the environment, a value of the wrong shape in the file used
/// to be replaced by the variables' mapping and pass: it is reported.
#[test]
fn the_environment_cannot_hide_a_wrong_shape_in_the_file() {
    for yaml in [
        "limits: [1, 2]\n",
        "limits:\n  budgets: 5\n",
        "budgets: [1]\n",
    ] {
        let file = write_temp(yaml);
        let e = load(
            Some(file.path()),
            env(&[("MERCATOR_LIMITS_BUDGETS_ALERT_THRESHOLD", "0.5")]),
            &Overrides::default(),
        )
        .expect_err(yaml);
        assert!(e.key.starts_with("limits"), "{yaml:?}: {e}");
    }
}

/// Durations have a sane range, named in the error: a sweep every
/// nanosecond burnt a core while idle, and a lease for a billion years
/// never frees its slot.
#[test]
fn durations_out_of_range_are_refused_naming_the_key() {
    for (yaml, key) in [
        (
            "limits:\n  storage:\n    memory:\n      cleanup_interval: 1ns\n",
            "limits.storage.memory.cleanup_interval",
        ),
        (
            "limits:\n  server:\n    reload_interval: 1ns\n",
            "limits.server.reload_interval",
        ),
        (
            "limits:\n  rate_limits:\n    lease_ttl: 1000000000y\n",
            "limits.rate_limits.lease_ttl",
        ),
        (
            "limits:\n  enforcement:\n    reservation_ttl: 30d\n",
            "limits.enforcement.reservation_ttl",
        ),
        (
            "limits:\n  enforcement:\n    queue_timeout: 2days\n",
            "limits.enforcement.queue_timeout",
        ),
        (
            "limits:\n  server:\n    shutdown_grace: 1000h\n",
            "limits.server.shutdown_grace",
        ),
        (
            "limits:\n  storage:\n    redis:\n      command_timeout: 1h\n",
            "limits.storage.redis.command_timeout",
        ),
    ] {
        let e = parse_str(yaml).expect_err(yaml);
        assert_eq!(e.key, key, "{e}");
        assert!(e.reason.contains("must be between"), "{e}");
    }
    // Zero still turns polling off, and the guide's 5m snapshot loads.
    assert!(parse_str("limits:\n  server:\n    reload_interval: 0s\n").is_ok());
    assert!(parse_str("limits:\n  storage:\n    sled:\n      snapshot_interval: 5m\n").is_ok());
}

#[test]
fn other_top_level_keys_are_ignored_next_to_limits() {
    let cfg = parse(
        "app:\n  name: gateway\nproviders: [openai]\nlimits:\n  enforcement:\n    action: alert\n",
    );
    assert_eq!(cfg.policy.mode, EnforcementMode::Alert);
}

#[test]
fn null_and_empty_values_mean_not_set() {
    let cfg = parse(
        "limits:\n  budgets:\n    alert_threshold: ~\n    by_user:\n  storage:\n    backend:\n",
    );
    assert_eq!(cfg.policy.alert_threshold_ppm, None);
    assert_eq!(cfg.storage, Storage::default());
}

#[test]
fn numeric_ids_and_yaml_merge_keys_load() {
    let cfg = parse(
        r#"
limits:
  budgets:
    by_team:
      42: { daily: 5 }
  rate_limits:
    by_user:
      standard: &standard { requests_per_minute: 60, max_concurrent: 2 }
      "bob": { <<: *standard, max_concurrent: 4 }
"#,
    );
    assert_eq!(
        get(&cfg, Dimension::Team, "42", LimitKind::BudgetDaily),
        Some(usd(5.0))
    );
    let bob = cfg.table.resolve(Dimension::User, "bob");
    assert_eq!(bob.get(LimitKind::RequestsPerMinute), Some(60));
    assert_eq!(bob.get(LimitKind::MaxConcurrent), Some(4));
}

#[test]
fn every_setting_is_parsed() {
    let cfg = parse(
        r#"
limits:
  budgets: { alert_threshold: 0.95 }
  rate_limits: { lease_ttl: 90s }
  enforcement:
    action: QUEUE
    queue_depth: 7
    queue_timeout: 1500ms
    reservation_ttl: 2m
  pricing:
    gpt-4: { input_per_1k: 0.03, output_per_1k: 0 }
  storage:
    backend: memory
    memory: { max_entries: 10, cleanup_interval: 5s }
  server: { grpc_addr: "[::1]:0", metrics_addr: "127.0.0.1:0", shutdown_grace: 0s }
  logging: { format: json, level: "info,limits_server=debug" }
  metrics: { identifier_cap: 50, show_user_ids: false, show_team_ids: false }
"#,
    );
    assert_eq!(cfg.policy.alert_threshold_ppm, Some(950_000));
    assert_eq!(cfg.lease_ttl, Duration::from_secs(90));
    assert_eq!(cfg.policy.mode, EnforcementMode::Queue);
    assert_eq!(cfg.queue_depth, 7);
    assert_eq!(cfg.queue_timeout, Duration::from_millis(1500));
    assert_eq!(cfg.reservation_ttl, Duration::from_secs(120));
    let price = cfg.policy.pricing.get("gpt-4").expect("priced");
    assert_eq!(price.input_per_1k, NanoUsd(usd(0.03)));
    assert_eq!(price.output_per_1k, NanoUsd::ZERO);
    assert_eq!(
        cfg.storage,
        Storage::Memory {
            max_entries: 10,
            cleanup_interval: Duration::from_secs(5),
        }
    );
    assert_eq!(
        cfg.server.grpc_addr,
        "[::1]:0".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(cfg.server.shutdown_grace, Duration::ZERO);
    assert_eq!(cfg.logging.format, LogFormat::Json);
    assert_eq!(cfg.logging.level, "info,limits_server=debug");
    assert_eq!(cfg.metrics.identifier_cap, 50);
    assert!(!cfg.metrics.show_user_ids && !cfg.metrics.show_team_ids);
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    assert_rejects(
        "limits:\n  budgets:\n    by_api_key:\n      k:\n        dialy: 5\n",
        "limits.budgets.by_api_key.k.dialy",
        "unknown key",
    );
    assert_rejects(
        "limits:\n  budget:\n    enabled: true\n",
        "limits.budget",
        "unknown key",
    );
    assert_rejects(
        "limits:\n  enforcement:\n    mode: block\n",
        "limits.enforcement.mode",
        "unknown key",
    );
    assert_rejects(
        "storage:\n  redis:\n    uri: redis://x\n",
        "limits.storage.redis.uri",
        "unknown key",
    );
    assert_rejects(
        "pricing:\n  gpt-4: { input_per_1k: 1, output_per_1k: 1, cached_per_1k: 1 }\n",
        "limits.pricing.gpt-4.cached_per_1k",
        "unknown key",
    );
}

#[test]
fn misshapen_documents_are_rejected() {
    assert_rejects(
        "budgets: 5\n",
        "limits.budgets",
        "expected a mapping of budget settings",
    );
    assert_rejects(
        "budgets:\n  by_api_key: [a, b]\n",
        "limits.budgets.by_api_key",
        "expected a map",
    );
    assert_rejects("- one\n- two\n", "config", "top level must be a mapping");
    assert_rejects("budgets: {\n", "config", "invalid YAML");
    assert_rejects(
        "budgets:\n  by_api_key:\n    k: { daily: 1 }\n    k: { daily: 2 }\n",
        "config",
        "duplicate",
    );
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let path = repo_root().join("tests/fixtures/does-not-exist.yaml");
    let e = load(Some(&path), no_env(), &Overrides::default()).expect_err("missing file");
    check_error(&e, &path.display().to_string(), "cannot read config file");
}

#[test]
fn config_and_error_have_the_expected_traits() {
    fn clone_debug<T: Clone + std::fmt::Debug>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    clone_debug::<Config>();
    error::<ConfigError>();
}
