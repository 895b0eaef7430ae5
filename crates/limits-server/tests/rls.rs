//! Envoy's rate limit service API (`ShouldRateLimit`) against the real
//! limitsd binary, with a tonic client generated from the vendored Envoy
//! protos: decisions, statuses, headers, shadow and dry-run modes, and
//! envoyproxy/ratelimit-format rule files.

mod common;

use common::*;
use limits_server::pb;
use limits_server::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use limits_server::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use limits_server::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use limits_server::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus,
};
use limits_server::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use limits_server::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::transport::Channel;

type Rls = RateLimitServiceClient<Channel>;

/// A descriptor from `(key, value)` entries.
fn desc(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        ..Default::default()
    }
}

/// A descriptor with its own `hits_addend`.
fn desc_hits(entries: &[(&str, &str)], hits: u64) -> RateLimitDescriptor {
    RateLimitDescriptor {
        hits_addend: Some(hits),
        ..desc(entries)
    }
}

fn req(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: 0,
    }
}

async fn ask(rls: &mut Rls, request: RateLimitRequest) -> RateLimitResponse {
    rls.should_rate_limit(request)
        .await
        .expect("ShouldRateLimit answers")
        .into_inner()
}

fn overall(r: &RateLimitResponse) -> Code {
    Code::try_from(r.overall_code).expect("a known code")
}

fn code(s: &DescriptorStatus) -> Code {
    Code::try_from(s.code).expect("a known code")
}

fn header<'a>(r: &'a RateLimitResponse, name: &str) -> Option<&'a str> {
    r.response_headers_to_add
        .iter()
        .find(|h| h.key == name)
        .map(|h| h.value.as_str())
}

async fn usage(d: &Limitsd, subject: pb::Subject) -> pb::GetUsageResponse {
    d.client()
        .await
        .get_usage(usage_req(subject))
        .await
        .expect("GetUsage")
        .into_inner()
}

/// The AI gateway shape: an API key descriptor that counts requests, and
/// the same key with an `llm_tokens` entry that counts tokens.
const GATEWAY: &str = r#"
limits:
  rate_limits:
    by_api_key:
      k-three: { requests_per_minute: 3 }
      k-tokens: { requests_per_minute: 100, tokens_per_minute: 1000 }
      k-wide: { requests_per_minute: 10 }
      k-narrow: { requests_per_minute: 1 }
  rls:
    domains:
      - domain: gateway
        subjects: { api_key: api_key, user: user_id }
        tokens: [llm_tokens]
"#;

#[tokio::test]
async fn over_limit_after_n_hits_with_statuses_and_headers() {
    let d = Limitsd::start(GATEWAY);
    let mut rls = d.rls_client().await;
    for n in 1..=3u32 {
        let r = ask(
            &mut rls,
            req("gateway", vec![desc(&[("api_key", "k-three")])]),
        )
        .await;
        assert_eq!(overall(&r), Code::Ok, "hit {n}");
        let s = &r.statuses[0];
        assert_eq!(code(s), Code::Ok);
        let limit = s.current_limit.as_ref().expect("a current limit");
        assert_eq!(limit.requests_per_unit, 3);
        assert_eq!(limit.unit, Unit::Minute as i32);
        assert_eq!(limit.name, "requests_per_minute");
        assert_eq!(s.limit_remaining, 3 - n);
        assert_eq!(header(&r, "X-RateLimit-Limit"), Some("3"));
        assert_eq!(
            header(&r, "X-RateLimit-Remaining"),
            Some((3 - n).to_string().as_str())
        );
        assert_eq!(header(&r, "Retry-After"), None);
    }
    let r = ask(
        &mut rls,
        req("gateway", vec![desc(&[("api_key", "k-three")])]),
    )
    .await;
    assert_eq!(overall(&r), Code::OverLimit);
    let s = &r.statuses[0];
    assert_eq!(code(s), Code::OverLimit);
    assert_eq!(s.limit_remaining, 0);
    let reset = s.duration_until_reset.expect("a reset");
    assert!(reset.seconds > 0 && reset.seconds <= 61, "{reset:?}");
    assert_eq!(header(&r, "X-RateLimit-Remaining"), Some("0"));
    let retry: u64 = header(&r, "Retry-After")
        .expect("Retry-After on an over-limit answer")
        .parse()
        .unwrap();
    assert!((1..=61).contains(&retry), "{retry}");
    let reset_at: u64 = header(&r, "X-RateLimit-Reset").unwrap().parse().unwrap();
    assert!(reset_at > 1_700_000_000, "Unix seconds: {reset_at}");
    // The IETF fields are off unless switched on.
    assert_eq!(header(&r, "RateLimit"), None);

    // The counter is the API key's own: LimitsService sees the three
    // requests, and the denied one was not counted.
    let u = usage(&d, key("k-three")).await;
    assert_eq!(used(&u, pb::LimitKind::RequestsPerMinute), 3.0);
}

