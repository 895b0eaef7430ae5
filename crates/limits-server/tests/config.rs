//! Config loading: the usage guide's examples, the example config, defaults,
//! the environment and flag overrides, and an error naming the key for every
//! kind of bad value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use limits_core::{Dimension, EnforcementMode, LimitKind, NanoUsd};
use limits_server::config::{
    self, Config, ConfigError, LogFormat, Overrides, Storage, env_vars, load, parse_str,
};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load_fixture(name: &str) -> Config {
    load(Some(&fixture(name)), no_env(), &Overrides::default())
        .unwrap_or_else(|e| panic!("{name} should load: {e}"))
}

fn parse(yaml: &str) -> Config {
    parse_str(yaml).unwrap_or_else(|e| panic!("should load: {e}\n{yaml}"))
}

/// Asserts `yaml` is rejected with exactly `key` and a reason containing
/// `reason`, and that the message starts with the key.
#[track_caller]
fn assert_rejects(yaml: &str, key: &str, reason: &str) {
    match parse_str(yaml) {
        Ok(_) => panic!("should be rejected ({key}):\n{yaml}"),
        Err(e) => check_error(&e, key, reason),
    }
}

#[track_caller]
fn check_error(e: &ConfigError, key: &str, reason: &str) {
    assert_eq!(e.key, key, "wrong key in {e}");
    assert!(
        e.reason.contains(reason),
        "reason of {e:?} should contain {reason:?}"
    );
    assert_eq!(e.to_string(), format!("{}: {}", e.key, e.reason));
}

fn usd(x: f64) -> u64 {
    NanoUsd::try_from_usd(x).expect("valid amount").0
}

fn get(cfg: &Config, dimension: Dimension, id: &str, kind: LimitKind) -> Option<u64> {
    cfg.table.resolve(dimension, id).get(kind)
}

// ---------------------------------------------------------------------------
// The usage guide's examples load unchanged.
// ---------------------------------------------------------------------------

#[test]
fn guide_quick_start_loads() {
    let cfg = load_fixture("guide_quick_start.yaml");
    let key = "my-api-key";
    assert_eq!(
        get(&cfg, Dimension::ApiKey, key, LimitKind::BudgetDaily),
        Some(usd(100.0))
    );
    assert_eq!(
        get(&cfg, Dimension::ApiKey, key, LimitKind::BudgetMonthly),
        Some(usd(2500.0))
    );
    assert_eq!(
        get(&cfg, Dimension::ApiKey, key, LimitKind::RequestsPerSecond),
        Some(10)
    );
    assert_eq!(
        get(&cfg, Dimension::ApiKey, key, LimitKind::TokensPerMinute),
        Some(100_000)
    );
    assert_eq!(
        get(&cfg, Dimension::ApiKey, key, LimitKind::BudgetHourly),
        None
    );
    assert!(cfg.table.resolve(Dimension::ApiKey, "other").is_unlimited());
    assert_eq!(cfg.policy.alert_threshold_ppm, Some(800_000));
    assert_eq!(cfg.policy.mode, EnforcementMode::Block);
    assert_eq!(cfg.storage, Storage::default());
    assert!(cfg.warnings.is_empty());
}

#[test]
fn guide_budgets_fragment_loads() {
    let cfg = load_fixture("guide_budgets.yaml");
    assert_eq!(cfg.policy.alert_threshold_ppm, Some(800_000));
    let prod = cfg.table.resolve(Dimension::ApiKey, "production-key");
    assert_eq!(prod.get(LimitKind::BudgetHourly), Some(usd(10.0)));
    assert_eq!(prod.get(LimitKind::BudgetDaily), Some(usd(200.0)));
    assert_eq!(prod.get(LimitKind::BudgetMonthly), Some(usd(5000.0)));
    assert_eq!(
        get(
            &cfg,
            Dimension::User,
            "alice@example.com",
            LimitKind::BudgetDaily
        ),
        Some(usd(50.0))
    );
    assert_eq!(
        get(
            &cfg,
            Dimension::Team,
            "engineering",
            LimitKind::BudgetMonthly
        ),
        Some(usd(10_000.0))
    );
}

#[test]
fn guide_rate_limits_fragment_loads() {
    let cfg = load_fixture("guide_rate_limits.yaml");
    let limits: Vec<(LimitKind, u64)> = cfg
        .table
        .resolve(Dimension::ApiKey, "production-key")
        .all()
        .collect();
    assert_eq!(
        limits,
        [
            (LimitKind::RequestsPerSecond, 10),
            (LimitKind::RequestsPerMinute, 500),
            (LimitKind::RequestsPerHour, 10_000),
            (LimitKind::TokensPerMinute, 100_000),
            (LimitKind::TokensPerHour, 1_000_000),
            (LimitKind::MaxConcurrent, 20),
        ]
    );
}

#[test]
fn guide_enforcement_fragment_loads() {
    let cfg = load_fixture("guide_enforcement.yaml");
    assert_eq!(cfg.policy.mode, EnforcementMode::Block);
    assert_eq!(cfg.queue_depth, 100);
    assert_eq!(cfg.queue_timeout, Duration::from_secs(30));
    assert_eq!(cfg.policy.downgrades.len(), 3);
    assert_eq!(
        cfg.policy.downgrades.get("gpt-4-turbo").map(String::as_str),
        Some("gpt-3.5-turbo")
    );
}

#[test]
fn guide_storage_fragment_maps_sqlite_onto_sled_with_a_warning() {
    let cfg = load_fixture("guide_storage.yaml");
    assert_eq!(
        cfg.storage,
        Storage::Sled {
            path: PathBuf::from("/var/lib/mercator/limits.db"),
            snapshot_interval: Duration::from_secs(300),
        }
    );
    assert_eq!(
        cfg.warnings,
        [
            "storage.backend: sqlite is served by the embedded sled store at /var/lib/mercator/limits.db"
        ]
    );
}

#[test]
fn guide_best_practice_fragments_load() {
    let cfg = load_fixture("guide_best_practice_1_conservative_limits.yaml");
    assert_eq!(
        get(
            &cfg,
            Dimension::ApiKey,
            "new-customer",
            LimitKind::BudgetDaily
        ),
        Some(usd(10.0))
    );

    let cfg = load_fixture("guide_best_practice_2_alert_thresholds.yaml");
    assert_eq!(cfg.policy.alert_threshold_ppm, Some(800_000));

    // A bare `by_api_key` with both kinds of limit in one entry.
    let cfg = load_fixture("guide_best_practice_3_combined_limits.yaml");
    let prod = cfg.table.resolve(Dimension::ApiKey, "production-key");
    assert_eq!(prod.get(LimitKind::RequestsPerSecond), Some(10));
    assert_eq!(prod.get(LimitKind::BudgetDaily), Some(usd(100.0)));

    let cfg = load_fixture("guide_best_practice_4_model_downgrades.yaml");
    assert_eq!(cfg.policy.mode, EnforcementMode::Downgrade);
    assert_eq!(
        cfg.policy.downgrades.get("gpt-4").map(String::as_str),
        Some("gpt-3.5-turbo")
    );

    let cfg = load_fixture("guide_best_practice_6_sqlite.yaml");
    assert_eq!(
        cfg.storage,
        Storage::Sled {
            path: PathBuf::from("/var/lib/mercator/limits.db"),
            snapshot_interval: config::DEFAULT_SNAPSHOT_INTERVAL,
        }
    );
    assert_eq!(cfg.warnings.len(), 1);
}

