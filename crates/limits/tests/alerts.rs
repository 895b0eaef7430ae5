//! Alert thresholds in the config, and the alert events the library
//! reports: once per crossing, to every subscriber, never naming a raw API
//! key.

mod common;

use common::*;
use limits::{CheckRequest, Limiter, RecordRequest, Subject, usd};
use limits_core::{Dimension, LimitKind};

const CONFIG: &str = "
limits:
  budgets:
    alert_thresholds: [0.5, 0.8]
    by_api_key:
      sk-alerted: { daily: 10, alias: checkout }
      sk-own: { daily: 10, alert_thresholds: [0.25] }
    by_team:
      ml: { daily: 100 }
";

fn record<'a>(subjects: &'a [Subject], cost: f64) -> RecordRequest<'a> {
    RecordRequest {
        subjects,
        reservation_id: None,
        request_tokens: 0,
        response_tokens: 0,
        total_tokens: 0,
        cost: Some(usd(cost).unwrap()),
        model: "gpt-4o",
        progress: false,
        sequence: 0,
    }
}

#[test]
fn thresholds_load_as_a_list_and_merge_the_single_one() {
    let cfg = parse(CONFIG);
    assert_eq!(cfg.policy.alert_thresholds.as_slice(), [500_000, 800_000]);
    assert_eq!(
        cfg.policy.alert_threshold_ppm,
        Some(500_000),
        "the lowest flags"
    );
    let own = cfg.table.resolve(Dimension::ApiKey, "sk-own");
    assert_eq!(own.alert_thresholds().unwrap().as_slice(), [250_000]);
    let both = parse("limits:\n  budgets:\n    alert_threshold: 0.9\n    alert_thresholds: 0.5\n");
    assert_eq!(both.policy.alert_thresholds.as_slice(), [500_000, 900_000]);
    assert_eq!(both.policy.alert_threshold_ppm, Some(900_000));
    assert_rejects(
        "limits:\n  budgets:\n    alert_thresholds: [0.5, 1.5]\n",
        "limits.budgets.alert_thresholds[1]",
        "at most 1",
    );
    assert_rejects(
        "limits:\n  budgets:\n    alert_thresholds: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]\n",
        "limits.budgets.alert_thresholds",
        "at most 8 thresholds",
    );
}

#[tokio::test]
async fn each_crossing_is_one_event_to_every_subscriber() {
    let limiter = Limiter::from_yaml_str(CONFIG).unwrap();
    let config = limiter.config();
    let mut watch = limiter.alerts();
    let mut other = limiter.alerts();
    let subjects = [
        Subject::new(Dimension::ApiKey, "sk-alerted"),
        Subject::new(Dimension::Team, "ml"),
    ];
    let first = limiter
        .record(&config, record(&subjects, 4.0))
        .await
        .unwrap();
    assert!(first.alerts.is_empty());
    let crossed = limiter
        .record(&config, record(&subjects, 4.5))
        .await
        .unwrap();
    assert_eq!(crossed.alerts.len(), 2, "50 % and 80 % of the key's $10");
    let e = &crossed.alerts[1];
    assert_eq!(
        (e.dimension, e.subject.as_str()),
        (Dimension::ApiKey, "checkout")
    );
    assert_eq!((e.kind, e.threshold), (LimitKind::BudgetDaily, 0.8));
    assert_eq!((e.used.as_usd(), e.limit.as_usd()), (8.5, 10.0));
    assert!(!e.calendar && e.scope.is_none());
    assert_ne!(crossed.alerts[0].id, e.id);
    for rx in [&mut watch, &mut other] {
        let a = rx.try_recv().unwrap();
        let b = rx.try_recv().unwrap();
        assert_eq!(
            (a.id.as_str(), b.id.as_str()),
            (crossed.alerts[0].id.as_str(), e.id.as_str())
        );
        assert!(rx.try_recv().is_err(), "nothing else");
    }
    // Hovering above: no more events; the team ($8.50 of $100) never crossed.
    let after = limiter
        .record(&config, record(&subjects, 0.1))
        .await
        .unwrap();
    assert!(after.alerts.is_empty());
    assert!(watch.try_recv().is_err());

    // A key with its own thresholds, named by hash (no alias), never raw.
    let own = [Subject::new(Dimension::ApiKey, "sk-own")];
    let crossed = limiter.record(&config, record(&own, 3.0)).await.unwrap();
    assert_eq!(crossed.alerts.len(), 1);
    assert_eq!(crossed.alerts[0].threshold, 0.25);
    assert!(!crossed.alerts[0].subject.contains("sk-own"));
    assert_eq!(crossed.alerts[0].subject.len(), 12, "a keyed hash prefix");

    // A check that holds an estimate crosses too.
    let team = [Subject::new(Dimension::Team, "ml")];
    let held = limiter
        .check(
            &config,
            CheckRequest {
                subjects: &team,
                model: "gpt-4o",
                estimated_tokens: 0,
                estimated_input_tokens: None,
                estimated_output_tokens: None,
                estimated_cost: Some(usd(45.0).unwrap()),
                reserve: true,
                reservation_ttl: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(held.alerts.len(), 1);
    assert_eq!(
        (held.alerts[0].subject.as_str(), held.alerts[0].threshold),
        ("ml", 0.5)
    );
}

#[test]
fn webhooks_need_a_url_and_a_secret_from_the_environment_a_file_or_inline() {
    let hook = |body: &str| format!("limits:\n  alerts:\n    webhooks:\n      - {body}\n");
    assert_rejects(
        &hook("{ secret: 0123456789abcdef }"),
        "limits.alerts.webhooks[0].url",
        "required",
    );
    assert_rejects(
        &hook("{ url: ftp://x, secret: 0123456789abcdef }"),
        "limits.alerts.webhooks[0].url",
        "http:// or https://",
    );
    assert_rejects(
        &hook("{ url: https://hooks.example.com/x }"),
        "limits.alerts.webhooks[0].secret_env",
        "a signing secret is required",
    );
    assert_rejects(
        &hook("{ url: https://hooks.example.com/x, secret: short }"),
        "limits.alerts.webhooks[0].secret",
        "at least 16 bytes",
    );
    assert_rejects(
        &hook("{ url: https://h.example.com, secret: 0123456789abcdef, secret_file: /x }"),
        "limits.alerts.webhooks[0].secret",
        "one of",
    );
    assert_rejects(
        &hook("{ url: https://h.example.com, secret_env: LIMITS_TEST_NO_SUCH_VARIABLE }"),
        "limits.alerts.webhooks[0].secret_env",
        "is not set",
    );
    assert_rejects(
        &hook("{ url: https://h.example.com, secret: 0123456789abcdef, format: xml }"),
        "limits.alerts.webhooks[0].format",
        "json or slack",
    );
    let file = write_temp("a-secret-read-from-a-file\n");
    let cfg = parse(&hook(&format!(
        "{{ url: 'https://hooks.example.com/limits', secret_file: {}, format: slack }}",
        file.path().display()
    )));
    let w = &cfg.alerts.webhooks[0];
    assert_eq!(w.url, "https://hooks.example.com/limits");
    assert_eq!(
        &*w.secret, b"a-secret-read-from-a-file",
        "without the newline"
    );
    assert!(w.slack);
    assert!(!format!("{w:?}").contains("a-secret"), "never shown");
    assert_eq!(cfg.alerts.max_attempts, 8);
}