#[tokio::test]
async fn hits_addend_charges_tokens_request_level_and_per_descriptor() {
    let d = Limitsd::start(GATEWAY);
    let mut rls = d.rls_client().await;
    let tokens = [("api_key", "k-tokens"), ("llm_tokens", "total")];
    let tokens_used = |u: &pb::GetUsageResponse| used(u, pb::LimitKind::TokensPerMinute);

    // Per-descriptor hits_addend: 300 tokens, no request.
    let r = ask(&mut rls, req("gateway", vec![desc_hits(&tokens, 300)])).await;
    assert_eq!(overall(&r), Code::Ok);
    let limit = r.statuses[0].current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit),
        (1000, Unit::Minute as i32),
        "the token limit is the tighter one"
    );
    let u = usage(&d, key("k-tokens")).await;
    assert_eq!(tokens_used(&u), 300.0);
    assert_eq!(used(&u, pb::LimitKind::RequestsPerMinute), 0.0);

    // Request-level hits_addend applies where the descriptor has none.
    let r = ask(
        &mut rls,
        RateLimitRequest {
            hits_addend: 200,
            ..req("gateway", vec![desc(&tokens)])
        },
    )
    .await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(tokens_used(&usage(&d, key("k-tokens")).await), 500.0);

    // ... and the descriptor's own value overrides it, 0 only asking.
    let r = ask(
        &mut rls,
        RateLimitRequest {
            hits_addend: 200,
            ..req("gateway", vec![desc_hits(&tokens, 0)])
        },
    )
    .await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(tokens_used(&usage(&d, key("k-tokens")).await), 500.0);

    // A request descriptor with a request-level hits_addend charges that
    // many requests.
    let r = ask(
        &mut rls,
        RateLimitRequest {
            hits_addend: 5,
            ..req("gateway", vec![desc(&[("api_key", "k-tokens")])])
        },
    )
    .await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(
        used(
            &usage(&d, key("k-tokens")).await,
            pb::LimitKind::RequestsPerMinute
        ),
        5.0
    );

    // The response-time report is usage that happened: charged in full
    // even past the limit, and reported over.
    let r = ask(&mut rls, req("gateway", vec![desc_hits(&tokens, 600)])).await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(tokens_used(&usage(&d, key("k-tokens")).await), 1100.0);

    // The AI gateway's request-time check: a request hit plus a token ask.
    // The token budget is spent, so the request is refused and not counted.
    let r = ask(
        &mut rls,
        req(
            "gateway",
            vec![desc(&[("api_key", "k-tokens")]), desc_hits(&tokens, 0)],
        ),
    )
    .await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(code(&r.statuses[1]), Code::OverLimit);
    assert_eq!(
        used(
            &usage(&d, key("k-tokens")).await,
            pb::LimitKind::RequestsPerMinute
        ),
        5.0
    );
}