/// The guide's best practice 5 is a Prometheus rules file, not a limits
/// config: it is kept as a fixture to show such a file is refused by name
/// rather than loaded as "no limits".
#[test]
fn guide_prometheus_rules_block_is_not_a_limits_config() {
    let e = load(
        Some(&fixture("guide_best_practice_5_prometheus_rules.yaml")),
        no_env(),
        &Overrides::default(),
    )
    .expect_err("a Prometheus rules file is not a limits config");
    check_error(&e, "limits.groups", "unknown key");
}

#[test]
fn guide_troubleshooting_fragments_load() {
    let cfg = load_fixture("guide_troubleshooting_1_enabled.yaml");
    assert!(cfg.table.resolve(Dimension::ApiKey, "any").is_unlimited());

    let cfg = load_fixture("guide_troubleshooting_2_identifier.yaml");
    assert_eq!(
        get(
            &cfg,
            Dimension::ApiKey,
            "your-api-key",
            LimitKind::BudgetDaily
        ),
        Some(usd(100.0))
    );

    let cfg = load_fixture("guide_troubleshooting_3_increase_limits.yaml");
    assert_eq!(
        get(&cfg, Dimension::ApiKey, "key", LimitKind::RequestsPerSecond),
        Some(20)
    );

    let cfg = load_fixture("guide_troubleshooting_4_memory.yaml");
    assert_eq!(
        cfg.storage,
        Storage::Memory {
            max_entries: 100_000,
            cleanup_interval: Duration::from_secs(60),
        }
    );

    // A sqlite section alone does not select the backend.
    let cfg = load_fixture("guide_troubleshooting_5_sqlite_paths.yaml");
    assert_eq!(cfg.storage, Storage::default());
    assert!(cfg.warnings.is_empty());
}

/// Every `guide_*` fixture but the Prometheus rules loads, so a fixture added
/// later is covered without a new test.
#[test]
fn every_guide_fixture_loads() {
    let mut count = 0;
    for entry in std::fs::read_dir(repo_root().join("tests/fixtures")).expect("fixtures dir") {
        let name = entry
            .expect("dir entry")
            .file_name()
            .into_string()
            .expect("utf-8");
        if name.starts_with("guide_") && name.ends_with(".yaml") && !name.contains("prometheus") {
            load_fixture(&name);
            count += 1;
        }
    }
    assert_eq!(count, 15);
}

