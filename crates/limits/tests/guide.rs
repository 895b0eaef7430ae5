//! The usage guide's config examples (tests/fixtures) and config/example.yaml
//! load unchanged, with the limits they describe.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use limits::config::{self, Overrides, Storage, load};
use limits_core::{Dimension, EnforcementMode, LimitKind};

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