#[tokio::test]
async fn descriptors_are_all_or_nothing() {
    let d = Limitsd::start(GATEWAY);
    let mut rls = d.rls_client().await;
    let both = || {
        req(
            "gateway",
            vec![
                desc(&[("api_key", "k-wide")]),
                desc(&[("api_key", "k-narrow")]),
            ],
        )
    };
    let r = ask(&mut rls, both()).await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(r.statuses.len(), 2);

    let r = ask(&mut rls, both()).await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(code(&r.statuses[0]), Code::Ok, "k-wide has room");
    assert_eq!(code(&r.statuses[1]), Code::OverLimit, "k-narrow is full");
    // The descriptor that fitted was not charged either.
    let u = usage(&d, key("k-wide")).await;
    assert_eq!(used(&u, pb::LimitKind::RequestsPerMinute), 1.0);
    assert_eq!(r.statuses[0].limit_remaining, 9);

    // One descriptor naming two subjects: both move together.
    let r = ask(
        &mut rls,
        req(
            "gateway",
            vec![desc(&[("api_key", "k-wide"), ("user_id", "nobody")])],
        ),
    )
    .await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(
        used(
            &usage(&d, key("k-wide")).await,
            pb::LimitKind::RequestsPerMinute
        ),
        2.0
    );
}

#[tokio::test]
async fn unmatched_descriptors_are_ok_and_unlimited() {
    let d = Limitsd::start(GATEWAY);
    let mut rls = d.rls_client().await;
    // An unknown domain.
    let r = ask(
        &mut rls,
        req("elsewhere", vec![desc(&[("api_key", "k-narrow")])]),
    )
    .await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(r.statuses.len(), 1);
    assert_eq!(code(&r.statuses[0]), Code::Ok);
    assert!(r.statuses[0].current_limit.is_none());
    assert!(r.response_headers_to_add.is_empty());

    // A known domain: unmapped keys and unlimited subjects match nothing,
    // and leave the matched descriptor's answer alone.
    let r = ask(
        &mut rls,
        req(
            "gateway",
            vec![
                desc(&[("remote_address", "10.0.0.1")]),
                desc(&[("api_key", "k-narrow")]),
                desc(&[("api_key", "not-listed")]),
            ],
        ),
    )
    .await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(r.statuses.len(), 3);
    assert!(r.statuses[0].current_limit.is_none());
    assert!(r.statuses[1].current_limit.is_some());
    assert!(r.statuses[2].current_limit.is_none());
}

#[tokio::test]
async fn bad_requests_are_invalid_argument_naming_the_field() {
    let d = Limitsd::start(GATEWAY);
    let mut rls = d.rls_client().await;
    for (request, field) in [
        (req("", vec![desc(&[("api_key", "k")])]), "domain"),
        (req("gateway", vec![]), "descriptors"),
        (
            req("gateway", vec![desc(&[("", "v")])]),
            "descriptors[0].entries[0].key",
        ),
        (
            req("gateway", vec![desc(&[("api_key", "")])]),
            "descriptors[0].entries[0].value",
        ),
    ] {
        let e = rls.should_rate_limit(request).await.expect_err(field);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(&format!("{field}:")), "{e:?}");
    }
    // Nine distinct limited counters in one call are too many.
    let yaml = r#"
limits:
  rate_limits:
    by_user:
      default: { requests_per_minute: 5 }
  rls:
    domains:
      - { domain: d, subjects: { user: user } }
"#;
    let d = Limitsd::start(yaml);
    let mut rls = d.rls_client().await;
    let users: Vec<String> = (0..9).map(|i| format!("u{i}")).collect();
    let many = users.iter().map(|u| desc(&[("user", u)])).collect();
    let e = rls.should_rate_limit(req("d", many)).await.expect_err("9");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("descriptors:"), "{e:?}");
    // Nothing was charged.
    assert_eq!(
        used(
            &usage(&d, user("u0")).await,
            pb::LimitKind::RequestsPerMinute
        ),
        0.0
    );
}

