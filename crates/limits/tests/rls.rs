//! `limits.rls`: Envoy's rate limit service API, its domain mappings and
//! envoyproxy/ratelimit rule files.

mod common;

use common::*;
use limits::config::{Config, ConfigError, Overrides, load};
use limits_core::{Dimension, LimitKind};

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
        subjects: { api_key: x-api-key, user: user_id, team: team, org: org_id }
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
    assert_eq!(mapping.subject_key("org_id"), Some(Dimension::Org));
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

/// Rule files are read as upstream reads them: merge keys are resolved, a
/// numeric key is a key like any other, and a type error shows the value.
#[test]
fn rule_files_resolve_merge_keys_and_name_every_key() {
    let rules = "domain: d\ndescriptors:\n  - &base\n    key: a\n    rate_limit: { unit: second, requests_per_unit: 2 }\n  - <<: *base\n    key: b\n";
    limits::rls::check_rule_file(rules).expect("a merge key loads");
    let e = limits::rls::check_rule_file("domain: d\n1: 2\n").unwrap_err();
    check_error(
        &e,
        "rules.yaml:1",
        "unknown key; expected one of: domain, descriptors",
    );
    let e = limits::rls::check_rule_file(
        "domain: d\ndescriptors:\n  - key: k\n    shadow_mode: maybe\n",
    )
    .unwrap_err();
    check_error(
        &e,
        "rules.yaml:descriptors.0.shadow_mode",
        "expected true or false, found string \"maybe\"",
    );
}