#[test]
fn example_config_loads() {
    let path = repo_root().join("config/example.yaml");
    let cfg = load(Some(&path), no_env(), &Overrides::default())
        .unwrap_or_else(|e| panic!("config/example.yaml: {e}"));
    assert_eq!(
        cfg.storage,
        Storage::Sled {
            path: PathBuf::from("./data/limits.sled"),
            snapshot_interval: Duration::from_millis(10),
        }
    );
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    assert_eq!(
        cfg.server.grpc_addr,
        "127.0.0.1:50051".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        cfg.server.metrics_addr,
        "127.0.0.1:9090".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(cfg.policy.mode, EnforcementMode::Downgrade);
    assert_eq!(cfg.policy.downgrades.len(), 4);
    for model in [
        "gpt-4",
        "gpt-4-turbo",
        "gpt-3.5-turbo",
        "claude-3-opus",
        "claude-3-sonnet",
    ] {
        assert!(cfg.policy.pricing.get(model).is_some(), "{model} is priced");
    }
    let prod = cfg.table.resolve(Dimension::ApiKey, "sk-prod-7f3a9c");
    assert_eq!(prod.alias(), Some("checkout-service"));
    assert_eq!(prod.get(LimitKind::BudgetDaily), Some(usd(400.0)));
    assert_eq!(prod.get(LimitKind::MaxConcurrent), Some(32));
    // Unlisted keys take both families' defaults.
    let other = cfg.table.resolve(Dimension::ApiKey, "sk-unknown");
    assert_eq!(other.get(LimitKind::BudgetDaily), Some(usd(20.0)));
    assert_eq!(other.get(LimitKind::RequestsPerSecond), Some(5));
    // Research is listed under budgets only, and teams have no rate default.
    let research = cfg.table.resolve(Dimension::Team, "research");
    assert_eq!(research.get(LimitKind::BudgetMonthly), Some(usd(25_000.0)));
    assert_eq!(research.get(LimitKind::RequestsPerHour), None);
}

// ---------------------------------------------------------------------------
// Defaults and document shape.
// ---------------------------------------------------------------------------

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
fn downgrade_mode_without_downgrades_warns() {
    let cfg = parse("enforcement:\n  action: downgrade\n");
    assert_eq!(cfg.warnings.len(), 1);
    assert!(
        cfg.warnings[0].contains("model_downgrades"),
        "{:?}",
        cfg.warnings
    );
}

// ---------------------------------------------------------------------------
// `default` entries, the family merge and the enabled switches.
// ---------------------------------------------------------------------------

const FAMILIES: &str = r#"
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

#[test]
fn default_entry_applies_to_unlisted_ids_only() {
    let cfg = parse(FAMILIES);
    let unlisted = cfg.table.resolve(Dimension::ApiKey, "someone-else");
    assert_eq!(unlisted.get(LimitKind::BudgetDaily), Some(usd(10.0)));
    assert_eq!(unlisted.get(LimitKind::RequestsPerSecond), Some(5));
    assert_eq!(unlisted.get(LimitKind::MaxConcurrent), Some(2));
    assert!(!cfg.table.is_listed(Dimension::ApiKey, "someone-else"));
    // The id "default" is the default, not a listed id.
    assert!(!cfg.table.is_listed(Dimension::ApiKey, "default"));
    // A user default does not leak into teams.
    assert_eq!(
        get(&cfg, Dimension::User, "carol", LimitKind::RequestsPerMinute),
        Some(60)
    );
    assert!(cfg.table.resolve(Dimension::Team, "t").is_unlimited());
}

#[test]
fn an_id_listed_in_one_family_takes_the_other_familys_default() {
    let cfg = parse(FAMILIES);
    let budget_only = cfg.table.resolve(Dimension::ApiKey, "budget-only");
    assert_eq!(budget_only.get(LimitKind::BudgetDaily), Some(usd(50.0)));
    assert_eq!(budget_only.get(LimitKind::RequestsPerSecond), Some(5));
    assert_eq!(budget_only.alias(), Some("spender"));

    let rate_only = cfg.table.resolve(Dimension::ApiKey, "rate-only");
    assert_eq!(rate_only.get(LimitKind::BudgetDaily), Some(usd(10.0)));
    assert_eq!(rate_only.get(LimitKind::RequestsPerSecond), Some(20));
    // max_concurrent is not in rate-only's own entry, and the entry replaces
    // the rate default as a whole.
    assert_eq!(rate_only.get(LimitKind::MaxConcurrent), None);
    assert_eq!(rate_only.alias(), Some("fast"));

    let both = cfg.table.resolve(Dimension::ApiKey, "both");
    assert_eq!(both.get(LimitKind::BudgetDaily), Some(usd(70.0)));
    assert_eq!(both.get(LimitKind::RequestsPerSecond), Some(30));
    assert_eq!(both.alias(), Some("twice"));
}

#[test]
fn an_empty_entry_exempts_an_id_from_its_familys_default() {
    let cfg = parse(FAMILIES);
    let exempt = cfg.table.resolve(Dimension::ApiKey, "exempt");
    assert_eq!(exempt.get(LimitKind::BudgetDaily), None);
    assert_eq!(exempt.get(LimitKind::RequestsPerSecond), Some(5));
}

#[test]
fn conflicting_aliases_are_rejected() {
    assert_rejects(
        "budgets:\n  by_user:\n    u: { daily: 1, alias: a }\nrate_limits:\n  by_user:\n    u: { requests_per_second: 1, alias: b }\n",
        "limits.rate_limits.by_user.u.alias",
        "conflicts with alias \"a\" set by limits.budgets.by_user.u.alias",
    );
}

#[test]
fn budgets_disabled_removes_every_budget_limit() {
    let yaml = FAMILIES.replace("  budgets:\n", "  budgets:\n    enabled: false\n");
    let cfg = parse(&yaml);
    for id in ["someone-else", "budget-only", "rate-only", "both"] {
        let limits = cfg.table.resolve(Dimension::ApiKey, id);
        assert!(!limits.has_budget(), "{id} has no budget");
    }
    assert_eq!(
        get(
            &cfg,
            Dimension::ApiKey,
            "both",
            LimitKind::RequestsPerSecond
        ),
        Some(30)
    );
    // Listed only under the disabled family: falls to the rate default.
    assert!(!cfg.table.is_listed(Dimension::ApiKey, "budget-only"));
    assert_eq!(
        get(
            &cfg,
            Dimension::ApiKey,
            "budget-only",
            LimitKind::RequestsPerSecond
        ),
        Some(5)
    );
}

#[test]
fn rate_limits_disabled_removes_every_rate_and_concurrency_limit() {
    let yaml = FAMILIES.replace("  rate_limits:\n", "  rate_limits:\n    enabled: false\n");
    let cfg = parse(&yaml);
    for id in ["someone-else", "budget-only", "rate-only", "both"] {
        let limits = cfg.table.resolve(Dimension::ApiKey, id);
        assert!(
            limits.all().all(|(kind, _)| kind.is_budget()),
            "{id} has budget limits only"
        );
    }
    assert!(cfg.table.resolve(Dimension::User, "carol").is_unlimited());
    assert_eq!(
        get(&cfg, Dimension::ApiKey, "rate-only", LimitKind::BudgetDaily),
        Some(usd(10.0))
    );
}

#[test]
fn combined_entries_set_both_families() {
    let cfg = parse(
        "by_user:\n  default: { daily: 1, requests_per_minute: 10 }\n  alice: { requests_per_minute: 100, alias: al }\n",
    );
    let alice = cfg.table.resolve(Dimension::User, "alice");
    assert_eq!(alice.get(LimitKind::RequestsPerMinute), Some(100));
    // A combined entry sets all of the id's limits: no budget default.
    assert_eq!(alice.get(LimitKind::BudgetDaily), None);
    assert_eq!(alice.alias(), Some("al"));
    let bob = cfg.table.resolve(Dimension::User, "bob");
    assert_eq!(bob.get(LimitKind::BudgetDaily), Some(usd(1.0)));
    assert_eq!(bob.get(LimitKind::RequestsPerMinute), Some(10));

    assert_rejects(
        "by_user:\n  alice: { daily: 1 }\nbudgets:\n  by_user:\n    alice: { daily: 2 }\n",
        "limits.by_user.alice",
        "also listed under limits.budgets.by_user",
    );
}

// ---------------------------------------------------------------------------
// Environment and flags.
// ---------------------------------------------------------------------------

const FILE_FOR_ENV: &str = "\
limits:
  budgets:
    enabled: false
    alert_threshold: 0.5
    by_api_key:
      k: { daily: 10 }
  rate_limits:
    enabled: false
    by_api_key:
      k: { requests_per_second: 3 }
  enforcement:
    action: block
  storage:
    backend: memory
    sqlite:
      path: /from/file.db
";

fn write_temp(yaml: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    std::io::Write::write_all(&mut file, yaml.as_bytes()).expect("write temp file");
    file
}

#[test]
fn the_guides_environment_variables_override_the_file() {
    let file = write_temp(FILE_FOR_ENV);
    let cfg = load(
        Some(file.path()),
        env(&[
            ("MERCATOR_LIMITS_BUDGETS_ENABLED", "true"),
            ("MERCATOR_LIMITS_BUDGETS_ALERT_THRESHOLD", "0.8"),
            ("MERCATOR_LIMITS_RATE_LIMITS_ENABLED", "true"),
            ("MERCATOR_LIMITS_ENFORCEMENT_ACTION", "downgrade"),
            ("MERCATOR_LIMITS_STORAGE_BACKEND", "sqlite"),
            ("MERCATOR_LIMITS_STORAGE_SQLITE_PATH", "/data/limits.db"),
            ("PATH", "/usr/bin"),
            ("HOME", "/root"),
        ]),
        &Overrides::default(),
    )
    .expect("loads");
    assert_eq!(
        get(&cfg, Dimension::ApiKey, "k", LimitKind::BudgetDaily),
        Some(usd(10.0))
    );
    assert_eq!(
        get(&cfg, Dimension::ApiKey, "k", LimitKind::RequestsPerSecond),
        Some(3)
    );
    assert_eq!(cfg.policy.alert_threshold_ppm, Some(800_000));
    assert_eq!(cfg.policy.mode, EnforcementMode::Downgrade);
    assert_eq!(
        cfg.storage,
        Storage::Sled {
            path: PathBuf::from("/data/limits.db"),
            snapshot_interval: config::DEFAULT_SNAPSHOT_INTERVAL,
        }
    );
    assert_eq!(
        cfg.warnings
            .iter()
            .filter(|w| w.contains("/data/limits.db"))
            .count(),
        1,
        "{:?}",
        cfg.warnings
    );

    // Without the environment the file's values stand.
    let cfg = load(Some(file.path()), no_env(), &Overrides::default()).expect("loads");
    assert!(cfg.table.resolve(Dimension::ApiKey, "k").is_unlimited());
    assert_eq!(cfg.policy.mode, EnforcementMode::Block);
}

#[test]
fn the_environment_disables_families() {
    let cfg = load(
        None,
        env(&[
            ("MERCATOR_LIMITS_BUDGETS_ENABLED", "false"),
            ("MERCATOR_LIMITS_RATE_LIMITS_ENABLED", "off"),
        ]),
        &Overrides::default(),
    )
    .expect("loads");
    assert!(cfg.table.resolve(Dimension::ApiKey, "k").is_unlimited());

    let file = write_temp(FAMILIES);
    let cfg = load(
        Some(file.path()),
        env(&[("MERCATOR_LIMITS_BUDGETS_ENABLED", "FALSE")]),
        &Overrides::default(),
    )
    .expect("loads");
    assert!(!cfg.table.resolve(Dimension::ApiKey, "both").has_budget());
}

/// Every environment variable the loader knows is accepted with a valid
/// value, so the name table and the raw layout cannot drift apart.
#[test]
fn every_environment_variable_sets_its_key() {
    let samples = [
        ("limits.budgets.enabled", "yes"),
        ("limits.budgets.alert_threshold", "0.9"),
        ("limits.rate_limits.enabled", "1"),
        ("limits.rate_limits.lease_ttl", "2m"),
        ("limits.enforcement.action", "queue"),
        ("limits.enforcement.queue_depth", "250"),
        ("limits.enforcement.queue_timeout", "45s"),
        ("limits.enforcement.reservation_ttl", "3m"),
        ("limits.storage.backend", "sled"),
        ("limits.storage.memory.max_entries", "5000"),
        ("limits.storage.memory.cleanup_interval", "10s"),
        ("limits.storage.sled.path", "/data/sled"),
        ("limits.storage.sled.snapshot_interval", "20ms"),
        ("limits.storage.sqlite.path", "/data/lite.db"),
        ("limits.storage.sqlite.snapshot_interval", "1s"),
        ("limits.storage.redis.url", "redis://redis:6379"),
        ("limits.storage.redis.cluster", "true"),
        ("limits.storage.redis.password", "pw"),
        ("limits.storage.redis.key_prefix", "fleet"),
        ("limits.storage.redis.connect_timeout", "2s"),
        ("limits.storage.redis.command_timeout", "300ms"),
        ("limits.storage.redis.max_entries", "5000"),
        ("limits.storage.redis.fail_open", "yes"),
        ("limits.server.grpc_addr", "127.0.0.1:7000"),
        ("limits.server.metrics_addr", "127.0.0.1:7001"),
        ("limits.server.shutdown_grace", "3s"),
        ("limits.server.reload_interval", "5s"),
        ("limits.logging.format", "json"),
        ("limits.logging.level", "debug"),
        ("limits.metrics.identifier_cap", "12"),
        ("limits.metrics.show_user_ids", "false"),
        ("limits.metrics.show_team_ids", "no"),
        ("limits.security.secret", "an environment secret of length"),
        // Checked on its own below: a file and an inline secret conflict.
        ("limits.security.secret_file", ""),
        ("limits.rls.max_counters", "777"),
        ("limits.server.max_request_bytes", "32KiB"),
        ("limits.server.memory_budget", "16777216"),
        ("limits.server.max_in_flight", "99"),
        ("limits.server.max_connections", "98"),
        ("limits.server.max_concurrent_streams", "97"),
    ];
    let vars: Vec<(String, String)> = env_vars().collect();
    assert_eq!(vars.len(), samples.len());
    let mut pairs = Vec::new();
    for (name, key) in &vars {
        let value = samples
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no sample value for {key}"))
            .1;
        assert_eq!(
            *name,
            format!(
                "MERCATOR_LIMITS_{}",
                key["limits.".len()..].replace('.', "_").to_uppercase()
            )
        );
        pairs.push((name.clone(), value.to_owned()));
    }
    let cfg = load(None, pairs, &Overrides::default()).expect("every variable loads");
    assert_eq!(cfg.policy.alert_threshold_ppm, Some(900_000));
    assert_eq!(cfg.lease_ttl, Duration::from_secs(120));
    assert_eq!(cfg.policy.mode, EnforcementMode::Queue);
    assert_eq!(cfg.queue_depth, 250);
    assert_eq!(cfg.queue_timeout, Duration::from_secs(45));
    assert_eq!(cfg.reservation_ttl, Duration::from_secs(180));
    assert_eq!(
        cfg.storage,
        Storage::Sled {
            path: PathBuf::from("/data/sled"),
            snapshot_interval: Duration::from_millis(20),
        }
    );
    assert_eq!(
        cfg.server.grpc_addr,
        "127.0.0.1:7000".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        cfg.server.metrics_addr,
        "127.0.0.1:7001".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(cfg.server.shutdown_grace, Duration::from_secs(3));
    assert_eq!(cfg.logging.format, LogFormat::Json);
    assert_eq!(cfg.logging.level, "debug");
    assert_eq!(cfg.metrics.identifier_cap, 12);
    assert!(!cfg.metrics.show_user_ids && !cfg.metrics.show_team_ids);
    assert_eq!(
        cfg.secret,
        Some(limits_store::Secret::new(b"an environment secret of length").unwrap())
    );
    assert_eq!(cfg.rls.max_counters, 777);
    assert_eq!(cfg.server.max_request_bytes, 32 * 1024);
    assert_eq!(cfg.server.memory_budget, 16 * 1024 * 1024);
    assert_eq!(
        (
            cfg.server.max_in_flight,
            cfg.server.max_connections,
            cfg.server.max_concurrent_streams
        ),
        (99, 98, 97)
    );

    let file = write_temp("  a file secret, with a newline after it\n");
    let cfg = load(
        None,
        env(&[(
            "MERCATOR_LIMITS_SECURITY_SECRET_FILE",
            file.path().to_str().unwrap(),
        )]),
        &Overrides::default(),
    )
    .expect("loads");
    assert_eq!(
        cfg.secret,
        Some(limits_store::Secret::new(b"a file secret, with a newline after it").unwrap())
    );
}

#[test]
fn a_bad_secret_names_its_key() {
    let e = parse_str("limits:\n  security:\n    secret: short\n").unwrap_err();
    assert_eq!(e.key, "limits.security.secret");
    assert!(e.reason.contains("at least 16 bytes"), "{e}");
    let e =
        parse_str("limits:\n  security:\n    secret: 0123456789abcdef0123\n    secret_file: /x\n")
            .unwrap_err();
    assert_eq!(e.key, "limits.security.secret_file");
    let e = parse_str("limits:\n  security:\n    secret_file: /no/such/file\n").unwrap_err();
    assert_eq!(e.key, "limits.security.secret_file");
    assert!(e.reason.contains("cannot read"), "{e}");
}

#[test]
fn a_bad_environment_value_names_the_key_and_the_variable() {
    let e = load(
        None,
        env(&[("MERCATOR_LIMITS_BUDGETS_ALERT_THRESHOLD", "abc")]),
        &Overrides::default(),
    )
    .expect_err("abc is not a number");
    check_error(&e, "limits.budgets.alert_threshold", "expected a number");
    assert!(
        e.reason.contains("MERCATOR_LIMITS_BUDGETS_ALERT_THRESHOLD"),
        "{e}"
    );

    let cases = [
        (
            "MERCATOR_LIMITS_BUDGETS_ALERT_THRESHOLD",
            "1.5",
            "limits.budgets.alert_threshold",
        ),
        (
            "MERCATOR_LIMITS_BUDGETS_ENABLED",
            "maybe",
            "limits.budgets.enabled",
        ),
        (
            "MERCATOR_LIMITS_ENFORCEMENT_ACTION",
            "deny",
            "limits.enforcement.action",
        ),
        (
            "MERCATOR_LIMITS_ENFORCEMENT_QUEUE_DEPTH",
            "-3",
            "limits.enforcement.queue_depth",
        ),
        (
            "MERCATOR_LIMITS_ENFORCEMENT_QUEUE_TIMEOUT",
            "soon",
            "limits.enforcement.queue_timeout",
        ),
        (
            "MERCATOR_LIMITS_SERVER_GRPC_ADDR",
            "localhost:1",
            "limits.server.grpc_addr",
        ),
        (
            "MERCATOR_LIMITS_STORAGE_BACKEND",
            "postgres",
            "limits.storage.backend",
        ),
    ];
    for (name, value, key) in cases {
        let e = load(None, env(&[(name, value)]), &Overrides::default())
            .expect_err(&format!("{name}={value} is invalid"));
        assert_eq!(e.key, key, "{name}={value}: {e}");
        // Type errors and validation errors alike say which variable it was.
        assert!(
            e.reason
                .contains(&format!("(from environment variable {name})")),
            "{e}"
        );
    }
}

#[test]
fn a_bad_value_in_the_file_does_not_blame_the_environment() {
    let file = write_temp("limits:\n  enforcement:\n    action: deny\n");
    let e = load(
        Some(file.path()),
        env(&[("MERCATOR_LIMITS_STORAGE_BACKEND", "memory")]),
        &Overrides::default(),
    )
    .expect_err("deny is not an action");
    check_error(&e, "limits.enforcement.action", "unknown value \"deny\"");
    assert!(!e.reason.contains("environment"), "{e}");
}

#[test]
fn a_flag_that_clashes_with_the_file_names_the_flag() {
    let file = write_temp("limits:\n  server:\n    grpc_addr: 127.0.0.1:7000\n");
    let flags = Overrides {
        grpc_addr: None,
        metrics_addr: Some("127.0.0.1:7000".parse().unwrap()),
        ..Overrides::default()
    };
    let e = load(Some(file.path()), no_env(), &flags).expect_err("same port twice");
    check_error(
        &e,
        "limits.server.metrics_addr",
        "(from the --metrics-addr flag)",
    );
}

#[test]
fn an_unknown_environment_variable_is_an_error_naming_it() {
    let e = load(
        None,
        env(&[("MERCATOR_LIMITS_ENFORCMENT_ACTION", "block")]),
        &Overrides::default(),
    )
    .expect_err("typo");
    check_error(
        &e,
        "MERCATOR_LIMITS_ENFORCMENT_ACTION",
        "did you mean MERCATOR_LIMITS_ENFORCEMENT_ACTION?",
    );

    let e = load(
        None,
        env(&[("MERCATOR_LIMITS_BUDGETS_BY_API_KEY_PROD_DAILY", "5")]),
        &Overrides::default(),
    )
    .expect_err("per-id limits are file-only");
    check_error(
        &e,
        "MERCATOR_LIMITS_BUDGETS_BY_API_KEY_PROD_DAILY",
        "file only",
    );
}

#[test]
fn empty_environment_values_are_ignored() {
    let cfg = load(
        None,
        env(&[
            ("MERCATOR_LIMITS_ENFORCEMENT_ACTION", ""),
            ("MERCATOR_LIMITS_STORAGE_BACKEND", ""),
        ]),
        &Overrides::default(),
    )
    .expect("loads");
    assert_eq!(cfg.policy.mode, EnforcementMode::Block);
    assert_eq!(cfg.storage, Storage::default());
}

#[test]
fn flags_override_the_file_and_the_environment() {
    let file = write_temp(
        "limits:\n  server:\n    grpc_addr: 127.0.0.1:1001\n    metrics_addr: not-an-address\n",
    );
    let flags = Overrides {
        grpc_addr: Some("127.0.0.1:3003".parse().unwrap()),
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..Overrides::default()
    };
    let vars = env(&[("MERCATOR_LIMITS_SERVER_GRPC_ADDR", "127.0.0.1:2002")]);
    // The flag replaces the bad file value before it is checked.
    let cfg = load(Some(file.path()), vars.clone(), &flags).expect("loads");
    assert_eq!(
        cfg.server.grpc_addr,
        "127.0.0.1:3003".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        cfg.server.metrics_addr,
        "127.0.0.1:0".parse::<SocketAddr>().unwrap()
    );

    let only_metrics = Overrides {
        grpc_addr: None,
        ..flags
    };
    let cfg = load(Some(file.path()), vars, &only_metrics).expect("loads");
    assert_eq!(
        cfg.server.grpc_addr,
        "127.0.0.1:2002".parse::<SocketAddr>().unwrap()
    );
}

#[test]
fn load_from_env_reads_the_file() {
    // The process environment of a test run carries no MERCATOR_LIMITS_
    // variables; this only checks the convenience wiring.
    if std::env::vars().any(|(k, _)| k.starts_with(config::ENV_PREFIX)) {
        return;
    }
    let cfg = config::load_from_env(
        Some(&fixture("guide_quick_start.yaml")),
        &Overrides::default(),
    )
    .expect("loads");
    assert_eq!(cfg.policy.alert_threshold_ppm, Some(800_000));
}

// ---------------------------------------------------------------------------
// Every bad value is an error naming its key.
// ---------------------------------------------------------------------------

#[test]
fn bad_budgets_are_rejected() {
    let budget = |v: &str| {
        format!("limits:\n  budgets:\n    by_api_key:\n      prod:\n        daily: {v}\n")
    };
    let key = "limits.budgets.by_api_key.prod.daily";
    assert_rejects(&budget("-5"), key, "must not be negative");
    assert_rejects(&budget("0"), key, "must be greater than 0");
    assert_rejects(&budget("0.0"), key, "must be greater than 0");
    assert_rejects(&budget(".nan"), key, "must be a finite number");
    assert_rejects(&budget(".inf"), key, "must be a finite number");
    assert_rejects(&budget("1e10"), key, "must be at most");
    assert_rejects(&budget("lots"), key, "expected a number");
    assert_eq!(
        parse_str(&budget("0")).unwrap_err().to_string(),
        "limits.budgets.by_api_key.prod.daily: must be greater than 0"
    );
    assert_rejects(
        "by_team:\n  eng:\n    monthly: -1\n",
        "limits.by_team.eng.monthly",
        "must not be negative",
    );
    assert_rejects(
        "budgets:\n  by_user:\n    u:\n      alias: \"\"\n",
        "limits.budgets.by_user.u.alias",
        "must not be empty",
    );
}

#[test]
fn bad_alert_thresholds_are_rejected() {
    let key = "limits.budgets.alert_threshold";
    for bad in ["1.5", "0", "-0.1", ".nan"] {
        assert_rejects(
            &format!("budgets:\n  alert_threshold: {bad}\n"),
            key,
            "greater than 0 and at most 1",
        );
    }
    assert_rejects(
        "budgets:\n  alert_threshold: high\n",
        key,
        "expected a number",
    );
    assert_eq!(
        parse("budgets:\n  alert_threshold: 1\n")
            .policy
            .alert_threshold_ppm,
        Some(1_000_000)
    );
}

#[test]
fn bad_rate_limits_are_rejected() {
    let rate =
        |field: &str, v: &str| format!("rate_limits:\n  by_user:\n    bob:\n      {field}: {v}\n");
    for field in [
        "requests_per_second",
        "requests_per_minute",
        "requests_per_hour",
        "tokens_per_minute",
        "tokens_per_hour",
        "max_concurrent",
    ] {
        let key = format!("limits.rate_limits.by_user.bob.{field}");
        assert_rejects(&rate(field, "0"), &key, "must be greater than 0");
        assert_rejects(&rate(field, "-1"), &key, "expected a whole number");
        assert_rejects(&rate(field, "1.5"), &key, "expected a whole number");
    }
    assert_rejects(
        &rate("max_concurrent", "5000000000"),
        "limits.rate_limits.by_user.bob.max_concurrent",
        "from 0 to 4294967295",
    );
    assert_rejects(
        "rate_limits:\n  lease_ttl: 0s\n",
        "limits.rate_limits.lease_ttl",
        "must be greater than 0",
    );
}

#[test]
fn bad_enforcement_is_rejected() {
    assert_rejects(
        "enforcement:\n  action: deny\n",
        "limits.enforcement.action",
        "expected one of: block, queue, downgrade, alert",
    );
    assert_rejects(
        "enforcement:\n  queue_depth: 0\n",
        "limits.enforcement.queue_depth",
        "must be greater than 0",
    );
    assert_rejects(
        "enforcement:\n  queue_timeout: thirty\n",
        "limits.enforcement.queue_timeout",
        "invalid duration",
    );
    assert_rejects(
        "enforcement:\n  queue_timeout: 0s\n",
        "limits.enforcement.queue_timeout",
        "must be greater than 0",
    );
    assert_rejects(
        "enforcement:\n  queue_timeout: 30\n",
        "limits.enforcement.queue_timeout",
        "expected a duration with a unit, such as \"30s\"",
    );
    assert_rejects(
        "enforcement:\n  reservation_ttl: 5 parsecs\n",
        "limits.enforcement.reservation_ttl",
        "invalid duration",
    );
}

#[test]
fn downgrade_cycles_and_self_maps_are_rejected() {
    assert_rejects(
        "enforcement:\n  model_downgrades:\n    gpt-4: gpt-4\n",
        "limits.enforcement.model_downgrades.gpt-4",
        "to itself",
    );
    assert_rejects(
        "enforcement:\n  model_downgrades:\n    a: b\n    b: a\n",
        "limits.enforcement.model_downgrades.a",
        "loops: a -> b -> a",
    );
    assert_rejects(
        "enforcement:\n  model_downgrades:\n    a: b\n    b: c\n    c: b\n",
        "limits.enforcement.model_downgrades.a",
        "loops: a -> b -> c -> b",
    );
    let long: String = (0..17)
        .map(|i| format!("    m{i:02}: m{:02}\n", i + 1))
        .collect();
    assert_rejects(
        &format!("enforcement:\n  model_downgrades:\n{long}"),
        "limits.enforcement.model_downgrades.m00",
        "17 steps",
    );
    assert_rejects(
        "enforcement:\n  model_downgrades:\n    a: \"\"\n",
        "limits.enforcement.model_downgrades.a",
        "must name the model",
    );
}

#[test]
fn bad_pricing_is_rejected() {
    assert_rejects(
        "pricing:\n  gpt-4:\n    input_per_1k: -0.03\n    output_per_1k: 0.06\n",
        "limits.pricing.gpt-4.input_per_1k",
        "must not be negative",
    );
    assert_rejects(
        "pricing:\n  gpt-4:\n    input_per_1k: 0.03\n    output_per_1k: .nan\n",
        "limits.pricing.gpt-4.output_per_1k",
        "finite",
    );
    assert_rejects(
        "pricing:\n  gpt-4:\n    input_per_1k: 0.03\n",
        "limits.pricing.gpt-4.output_per_1k",
        "required key is missing",
    );
}

#[test]
fn bad_storage_is_rejected() {
    assert_rejects(
        "storage:\n  backend: sled\n",
        "limits.storage.sled.path",
        "required when limits.storage.backend is sled",
    );
    assert_rejects(
        "storage:\n  backend: sqlite\n",
        "limits.storage.sqlite.path",
        "required when limits.storage.backend is sqlite",
    );
    // The sled section does not stand in for a missing sqlite path.
    assert_rejects(
        "storage:\n  backend: sqlite\n  sled:\n    path: /x\n",
        "limits.storage.sqlite.path",
        "required",
    );
    assert_rejects(
        "storage:\n  backend: sled\n  sled:\n    path: \"\"\n",
        "limits.storage.sled.path",
        "must not be empty",
    );
    assert_rejects(
        "storage:\n  backend: postgres\n",
        "limits.storage.backend",
        "expected one of: memory, sled, sqlite, redis",
    );
    assert_rejects(
        "storage:\n  memory:\n    max_entries: 0\n",
        "limits.storage.memory.max_entries",
        "must be greater than 0",
    );
    assert_rejects(
        "storage:\n  memory:\n    cleanup_interval: 0s\n",
        "limits.storage.memory.cleanup_interval",
        "must be greater than 0",
    );
    assert_rejects(
        "storage:\n  sqlite:\n    snapshot_interval: often\n",
        "limits.storage.sqlite.snapshot_interval",
        "invalid duration",
    );
}

#[test]
fn bad_server_logging_and_metrics_are_rejected() {
    assert_rejects(
        "server:\n  grpc_addr: localhost:50051\n",
        "limits.server.grpc_addr",
        "expected IP:PORT",
    );
    assert_rejects(
        "server:\n  grpc_addr: 127.0.0.1:7000\n  metrics_addr: 127.0.0.1:7000\n",
        "limits.server.metrics_addr",
        "different ports",
    );
    assert_rejects(
        "server:\n  shutdown_grace: forever\n",
        "limits.server.shutdown_grace",
        "invalid duration",
    );
    assert_rejects(
        "logging:\n  format: xml\n",
        "limits.logging.format",
        "expected one of: json, pretty",
    );
    assert_rejects(
        "logging:\n  level: \"\"\n",
        "limits.logging.level",
        "must not be empty",
    );
    assert_rejects(
        "logging:\n  level: \"info,limits_server=loud\"\n",
        "limits.logging.level",
        "invalid filter",
    );
    assert_rejects(
        "metrics:\n  identifier_cap: 0\n",
        "limits.metrics.identifier_cap",
        "must be greater than 0",
    );
    assert_rejects(
        "metrics:\n  show_user_ids: sometimes\n",
        "limits.metrics.show_user_ids",
        "expected true or false",
    );
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

// ---------------------------------------------------------------------------
// limits.rls: Envoy's rate limit service API.
// ---------------------------------------------------------------------------

/// Writes `files` into a fresh temp dir and loads `yaml` with every
/// relative path resolved there (by naming them absolutely).
fn load_rls(yaml: &str, files: &[(&str, &str)], flags: &[&str]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = yaml.to_owned();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        yaml = yaml.replace(&format!("@{name}"), &path.display().to_string());
    }
    let overrides = Overrides {
        rls_config: flags.iter().map(|f| dir.path().join(f)).collect(),
        ..Overrides::default()
    };
    let config = dir.path().join("limits.yaml");
    std::fs::write(&config, yaml).unwrap();
    load(Some(&config), no_env(), &overrides)
}

#[test]
fn rls_is_off_until_something_is_configured() {
    let cfg = parse("limits: {}\n");
    assert!(!cfg.rls.enabled && !cfg.rls.dry_run && !cfg.rls.ietf_headers);
    assert!(cfg.rls.domains.is_empty());

    let cfg = parse(
        r#"
limits:
  rls:
    dry_run: true
    ietf_headers: true
    domains:
      - domain: gateway
        shadow_mode: true
        subjects: { api_key: x-api-key, user: user_id, team: team }
        tokens: [llm_tokens, tokens_out]
"#,
    );
    assert!(cfg.rls.enabled, "on by default once a domain is configured");
    assert!(cfg.rls.dry_run && cfg.rls.ietf_headers);
    let mapping = cfg.rls.domains["gateway"].mapping.as_ref().unwrap();
    assert!(mapping.shadow_mode);
    assert_eq!(mapping.subject_key("x-api-key"), Some(Dimension::ApiKey));
    assert_eq!(mapping.subject_key("user_id"), Some(Dimension::User));
    assert_eq!(mapping.subject_key("team"), Some(Dimension::Team));
    assert_eq!(mapping.subject_key("llm_tokens"), None);
    assert!(mapping.is_token_key("tokens_out") && !mapping.is_token_key("team"));

    let cfg = parse(
        "limits:\n  rls:\n    enabled: false\n    domains:\n      - { domain: d, subjects: { user: u } }\n",
    );
    assert!(!cfg.rls.enabled, "explicitly off");
    let cfg = parse("limits:\n  rls:\n    enabled: true\n");
    assert!(cfg.rls.enabled, "explicitly on, with nothing to match");
}

#[test]
fn bad_rls_mappings_name_the_key() {
    let domain = |body: &str| format!("limits:\n  rls:\n    domains:\n      - {body}\n");
    assert_rejects(
        &domain("{ subjects: { api_key: k } }"),
        "limits.rls.domains.0.domain",
        "required",
    );
    assert_rejects(
        &domain("{ domain: '', subjects: { api_key: k } }"),
        "limits.rls.domains.0.domain",
        "must not be empty",
    );
    assert_rejects(
        &domain("{ domain: d }"),
        "limits.rls.domains.0.subjects",
        "at least one of api_key, user, team",
    );
    assert_rejects(
        &domain("{ domain: d, subjects: { api_key: k, user: k } }"),
        "limits.rls.domains.0.subjects.user",
        "already names another subject",
    );
    assert_rejects(
        &domain("{ domain: d, subjects: { api_key: k }, tokens: [k] }"),
        "limits.rls.domains.0.tokens.0",
        "already a subject key",
    );
    assert_rejects(
        &domain("{ domain: d, subjects: { api_key: '' } }"),
        "limits.rls.domains.0.subjects.api_key",
        "must not be empty",
    );
    assert_rejects(
        &domain("{ domain: d, subjects: { apikey: k } }"),
        "limits.rls.domains.0.subjects.apikey",
        "unknown key",
    );
    assert_rejects(
        "limits:\n  rls:\n    domains:\n      - { domain: d, subjects: { user: u } }\n      - { domain: d, subjects: { team: t } }\n",
        "limits.rls.domains.1.domain",
        "listed twice",
    );
    assert_rejects(
        "limits:\n  rls:\n    dryrun: true\n",
        "limits.rls.dryrun",
        "unknown key",
    );
}

const EDGE_RULES: &str = r#"
domain: edge
descriptors:
  - key: remote_address
    rate_limit: { unit: second, requests_per_unit: 5 }
  - key: path
    value: /v1/*
    rate_limit: { unit: hour, requests_per_unit: 7, name: v1 }
    shadow_mode: true
  - key: database
    value: users
    detailed_metric: true
    descriptors:
      - key: op
        value: write
        rate_limit: { unit: Minute, requests_per_unit: 3, replaces: [{ name: v1 }] }
      - key: op
        value: read
        rate_limit: { unlimited: true }
"#;

#[test]
fn an_envoyproxy_ratelimit_file_loads_into_rules() {
    let cfg = load_rls(
        "limits:\n  rls:\n    config_files: ['@edge.yaml']\n",
        &[("edge.yaml", EDGE_RULES)],
        &[],
    )
    .expect("loads");
    assert!(cfg.rls.enabled);
    assert_eq!(cfg.rls.config_files.len(), 1);
    let rules = cfg.rls.domains["edge"].rules.as_ref().expect("rules");
    let limit = |entries: &[(&str, &str)]| {
        let rule = rules.lookup(entries.iter().copied())?;
        let (kind, n) = rule.limits.as_ref()?.windowed().next()?;
        Some((kind, n, rule.shadow_mode))
    };
    assert_eq!(
        limit(&[("remote_address", "1.2.3.4")]),
        Some((LimitKind::RequestsPerSecond, 5, false))
    );
    assert_eq!(
        limit(&[("path", "/v1/models")]),
        Some((LimitKind::RequestsPerHour, 7, true))
    );
    assert_eq!(limit(&[("path", "/v2/models")]), None);
    assert_eq!(
        limit(&[("database", "users"), ("op", "write")]),
        Some((LimitKind::RequestsPerMinute, 3, false)),
        "units are case-insensitive, as upstream"
    );
    let read = rules
        .lookup([("database", "users"), ("op", "read")])
        .unwrap();
    assert!(read.limits.is_none(), "unlimited");
    // Ignored keys are warned about, once each.
    for what in ["replaces", "detailed_metric"] {
        assert_eq!(
            cfg.warnings.iter().filter(|w| w.contains(what)).count(),
            1,
            "{what}: {:?}",
            cfg.warnings
        );
    }
}

#[test]
fn rule_files_from_the_flag_and_the_config_combine() {
    let other = "domain: other\ndescriptors:\n  - key: k\n    rate_limit: { unit: minute, requests_per_unit: 1 }\n";
    let cfg = load_rls(
        "limits:\n  rls:\n    config_files: ['@edge.yaml']\n    domains:\n      - { domain: edge, subjects: { api_key: api_key } }\n",
        &[("edge.yaml", EDGE_RULES), ("other.yaml", other)],
        &["other.yaml", "edge.yaml"],
    )
    .expect("loads");
    assert_eq!(cfg.rls.config_files.len(), 2, "edge.yaml loads once");
    let edge = &cfg.rls.domains["edge"];
    assert!(
        edge.mapping.is_some() && edge.rules.is_some(),
        "mapping and rules merge"
    );
    assert!(cfg.rls.domains["other"].rules.is_some());

    // The flag alone switches the service on.
    let cfg = load_rls("limits: {}\n", &[("other.yaml", other)], &["other.yaml"]).unwrap();
    assert!(cfg.rls.enabled);
}

#[test]
fn bad_rule_files_are_rejected_naming_the_key() {
    let reject = |rules: &str, key_suffix: &str, reason: &str| {
        let e = load_rls(
            "limits:\n  rls:\n    config_files: ['@r.yaml']\n    domains:\n      - { domain: d, subjects: { user: user }, tokens: [tok] }\n",
            &[("r.yaml", rules)],
            &[],
        )
        .expect_err(key_suffix);
        assert!(
            e.key.ends_with(&format!("r.yaml:{key_suffix}")),
            "key of {e:?} should end with r.yaml:{key_suffix}"
        );
        assert!(
            e.reason.contains(reason),
            "reason of {e:?} should contain {reason:?}"
        );
    };
    let one = |rate_limit: &str| {
        format!("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {rate_limit}\n")
    };
    for unit in ["day", "week", "month", "year"] {
        reject(
            &one(&format!("{{ unit: {unit}, requests_per_unit: 10 }}")),
            "descriptors.0.rate_limit.unit",
            &format!("unit \"{unit}\" is not supported"),
        );
    }
    reject(
        &one("{ unit: fortnight, requests_per_unit: 10 }"),
        "descriptors.0.rate_limit.unit",
        "unknown unit",
    );
    reject(
        &one("{ unit: second, requests_per_unit: 0 }"),
        "descriptors.0.rate_limit.requests_per_unit",
        "greater than 0",
    );
    reject(
        &one("{ unit: second }"),
        "descriptors.0.rate_limit.requests_per_unit",
        "required",
    );
    reject(
        &one("{ requests_per_unit: 3 }"),
        "descriptors.0.rate_limit.unit",
        "required",
    );
    reject(
        &one("{ unlimited: true, unit: second }"),
        "descriptors.0.rate_limit.unit",
        "unlimited",
    );
    reject(
        &one("{ unit: second, requests_per_unit: 1, burst: 5 }"),
        "descriptors.0.rate_limit.burst",
        "unknown key",
    );
    reject(
        "domain: d\ndescriptors:\n  - key: tok\n    descriptors:\n      - key: m\n        rate_limit: { unit: second, requests_per_unit: 5 }\n",
        "descriptors.0.descriptors.0.rate_limit.unit",
        "token",
    );
    reject(
        "domain: d\ndescriptors:\n  - key: k\n    value: v\n  - key: k\n    value: v\n",
        "descriptors.1",
        "duplicate descriptor",
    );
    reject("descriptors:\n  - key: k\n", "domain", "required");
    reject(
        "domain: d\ndescriptors:\n  - value: v\n",
        "descriptors.0.key",
        "required",
    );

    // A domain in two files.
    let rules = "domain: d\ndescriptors: []\n";
    let e = load_rls(
        "limits:\n  rls:\n    config_files: ['@a.yaml', '@b.yaml']\n",
        &[("a.yaml", rules), ("b.yaml", rules)],
        &[],
    )
    .expect_err("same domain twice");
    assert!(e.key.ends_with("b.yaml:domain"), "{e:?}");
    assert!(e.reason.contains("also defined in"), "{e:?}");

    // A file that is not there.
    let e = load_rls(
        "limits:\n  rls:\n    config_files: [/no/such/file.yaml]\n",
        &[],
        &[],
    )
    .expect_err("missing");
    check_error(&e, "limits.rls.config_files.0", "cannot read");
}

#[test]
fn request_bounds_have_ranges_named_in_the_error() {
    for (yaml, key) in [
        (
            "limits:\n  server:\n    max_request_bytes: 10MiB\n",
            "limits.server.max_request_bytes",
        ),
        (
            "limits:\n  server:\n    max_request_bytes: lots\n",
            "limits.server.max_request_bytes",
        ),
        (
            "limits:\n  server:\n    memory_budget: 1KiB\n",
            "limits.server.memory_budget",
        ),
        (
            "limits:\n  server:\n    max_in_flight: 0\n",
            "limits.server.max_in_flight",
        ),
        (
            "limits:\n  server:\n    max_concurrent_streams: 0\n",
            "limits.server.max_concurrent_streams",
        ),
    ] {
        let e = parse_str(yaml).expect_err(yaml);
        assert_eq!(e.key, key, "{e}");
    }
    let cfg = parse_str("limits:\n  server:\n    max_request_bytes: 8192\n").unwrap();
    assert_eq!(cfg.server.max_request_bytes, 8192);
}