#[tokio::test]
async fn shadow_mode_counts_and_reports_but_answers_ok() {
    let yaml = r#"
limits:
  rate_limits:
    by_api_key:
      k: { requests_per_minute: 1 }
      enforced: { requests_per_minute: 5 }
  rls:
    domains:
      - domain: shadow
        shadow_mode: true
        subjects: { api_key: api_key }
      - domain: mixed
        subjects: { api_key: api_key }
    config_files: [rules.yaml]
"#;
    let rules = r#"
domain: mixed
descriptors:
  - key: path
    rate_limit: { unit: minute, requests_per_unit: 1 }
    shadow_mode: true
"#;
    let d = Limitsd::start_args(yaml, &[("rules.yaml", rules)], &[]);
    let mut rls = d.rls_client().await;
    for _ in 0..3 {
        let r = ask(&mut rls, req("shadow", vec![desc(&[("api_key", "k")])])).await;
        assert_eq!(overall(&r), Code::Ok);
        assert_eq!(code(&r.statuses[0]), Code::Ok);
        assert_eq!(
            r.statuses[0]
                .current_limit
                .as_ref()
                .unwrap()
                .requests_per_unit,
            1
        );
    }
    // Counted as if enforced: the admitted one, not the would-be denials.
    assert_eq!(
        used(&usage(&d, key("k")).await, pb::LimitKind::RequestsPerMinute),
        1.0
    );
    // The shadow limit's denials show in the metrics.
    let text = d.scrape();
    assert!(
        text.lines()
            .any(|l| l.starts_with("mercator_limits_rate_limit_checks_total")
                && l.contains("result=\"denied\"")),
        "{text}"
    );

    // A shadow rule that is over never stops an enforced counter.
    for n in 1..=3 {
        let r = ask(
            &mut rls,
            req(
                "mixed",
                vec![desc(&[("api_key", "enforced")]), desc(&[("path", "/x")])],
            ),
        )
        .await;
        assert_eq!(overall(&r), Code::Ok, "call {n}");
        assert_eq!(code(&r.statuses[1]), Code::Ok, "shadowed: OK");
        assert_eq!(
            used(
                &usage(&d, key("enforced")).await,
                pb::LimitKind::RequestsPerMinute
            ),
            f64::from(n)
        );
    }
}

#[tokio::test]
async fn dry_run_answers_ok_but_reports_over_limit() {
    let yaml = r#"
limits:
  rate_limits:
    by_api_key:
      k: { requests_per_minute: 1 }
  rls:
    dry_run: true
    domains:
      - { domain: d, subjects: { api_key: api_key } }
"#;
    let d = Limitsd::start(yaml);
    let mut rls = d.rls_client().await;
    let r = ask(&mut rls, req("d", vec![desc(&[("api_key", "k")])])).await;
    assert_eq!(overall(&r), Code::Ok);
    let r = ask(&mut rls, req("d", vec![desc(&[("api_key", "k")])])).await;
    assert_eq!(overall(&r), Code::Ok, "dry run: always OK");
    assert_eq!(code(&r.statuses[0]), Code::OverLimit, "but reported");
    assert_eq!(header(&r, "X-RateLimit-Remaining"), Some("0"));
    assert_eq!(header(&r, "Retry-After"), None, "nothing to retry");
}

#[tokio::test]
async fn ietf_headers_when_switched_on() {
    let yaml = r#"
limits:
  rate_limits:
    by_api_key:
      k: { requests_per_second: 10, requests_per_minute: 100 }
  rls:
    ietf_headers: true
    domains:
      - { domain: d, subjects: { api_key: api_key } }
"#;
    let d = Limitsd::start(yaml);
    let mut rls = d.rls_client().await;
    let r = ask(&mut rls, req("d", vec![desc_hits(&[("api_key", "k")], 7)])).await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(header(&r, "X-RateLimit-Limit"), Some("10"));
    assert_eq!(header(&r, "X-RateLimit-Remaining"), Some("3"));
    let rate_limit = header(&r, "RateLimit").expect("RateLimit");
    assert!(
        rate_limit.starts_with("limit=10, remaining=3, reset="),
        "{rate_limit}"
    );
    let reset: u64 = rate_limit.rsplit('=').next().unwrap().parse().unwrap();
    assert!(reset <= 2, "{rate_limit}");
    assert_eq!(header(&r, "RateLimit-Policy"), Some("10;w=1, 100;w=60"));
    let limit = r.statuses[0].current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit),
        (10, Unit::Second as i32)
    );
}

