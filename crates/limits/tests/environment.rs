//! The `MERCATOR_LIMITS_*` environment and the command-line flags: what they
//! override, and errors that name the variable or the flag.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use limits::config::{self, LogFormat, Overrides, Storage, env_vars, load};
use limits_core::{Dimension, EnforcementMode, LimitKind};

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
        ("limits.budgets.alert_thresholds", "0.5, 0.95"),
        ("limits.budgets.period", "calendar"),
        ("limits.budgets.timezone", "Europe/Paris"),
        ("limits.budgets.week_start", "Sunday"),
        ("limits.budgets.month_anchor_day", "15"),
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
        ("limits.storage.redis.shards", "16"),
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
        ("limits.server.admin_addr", "127.0.0.1:7002"),
        ("limits.server.tls.cert_file", "/tls/cert.pem"),
        ("limits.server.tls.key_file", "/tls/key.pem"),
        ("limits.server.tls.client_ca_file", "/tls/ca.pem"),
        ("limits.server.tls.client_auth", "optional"),
        (
            "limits.security.admin_token_sha256",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ),
        // Read when set: checked with a real file in the security tests.
        ("limits.security.tokens_file", ""),
        ("limits.security.data_plane_auth", "true"),
        ("limits.admin.audit_max_events", "500"),
        ("limits.admin.sync_interval", "100ms"),
        ("limits.alerts.max_pending", "500"),
        ("limits.alerts.max_attempts", "3"),
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
    assert_eq!(
        cfg.policy.alert_thresholds.as_slice(),
        [500_000, 900_000, 950_000],
        "the single threshold is one of the list"
    );
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
    assert_eq!(
        cfg.server.admin_addr,
        Some("127.0.0.1:7002".parse::<SocketAddr>().unwrap())
    );
    let tls = cfg.server.tls.as_ref().expect("TLS from the environment");
    assert_eq!(tls.cert_file, PathBuf::from("/tls/cert.pem"));
    assert_eq!(tls.key_file, PathBuf::from("/tls/key.pem"));
    assert_eq!(tls.client_ca_file, Some(PathBuf::from("/tls/ca.pem")));
    assert_eq!(tls.client_auth, limits::config::ClientAuth::Optional);
    assert_eq!(cfg.security.tokens.len(), 1);
    assert_eq!(cfg.security.tokens[0].name, "admin");
    assert_eq!(cfg.security.tokens[0].scope, limits::config::Scope::Write);
    assert!(cfg.security.data_plane_auth);
    assert_eq!(cfg.admin.audit_max_events, 500);
    assert_eq!(cfg.admin.sync_interval, Duration::from_millis(100));
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

/// Regression: a variable naming a key that is set in the file only (such
/// as `limits.rls.enabled`) was told that no key has that name.
#[test]
fn a_file_only_key_in_the_environment_is_named() {
    let e = load(
        None,
        env(&[("MERCATOR_LIMITS_RLS_ENABLED", "true")]),
        &Overrides::default(),
    )
    .expect_err("file only");
    check_error(
        &e,
        "MERCATOR_LIMITS_RLS_ENABLED",
        "limits.rls.enabled is set in the config file only",
    );
}