const RULES: &str = r#"
domain: edge
descriptors:
  - key: remote_address
    rate_limit:
      unit: minute
      requests_per_unit: 2
  - key: path
    value: /search
    rate_limit:
      name: search
      unit: minute
      requests_per_unit: 1
  - key: method
    value: GET
    rate_limit: { unit: second, requests_per_unit: 50 }
  - key: path
    value: /free/*
    rate_limit:
      unlimited: true
  - key: tenant
    value: acme
    descriptors:
      - key: plan
        value: gold
        rate_limit: { unit: hour, requests_per_unit: 1 }
"#;

async fn rule_file_is_enforced(d: &Limitsd) {
    let mut rls = d.rls_client().await;
    // A key without a value: one counter per distinct value.
    for ip in ["10.0.0.1", "10.0.0.2"] {
        for _ in 0..2 {
            let r = ask(&mut rls, req("edge", vec![desc(&[("remote_address", ip)])])).await;
            assert_eq!(overall(&r), Code::Ok, "{ip}");
        }
        let r = ask(&mut rls, req("edge", vec![desc(&[("remote_address", ip)])])).await;
        assert_eq!(overall(&r), Code::OverLimit, "{ip}");
        let limit = r.statuses[0].current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.unit),
            (2, Unit::Minute as i32)
        );
    }
    // An exact value, with the rule's name.
    let r = ask(&mut rls, req("edge", vec![desc(&[("path", "/search")])])).await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(r.statuses[0].current_limit.as_ref().unwrap().name, "search");
    let r = ask(&mut rls, req("edge", vec![desc(&[("path", "/search")])])).await;
    assert_eq!(overall(&r), Code::OverLimit);
    // Units map exactly: second, minute, hour.
    let r = ask(&mut rls, req("edge", vec![desc(&[("method", "GET")])])).await;
    let limit = r.statuses[0].current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit),
        (50, Unit::Second as i32)
    );
    assert_eq!(r.statuses[0].limit_remaining, 49);
    // A wildcard that is unlimited, and a value no rule names.
    for path in ["/free/a", "/free/b", "/other"] {
        for _ in 0..3 {
            let r = ask(&mut rls, req("edge", vec![desc(&[("path", path)])])).await;
            assert_eq!(overall(&r), Code::Ok, "{path}");
            assert!(r.statuses[0].current_limit.is_none(), "{path}");
        }
    }
    // Nested descriptors match the whole chain only.
    let gold = || desc(&[("tenant", "acme"), ("plan", "gold")]);
    assert_eq!(
        overall(&ask(&mut rls, req("edge", vec![gold()])).await),
        Code::Ok
    );
    let r = ask(&mut rls, req("edge", vec![gold()])).await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(
        r.statuses[0].current_limit.as_ref().unwrap().unit,
        Unit::Hour as i32
    );
    let r = ask(&mut rls, req("edge", vec![desc(&[("tenant", "acme")])])).await;
    assert!(
        r.statuses[0].current_limit.is_none(),
        "stops short of the leaf"
    );

    // A limit override from Envoy's route config makes a counter of its own.
    let mut over = desc(&[("generic_key", "burst")]);
    over.limit = Some(RateLimitOverride {
        requests_per_unit: 1,
        unit: pb::envoy::r#type::v3::RateLimitUnit::Minute as i32,
    });
    assert_eq!(
        overall(&ask(&mut rls, req("edge", vec![over.clone()])).await),
        Code::Ok
    );
    assert_eq!(
        overall(&ask(&mut rls, req("edge", vec![over])).await),
        Code::OverLimit
    );

    // Metrics label descriptor counters by rule name or hash, never raw.
    let text = d.scrape();
    assert!(text.contains("identifier=\"descriptor:search\""), "{text}");
    assert!(!text.contains("10.0.0.1"), "a raw descriptor value leaked");
    assert!(
        text.contains(
            "mercator_limits_check_duration_seconds_count{operation=\"should_rate_limit\"}"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn an_envoyproxy_ratelimit_file_from_the_config_is_enforced() {
    let yaml = "limits:\n  rls:\n    config_files: [edge.yaml]\n";
    let d = Limitsd::start_args(yaml, &[("edge.yaml", RULES)], &[]);
    rule_file_is_enforced(&d).await;
}

#[tokio::test]
async fn an_envoyproxy_ratelimit_file_from_the_flag_is_enforced() {
    let d = Limitsd::start_args(
        "limits: {}\n",
        &[("edge.yaml", RULES)],
        &["--rls-config", "edge.yaml"],
    );
    rule_file_is_enforced(&d).await;

    // Served, healthy and described by reflection like the limits API.
    let channel = d.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "envoy.service.ratelimit.v3.RateLimitService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn a_token_rule_counts_tokens() {
    let yaml = r#"
limits:
  rls:
    domains:
      - domain: ai
        subjects: { user: user }
        tokens: [llm_tokens]
    config_files: [ai.yaml]
"#;
    let rules = r#"
domain: ai
descriptors:
  - key: llm_tokens
    descriptors:
      - key: model
        rate_limit: { unit: minute, requests_per_unit: 1000 }
"#;
    let d = Limitsd::start_args(yaml, &[("ai.yaml", rules)], &[]);
    let mut rls = d.rls_client().await;
    let t = |hits| desc_hits(&[("llm_tokens", "total"), ("model", "gpt-4")], hits);
    // The response-time report charges tokens, all of them.
    let r = ask(&mut rls, req("ai", vec![t(1500)])).await;
    let limit = r.statuses[0].current_limit.as_ref().unwrap();
    assert_eq!(limit.name, "tokens_per_minute");
    assert_eq!(overall(&r), Code::OverLimit);
    // The next request-time check (an ask) is refused.
    assert_eq!(
        overall(&ask(&mut rls, req("ai", vec![t(0)])).await),
        Code::OverLimit
    );
}

#[tokio::test]
async fn a_day_unit_is_rejected_at_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let rules = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: day, requests_per_unit: 100 }\n";
    std::fs::write(dir.path().join("daily.yaml"), rules).unwrap();

    let config = dir.path().join("limits.yaml");
    std::fs::write(&config, "limits:\n  rls:\n    config_files: [daily.yaml]\n").unwrap();
    let (status, stderr) = run_to_exit(dir.path(), &config);
    assert!(!status.success());
    assert!(
        stderr.contains("daily.yaml:descriptors.0.rate_limit.unit: unit \"day\" is not supported"),
        "{stderr}"
    );

    std::fs::write(&config, "limits: {}\n").unwrap();
    let (status, stderr) =
        run_to_exit_with_args(dir.path(), &config, &["--rls-config", "daily.yaml"]);
    assert!(!status.success());
    assert!(
        stderr.contains("daily.yaml:descriptors.0.rate_limit.unit"),
        "{stderr}"
    );
}

#[tokio::test]
async fn switched_off_is_unimplemented() {
    let yaml = r#"
limits:
  rls:
    enabled: false
    domains:
      - { domain: d, subjects: { api_key: api_key } }
"#;
    let d = Limitsd::start(yaml);
    let mut rls = d.rls_client().await;
    let e = rls
        .should_rate_limit(req("d", vec![desc(&[("api_key", "k")])]))
        .await
        .expect_err("off");
    assert_eq!(e.code(), tonic::Code::Unimplemented);
}

#[tokio::test]
async fn reported_tokens_are_durable_on_the_sled_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("limits.yaml");
    std::fs::write(
        &config,
        r#"
limits:
  rate_limits:
    by_api_key:
      k: { tokens_per_hour: 1000 }
  rls:
    domains:
      - { domain: ai, subjects: { api_key: api_key }, tokens: [llm_tokens] }
  storage:
    backend: sled
    sled:
      path: ./store
"#,
    )
    .unwrap();
    let tokens = [("api_key", "k"), ("llm_tokens", "total")];
    {
        let mut d = Limitsd::start_in(dir.path(), &config);
        let mut rls = d.rls_client().await;
        let r = ask(&mut rls, req("ai", vec![desc_hits(&tokens, 300)])).await;
        assert_eq!(overall(&r), Code::Ok);
        d.signal("TERM");
        assert!(d.wait_exit().success());
    }
    let d = Limitsd::start_in(dir.path(), &config);
    let u = usage(&d, key("k")).await;
    assert_eq!(used(&u, pb::LimitKind::TokensPerHour), 300.0);
    let mut rls = d.rls_client().await;
    let r = ask(&mut rls, req("ai", vec![desc_hits(&tokens, 0)])).await;
    assert_eq!(r.statuses[0].limit_remaining, 700);
    let limit = r.statuses[0].current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit),
        (1000, Unit::Hour as i32)
    );
}

#[tokio::test]
async fn an_edited_rule_file_is_reloaded() {
    let yaml =
        "limits:\n  server:\n    reload_interval: 50ms\n  rls:\n    config_files: [edge.yaml]\n";
    let rules = |n: u32| {
        format!(
            "domain: edge\ndescriptors:\n  - key: k\n    rate_limit: {{ unit: minute, requests_per_unit: {n} }}\n"
        )
    };
    let d = Limitsd::start_args(yaml, &[("edge.yaml", &rules(1))], &[]);
    let mut rls = d.rls_client().await;
    let limit = |r: &RateLimitResponse| {
        r.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit
    };
    let r = ask(&mut rls, req("edge", vec![desc(&[("k", "v")])])).await;
    assert_eq!(limit(&r), 1);

    std::fs::write(d.dir.path().join("edge.yaml"), rules(100)).unwrap();
    eventually("the new rule file to be in force", || {
        let mut rls = rls.clone();
        async move {
            let r = ask(&mut rls, req("edge", vec![desc_hits(&[("k", "v")], 0)])).await;
            (limit(&r) == 100).then_some(())
        }
    })
    .await;
    // The counter kept its count across the reload.
    let r = ask(&mut rls, req("edge", vec![desc(&[("k", "v")])])).await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(r.statuses[0].limit_remaining, 98);
}

/// The Envoy path can name an organisation: a descriptor entry mapped to
/// `org` charges the org's own counter, shared by every key of the org,
/// and its limit denies.
#[tokio::test]
async fn a_descriptor_entry_names_an_org() {
    let d = Limitsd::start(
        r#"
limits:
  rate_limits:
    by_org:
      acme: { requests_per_minute: 2 }
  rls:
    domains:
      - domain: gateway
        subjects: { api_key: api_key, org: org_id }
"#,
    );
    let mut rls = d.rls_client().await;
    let call = |key: &str| {
        req(
            "gateway",
            vec![desc(&[("api_key", key), ("org_id", "acme")])],
        )
    };
    assert_eq!(overall(&ask(&mut rls, call("k1")).await), Code::Ok);
    assert_eq!(overall(&ask(&mut rls, call("k2")).await), Code::Ok);
    assert_eq!(overall(&ask(&mut rls, call("k3")).await), Code::OverLimit);
    let u = usage(&d, org("acme")).await;
    assert_eq!(used(&u, pb::LimitKind::RequestsPerMinute), 2.0);
}

/// A descriptor entry can name the model: a mapped subject's model scope
/// then applies beside its own limits, on the counters CheckLimits uses.
#[tokio::test]
async fn a_descriptor_entry_names_the_model_and_its_scope_applies() {
    let d = Limitsd::start(
        r#"
limits:
  rate_limits:
    by_team:
      ml:
        requests_per_minute: 10
        models:
          "gpt-4*": { requests_per_minute: 2 }
  rls:
    domains:
      - domain: gateway
        subjects: { team: team_id }
        model: model
"#,
    );
    let mut rls = d.rls_client().await;
    let call = |model: &str| {
        req(
            "gateway",
            vec![desc(&[("team_id", "ml"), ("model", model)])],
        )
    };
    assert_eq!(overall(&ask(&mut rls, call("gpt-4o")).await), Code::Ok);
    assert_eq!(overall(&ask(&mut rls, call("gpt-4-turbo")).await), Code::Ok);
    let over = ask(&mut rls, call("gpt-4o")).await;
    assert_eq!(overall(&over), Code::OverLimit, "gpt-4*'s 2 a minute");
    let limit = over.statuses[0].current_limit.as_ref().unwrap();
    assert_eq!(limit.name, "gpt-4*", "the scope names the limit");
    // Another model meets the team's own limit only.
    assert_eq!(
        overall(&ask(&mut rls, call("claude-3-haiku")).await),
        Code::Ok
    );
    // The counters are the LimitsService's: GetUsage shows the scope's two.
    let u = usage(&d, team("ml")).await;
    let scoped = u
        .statuses
        .iter()
        .find(|s| s.model_scope == "gpt-4*")
        .expect("the scope's status");
    assert_eq!(scoped.used, 2.0);
    let own = u
        .statuses
        .iter()
        .find(|s| s.model_scope.is_empty())
        .unwrap();
    assert_eq!(own.used, 3.0, "every allowed call counts on the team");
}
