//! End-to-end behaviour of the limits API: the real `limitsd` binary on
//! 127.0.0.1:0, spoken to over gRPC.

mod common;

use std::time::{Duration, Instant};

use common::*;
use limits_server::pb;
use tonic::Code;
use tonic_types::StatusExt;

const RATE: &str = r#"
limits:
  rate_limits:
    by_api_key:
      "rate-key":
        requests_per_second: 2
  storage:
    backend: memory
"#;

#[tokio::test]
async fn requests_per_second_denies_then_allows_after_the_window() {
    let d = Limitsd::start(RATE);
    let mut c = d.client().await;
    for _ in 0..2 {
        let r = c
            .check_limits(check(vec![key("rate-key")], 0.0))
            .await
            .unwrap()
            .into_inner();
        assert!(r.allowed, "{r:?}");
    }
    let denied = c
        .check_limits(check(vec![key("rate-key")], 0.0))
        .await
        .unwrap();
    let md = denied.metadata().clone();
    let denied = denied.into_inner();
    assert!(!denied.allowed);
    assert_eq!(denied.action, pb::Action::Block as i32);
    assert!(
        denied.reason.contains("requests per second"),
        "{}",
        denied.reason
    );
    assert!(
        !denied.reason.contains("rate-key"),
        "a raw API key must not appear: {}",
        denied.reason
    );
    let retry = denied.retry_after.expect("retry_after on a denial");
    let retry = Duration::new(retry.seconds as u64, retry.nanos as u32);
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_millis(1100),
        "{retry:?}"
    );
    assert_eq!(
        denied.headers.get("X-RateLimit-Limit").map(String::as_str),
        Some("2")
    );
    assert_eq!(
        denied
            .headers
            .get("X-RateLimit-Remaining")
            .map(String::as_str),
        Some("0")
    );
    assert!(denied.headers.contains_key("Retry-After"));
    assert_eq!(md.get("x-ratelimit-limit").unwrap(), "2");
    assert!(md.get("retry-after").is_some());

    // Allowed again once the window has moved on: wait for the condition.
    let waited = Instant::now();
    eventually("the rate window to roll", || {
        let mut c = c.clone();
        async move {
            let r = c
                .check_limits(check(vec![key("rate-key")], 0.0))
                .await
                .unwrap()
                .into_inner();
            r.allowed.then_some(())
        }
    })
    .await;
    assert!(waited.elapsed() <= retry + Duration::from_secs(5));
}

const BUDGET: &str = r#"
limits:
  budgets:
    alert_threshold: 0.8
    by_api_key:
      "budget-key":
        daily: 10.00
    by_user:
      "alice":
        daily: 100.00
    by_team:
      "eng":
        daily: 5.00
  storage:
    backend: memory
"#;

#[tokio::test]
async fn spent_budget_denies_the_next_check_naming_the_budget() {
    let d = Limitsd::start(BUDGET);
    let mut c = d.client().await;
    let r = c
        .record_usage(record(vec![key("budget-key")], 10.0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.cost_usd, 10.0);
    assert!(r.alert, "100 % is over the 80 % alert threshold");
    let denied = c
        .check_limits(check(vec![key("budget-key")], 0.0))
        .await
        .unwrap()
        .into_inner();
    assert!(!denied.allowed);
    assert!(
        denied.reason.contains("daily budget exceeded"),
        "{}",
        denied.reason
    );
    let budget = denied.budget.expect("budget summary");
    assert_eq!(budget.limit_usd, 10.0);
    assert_eq!(budget.used_usd, 10.0);
    assert_eq!(budget.percentage, 1.0);
    assert_eq!(
        denied.headers.get("X-Budget-Limit").map(String::as_str),
        Some("10.00")
    );
    assert_eq!(
        denied.headers.get("X-Budget-Remaining").map(String::as_str),
        Some("0.00")
    );
}

#[tokio::test]
async fn a_team_over_budget_leaves_key_and_user_untouched() {
    let d = Limitsd::start(BUDGET);
    let mut c = d.client().await;
    c.record_usage(record(vec![team("eng")], 4.5))
        .await
        .unwrap();
    let before_key = c
        .get_usage(usage_req(key("budget-key")))
        .await
        .unwrap()
        .into_inner();
    let before_user = c
        .get_usage(usage_req(user("alice")))
        .await
        .unwrap()
        .into_inner();

    let r = c
        .check_limits(check(
            vec![key("budget-key"), user("alice"), team("eng")],
            1.0,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.allowed);
    assert!(r.reason.contains("team:eng"), "{}", r.reason);
    let exceeded: Vec<_> = r.statuses.iter().filter(|s| s.exceeded).collect();
    assert_eq!(exceeded.len(), 1);
    assert_eq!(exceeded[0].subject.as_ref().unwrap().id, "eng");

    let after_key = c
        .get_usage(usage_req(key("budget-key")))
        .await
        .unwrap()
        .into_inner();
    let after_user = c
        .get_usage(usage_req(user("alice")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before_key, after_key);
    assert_eq!(before_user, after_user);
}

const ORG: &str = r#"
limits:
  budgets:
    by_org:
      "acme":
        daily: 5.00
    by_team:
      default:
        daily: 100.00
  rate_limits:
    by_user:
      default:
        requests_per_minute: 100
  by_org:
    "globex":
      daily: 50.00
      requests_per_minute: 1
  storage:
    backend: memory
"#;

/// A request may name an API key, a user, a team and an organisation, all
/// checked together: the organisation's spent budget denies it, naming the
/// org, and the three others do not move. A fifth subject is refused.
#[tokio::test]
async fn an_org_over_budget_denies_and_leaves_the_other_three_untouched() {
    let d = Limitsd::start(ORG);
    let mut c = d.client().await;
    let four = |t: &str| vec![key("org-key"), user("alice"), team(t), org("acme")];
    c.record_usage(record(four("eng"), 3.0)).await.unwrap();
    c.record_usage(record(four("ops"), 2.0)).await.unwrap();
    let spent = c
        .get_usage(usage_req(org("acme")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        used(&spent, pb::LimitKind::BudgetDaily),
        5.0,
        "both teams' spend"
    );

    let reader = c.clone();
    let usage = |s: pb::Subject| {
        let mut c = reader.clone();
        async move { c.get_usage(usage_req(s)).await.unwrap().into_inner() }
    };
    let before = (usage(user("alice")).await, usage(team("eng")).await);
    let r = c
        .check_limits(check(four("eng"), 1.0))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.allowed);
    assert!(r.reason.contains("org:acme"), "{}", r.reason);
    let exceeded: Vec<_> = r.statuses.iter().filter(|s| s.exceeded).collect();
    assert_eq!(exceeded.len(), 1);
    let named = exceeded[0].subject.as_ref().unwrap();
    assert_eq!(
        (named.dimension, named.id.as_str()),
        (pb::Dimension::Org as i32, "acme")
    );
    assert_eq!(
        before,
        (usage(user("alice")).await, usage(team("eng")).await)
    );

    // A combined `by_org` entry: budget and request rate together.
    let globex = vec![key("g-key"), user("bob"), team("eng"), org("globex")];
    assert!(
        c.check_limits(check(globex.clone(), 0.0))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    let r = c
        .check_limits(check(globex, 0.0))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !r.allowed && r.reason.contains("org:globex"),
        "{}",
        r.reason
    );

    let mut five = four("eng");
    five.push(org("globex"));
    let e = c.check_limits(check(five, 0.0)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("subjects"), "{}", e.message());
}

const OVERSHOOT: &str = r#"
limits:
  budgets:
    by_api_key:
      "shared-key":
        daily: 50.00
  storage:
    backend: memory
"#;

/// 200 concurrent reserved checks of $1 against a $50 budget: exactly 50 are
/// admitted. Without reservations, every check sees the same unspent budget
/// and all are admitted: the overshoot reservations exist to prevent.
#[tokio::test]
async fn reservations_prevent_overshoot_under_concurrency() {
    let d = Limitsd::start(OVERSHOOT);
    let c = d.client().await;
    let run = |reserve: bool| {
        let c = c.clone();
        async move {
            let tasks: Vec<_> = (0..200)
                .map(|_| {
                    let mut c = c.clone();
                    tokio::spawn(async move {
                        let mut req = check(vec![key("shared-key")], 1.0);
                        req.reserve = reserve;
                        c.check_limits(req).await.unwrap().into_inner()
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        }
    };

    let reserved = run(true).await;
    let admitted = reserved.iter().filter(|r| r.allowed).count();
    assert_eq!(
        admitted, 50,
        "reserved checks must admit exactly the budget"
    );
    assert!(
        reserved
            .iter()
            .filter(|r| r.allowed)
            .all(|r| !r.reservation_id.is_empty())
    );

    // The same flow without reservations against a fresh key.
    let d2 = Limitsd::start(OVERSHOOT);
    let c2 = d2.client().await;
    let run2 = {
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let mut c = c2.clone();
                tokio::spawn(async move {
                    c.check_limits(check(vec![key("shared-key")], 1.0))
                        .await
                        .unwrap()
                        .into_inner()
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    };
    let admitted = run2.iter().filter(|r| r.allowed).count();
    assert!(
        admitted > 50,
        "unreserved checks hold nothing, so they overshoot: {admitted}"
    );
}

#[tokio::test]
async fn reservations_settle_with_the_actual_and_once() {
    let d = Limitsd::start(OVERSHOOT);
    let mut c = d.client().await;
    let mut req = check(vec![key("shared-key")], 20.0);
    req.reserve = true;
    let r = c.check_limits(req).await.unwrap().into_inner();
    assert!(r.allowed);
    let u = c
        .get_usage(usage_req(key("shared-key")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.reservations.len(), 1);
    assert_eq!(used(&u, pb::LimitKind::BudgetDaily), 20.0);

    let mut rec = record(vec![key("shared-key")], 25.0);
    rec.reservation_id = r.reservation_id.clone();
    let first = c.record_usage(rec.clone()).await.unwrap().into_inner();
    assert!(!first.duplicate);
    let again = c.record_usage(rec).await.unwrap().into_inner();
    assert!(again.duplicate, "a retried settlement charges once");
    let u = c
        .get_usage(usage_req(key("shared-key")))
        .await
        .unwrap()
        .into_inner();
    assert!(u.reservations.is_empty());
    assert_eq!(used(&u, pb::LimitKind::BudgetDaily), 25.0);
}

const CONCURRENCY: &str = r#"
limits:
  rate_limits:
    by_api_key:
      "conc-key":
        max_concurrent: 2
  storage:
    backend: memory
"#;

fn acquire(ttl: Option<Duration>) -> pb::AcquireConcurrentRequest {
    pb::AcquireConcurrentRequest {
        subjects: vec![key("conc-key")],
        ttl: ttl.map(|d| prost_types::Duration {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }),
    }
}

#[tokio::test]
async fn concurrency_slots_acquire_release_and_expire() {
    let d = Limitsd::start(CONCURRENCY);
    let mut c = d.client().await;
    let a = c
        .acquire_concurrent(acquire(None))
        .await
        .unwrap()
        .into_inner();
    let b = c
        .acquire_concurrent(acquire(None))
        .await
        .unwrap()
        .into_inner();
    assert!(a.acquired && b.acquired);
    let full = c
        .acquire_concurrent(acquire(None))
        .await
        .unwrap()
        .into_inner();
    assert!(!full.acquired);
    assert!(
        full.reason.contains("concurrency limit of 2"),
        "{}",
        full.reason
    );
    assert!(full.retry_after.is_some());

    let rel = |id: &str| pb::ReleaseConcurrentRequest {
        lease_id: id.into(),
    };
    assert!(
        c.release_concurrent(rel(&a.lease_id))
            .await
            .unwrap()
            .into_inner()
            .released
    );
    assert!(
        !c.release_concurrent(rel(&a.lease_id))
            .await
            .unwrap()
            .into_inner()
            .released,
        "twice is harmless"
    );
    let again = c
        .acquire_concurrent(acquire(Some(Duration::from_millis(300))))
        .await
        .unwrap()
        .into_inner();
    assert!(again.acquired, "release freed a slot");

    // `b` and `again` hold both slots; `again` expires by itself.
    assert!(
        !c.acquire_concurrent(acquire(None))
            .await
            .unwrap()
            .into_inner()
            .acquired
    );
    eventually("the short lease to expire", || {
        let mut c = c.clone();
        async move {
            c.acquire_concurrent(acquire(None))
                .await
                .unwrap()
                .into_inner()
                .acquired
                .then_some(())
        }
    })
    .await;
    // Releasing the expired lease is harmless too.
    assert!(
        !c.release_concurrent(rel(&again.lease_id))
            .await
            .unwrap()
            .into_inner()
            .released
    );
}

const QUEUE: &str = r#"
limits:
  rate_limits:
    by_api_key:
      "q-key":
        requests_per_second: 1
  enforcement:
    action: queue
    queue_depth: 10
    queue_timeout: 1900ms
  storage:
    backend: memory
"#;

#[tokio::test]
async fn queue_admits_when_capacity_frees_and_times_out_behind() {
    let d = Limitsd::start(QUEUE);
    let mut c = d.client().await;
    let first = c
        .check_limits(check(vec![key("q-key")], 0.0))
        .await
        .unwrap()
        .into_inner();
    assert!(first.allowed);
    assert_eq!(first.action, pb::Action::Allow as i32);

    // Two more within the same second: the first in line is admitted when
    // the window frees (~1 s); the next is then a second away with less than
    // a second of its 1.9 s queue timeout left, so it times out.
    let spawn = || {
        let mut c = c.clone();
        tokio::spawn(async move {
            c.check_limits(check(vec![key("q-key")], 0.0))
                .await
                .unwrap()
                .into_inner()
        })
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let mut results = [a, b];
    results.sort_by_key(|r| !r.allowed);
    assert!(results[0].allowed, "{:?}", results[0]);
    assert_eq!(results[0].action, pb::Action::Queue as i32);
    assert!(!results[1].allowed);
    assert_eq!(results[1].action, pb::Action::Queue as i32);
    assert!(
        results[1].reason.starts_with("queue timeout"),
        "{}",
        results[1].reason
    );
}

const QUEUE_SMALL: &str = r#"
limits:
  rate_limits:
    by_api_key:
      "q-key":
        requests_per_second: 1
  enforcement:
    action: queue
    queue_depth: 1
    queue_timeout: 10s
  storage:
    backend: memory
"#;

#[tokio::test]
async fn queue_full_and_caller_deadline() {
    let d = Limitsd::start(QUEUE_SMALL);
    let mut c = d.client().await;
    assert!(
        c.check_limits(check(vec![key("q-key")], 0.0))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );

    // A caller whose deadline is shorter than the wait is answered at once,
    // before its deadline, instead of being held.
    let mut req = tonic::Request::new(check(vec![key("q-key")], 0.0));
    req.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let r = c.check_limits(req).await.unwrap().into_inner();
    assert!(!r.allowed);
    assert!(
        r.reason.contains("cannot fit within the queue timeout"),
        "{}",
        r.reason
    );
    assert!(started.elapsed() < Duration::from_millis(300));

    // With one place in line: of two waiting callers, one queues and is
    // admitted, the other finds the queue full.
    let spawn = || {
        let mut c = c.clone();
        tokio::spawn(async move {
            c.check_limits(check(vec![key("q-key")], 0.0))
                .await
                .unwrap()
                .into_inner()
        })
    };
    let (a, b) = (spawn(), spawn());
    let mut results = [a.await.unwrap(), b.await.unwrap()];
    results.sort_by_key(|r| !r.allowed);
    assert!(results[0].allowed, "{:?}", results[0]);
    assert!(!results[1].allowed);
    assert!(
        results[1].reason.starts_with("queue full"),
        "{}",
        results[1].reason
    );
}

const DOWNGRADE: &str = r#"
limits:
  budgets:
    alert_threshold: 0.5
    by_api_key:
      "dg-key":
        daily: 1.00
  enforcement:
    action: downgrade
    model_downgrades:
      "gpt-4": "gpt-4-turbo"
      "gpt-4-turbo": "gpt-3.5-turbo"
  pricing:
    "gpt-4": { input_per_1k: 0.03, output_per_1k: 0.06 }
    "gpt-4-turbo": { input_per_1k: 0.01, output_per_1k: 0.03 }
    "gpt-3.5-turbo": { input_per_1k: 0.0005, output_per_1k: 0.0015 }
  storage:
    backend: memory
"#;

fn priced(tokens: u64) -> pb::CheckLimitsRequest {
    pb::CheckLimitsRequest {
        subjects: vec![key("dg-key")],
        model: "gpt-4".into(),
        estimated_tokens: tokens,
        estimated_input_tokens: None,
        estimated_output_tokens: None,
        estimated_cost_usd: None,
        reserve: false,
        reservation_ttl: None,
    }
}

#[tokio::test]
async fn downgrade_walks_the_chain_then_blocks_and_alerts_at_threshold() {
    let d = Limitsd::start(DOWNGRADE);
    let mut c = d.client().await;
    // 10k tokens: gpt-4 $0.60, gpt-4-turbo $0.30, gpt-3.5-turbo $0.015.
    let r = c.check_limits(priced(10_000)).await.unwrap().into_inner();
    assert!(r.allowed);
    assert_eq!(
        r.action,
        pb::Action::Alert as i32,
        "0.60 of 1.00 is over the 50 % threshold"
    );
    assert!(r.alert);
    assert!((r.estimated_cost_usd - 0.60).abs() < 1e-9);

    c.record_usage(record(vec![key("dg-key")], 0.75))
        .await
        .unwrap();
    let r = c.check_limits(priced(10_000)).await.unwrap().into_inner();
    assert!(r.allowed);
    assert_eq!(r.action, pb::Action::Downgrade as i32);
    assert_eq!(
        r.downgrade_to, "gpt-3.5-turbo",
        "two steps down: turbo at $0.30 does not fit either"
    );

    c.record_usage(record(vec![key("dg-key")], 0.24))
        .await
        .unwrap();
    let r = c.check_limits(priced(10_000)).await.unwrap().into_inner();
    assert!(!r.allowed, "nothing in the chain fits $0.01");
    assert_eq!(r.action, pb::Action::Block as i32);
    assert!(
        r.reason.contains("no model in the downgrade chain fits"),
        "{}",
        r.reason
    );
}

const ALERT: &str = r#"
limits:
  rate_limits:
    by_api_key:
      "al-key":
        requests_per_second: 1
  enforcement:
    action: alert
  storage:
    backend: memory
"#;

#[tokio::test]
async fn alert_mode_allows_over_the_limit_and_flags_it() {
    let d = Limitsd::start(ALERT);
    let mut c = d.client().await;
    assert!(
        c.check_limits(check(vec![key("al-key")], 0.0))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    let r = c
        .check_limits(check(vec![key("al-key")], 0.0))
        .await
        .unwrap()
        .into_inner();
    assert!(r.allowed);
    assert_eq!(r.action, pb::Action::Alert as i32);
    assert!(r.reason.contains("alert only"), "{}", r.reason);
}

fn assert_invalid(status: tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with(&format!("{field}:")),
        "{field} in {}",
        status.message()
    );
    let details = status
        .get_details_bad_request()
        .expect("BadRequest details");
    assert_eq!(details.field_violations[0].field, field);
}

#[tokio::test]
async fn bad_input_is_rejected_naming_the_field_and_changes_nothing() {
    let d = Limitsd::start(BUDGET);
    let mut c = d.client().await;
    c.record_usage(record(vec![key("budget-key")], 1.0))
        .await
        .unwrap();
    let snapshot = |mut c: pb::limits_service_client::LimitsServiceClient<_>| async move {
        let mut out = Vec::new();
        for s in [key("budget-key"), user("alice"), team("eng")] {
            out.push(c.get_usage(usage_req(s)).await.unwrap().into_inner());
        }
        out
    };
    let before = snapshot(c.clone()).await;
    let all = || vec![key("budget-key"), user("alice"), team("eng")];

    let e = c.check_limits(check(vec![], 1.0)).await.unwrap_err();
    assert_invalid(e, "subjects");
    let e = c.check_limits(check(vec![key("")], 1.0)).await.unwrap_err();
    assert_invalid(e, "subjects[0].id");
    let e = c
        .check_limits(check(vec![key(&"k".repeat(257))], 1.0))
        .await
        .unwrap_err();
    assert_invalid(e, "subjects[0].id");
    let e = c
        .check_limits(check(vec![key("budget-key"), key("other")], 1.0))
        .await
        .unwrap_err();
    assert_invalid(e, "subjects[1]");
    let e = c
        .check_limits(check(
            vec![pb::Subject {
                dimension: 9,
                id: "x".into(),
            }],
            1.0,
        ))
        .await
        .unwrap_err();
    assert_invalid(e, "subjects[0].dimension");
    for bad in [-1.0, f64::NAN, f64::INFINITY, 2e9] {
        let e = c.check_limits(check(all(), bad)).await.unwrap_err();
        assert_invalid(e, "estimated_cost_usd");
        let e = c.record_usage(record(all(), bad)).await.unwrap_err();
        assert_invalid(e, "cost_usd");
    }
    let mut r = record(all(), 1.0);
    r.total_tokens = 3;
    assert_invalid(c.record_usage(r).await.unwrap_err(), "total_tokens");
    let mut r = record(all(), 1.0);
    r.reservation_id = "nonsense".into();
    assert_invalid(c.record_usage(r).await.unwrap_err(), "reservation_id");
    // Well-formed ids that were never issued (their tags are not the
    // server's) are not found.
    let mut r = record(all(), 1.0);
    r.reservation_id = format!("rsv_00000000deadbeef{}", "0".repeat(32));
    assert_eq!(c.record_usage(r).await.unwrap_err().code(), Code::NotFound);
    let e = c
        .release_concurrent(pb::ReleaseConcurrentRequest {
            lease_id: format!("lease_00000000deadbeef{}", "0".repeat(24)),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // The short ids of earlier versions, and a sign, are malformed.
    let mut r = record(all(), 1.0);
    r.reservation_id = "rsv_00000000deadbeef".into();
    assert_invalid(c.record_usage(r).await.unwrap_err(), "reservation_id");
    let mut r = record(all(), 1.0);
    r.reservation_id = format!("rsv_+0000000deadbeef{}", "0".repeat(32));
    assert_invalid(c.record_usage(r).await.unwrap_err(), "reservation_id");
    let e = c
        .release_concurrent(pb::ReleaseConcurrentRequest {
            lease_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_invalid(e, "lease_id");
    let e = c
        .acquire_concurrent(pb::AcquireConcurrentRequest {
            subjects: all(),
            ttl: Some(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_invalid(e, "ttl");
    let mut req = check(all(), 1.0);
    req.reserve = true;
    req.reservation_ttl = Some(prost_types::Duration {
        seconds: 0,
        nanos: 0,
    });
    assert_invalid(c.check_limits(req).await.unwrap_err(), "reservation_ttl");
    let e = c
        .get_usage(pb::GetUsageRequest { subject: None })
        .await
        .unwrap_err();
    assert_invalid(e, "subject");

    assert_eq!(
        before,
        snapshot(c.clone()).await,
        "bad requests changed state"
    );
}

/// A caller that goes away while queued leaves the line and holds nothing:
/// its place is free for the next caller, and it was never counted.
#[tokio::test]
async fn a_cancelled_caller_leaves_the_queue_and_holds_nothing() {
    let d = Limitsd::start(QUEUE_SMALL);
    let mut c = d.client().await;
    assert!(
        c.check_limits(check(vec![key("q-key")], 0.0))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    let depth = |n: u32| {
        let line = format!("mercator_limits_queue_depth {n}");
        let d = &d;
        move || {
            let line = line.clone();
            async move { d.scrape().lines().any(|l| l == line).then_some(()) }
        }
    };

    let queued = tokio::spawn({
        let mut c = c.clone();
        async move { c.check_limits(check(vec![key("q-key")], 0.0)).await }
    });
    eventually("the call to queue", depth(1)).await;
    // Dropping the call's future cancels the RPC.
    queued.abort();
    eventually("the cancelled call to leave the queue", depth(0)).await;

    let u = c
        .get_usage(usage_req(key("q-key")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        used(&u, pb::LimitKind::RequestsPerSecond),
        1.0,
        "the cancelled call was never counted"
    );
    // The single place in line is free again: the next caller queues and
    // is admitted rather than finding the queue full.
    let next = c
        .check_limits(check(vec![key("q-key")], 0.0))
        .await
        .unwrap()
        .into_inner();
    assert!(next.allowed, "{next:?}");
    assert_eq!(next.action, pb::Action::Queue as i32);
}

const SPLIT: &str = r#"
limits:
  rate_limits:
    by_api_key:
      "io-key":
        input_tokens_per_minute: 1000
        output_tokens_per_minute: 500
        tokens_per_minute: 10000
  storage:
    backend: memory
"#;

fn split_check(total: u64, input: Option<u64>, output: Option<u64>) -> pb::CheckLimitsRequest {
    pb::CheckLimitsRequest {
        subjects: vec![key("io-key")],
        model: "gpt-4".into(),
        estimated_tokens: total,
        estimated_input_tokens: input,
        estimated_output_tokens: output,
        estimated_cost_usd: Some(0.0),
        reserve: false,
        reservation_ttl: None,
    }
}

fn status_of(statuses: &[pb::LimitStatus], kind: pb::LimitKind) -> &pb::LimitStatus {
    statuses
        .iter()
        .find(|s| s.kind == kind as i32)
        .unwrap_or_else(|| panic!("no {kind:?} in {statuses:?}"))
}

/// Input and output token limits through limitsd: a reserved check holds
/// each part of its estimate against its own limit, the record charges
/// `request_tokens` and `response_tokens` (a response longer than its
/// estimate included), and a part larger than the total is refused.
#[tokio::test]
async fn input_and_output_token_limits_hold_and_charge_each_part() {
    let d = Limitsd::start(SPLIT);
    let mut c = d.client().await;
    let mut req = split_check(1_200, Some(800), Some(400));
    req.reserve = true;
    let held = c.check_limits(req).await.unwrap().into_inner();
    assert!(held.allowed, "{held:?}");
    let input = status_of(&held.statuses, pb::LimitKind::InputTokensPerMinute);
    assert_eq!((input.limit, input.used), (1000.0, 800.0));
    let output = status_of(&held.statuses, pb::LimitKind::OutputTokensPerMinute);
    assert_eq!((output.limit, output.used), (500.0, 400.0));

    // 300 more input tokens do not fit; the reason names the limit.
    let r = c
        .check_limits(split_check(350, Some(300), None))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.allowed);
    assert!(
        r.reason.contains("input tokens per minute limit"),
        "{}",
        r.reason
    );

    // The response ran longer than estimated: 600 output tokens.
    let rec = c
        .record_usage(pb::RecordUsageRequest {
            subjects: vec![key("io-key")],
            reservation_id: held.reservation_id.clone(),
            request_tokens: 700,
            response_tokens: 600,
            total_tokens: 0,
            cost_usd: Some(0.0),
            provider: String::new(),
            model: "gpt-4".into(),
            progress: false,
            sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let output = status_of(&rec.statuses, pb::LimitKind::OutputTokensPerMinute);
    assert_eq!(output.used, 600.0, "usage is charged, never refused");
    let input = status_of(&rec.statuses, pb::LimitKind::InputTokensPerMinute);
    assert_eq!(input.used, 700.0);
    assert_eq!(
        status_of(&rec.statuses, pb::LimitKind::TokensPerMinute).used,
        1300.0
    );
    let r = c
        .check_limits(split_check(1, Some(0), Some(1)))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.allowed);
    assert!(
        r.reason.contains("output tokens per minute limit"),
        "{}",
        r.reason
    );

    // Without a split, the whole estimate could be output: 600 never fits.
    let r = c
        .check_limits(split_check(600, None, None))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.allowed && r.retry_after.is_none(), "{r:?}");

    // Parts larger than the total are refused, naming the field.
    let e = c
        .check_limits(split_check(100, Some(600), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().starts_with("estimated_tokens"),
        "{}",
        e.message()
    );
}

const SCOPED: &str = r#"
limits:
  by_api_key:
    "sk-scoped":
      alias: scoped-key
      daily: 10
      models:
        "gpt-4*": { daily: 2, tokens_per_minute: 1000 }
  enforcement:
    action: downgrade
    model_downgrades:
      gpt-4o: gpt-3.5-turbo
  storage:
    backend: sled
    sled:
      path: ./scoped.sled
"#;

/// Model scopes through limitsd, on the default durable store: a reserved
/// check holds its estimate on the key and on its model's scope, the
/// answer and its metadata name the scope, a spent scope downgrades to a
/// model outside it, the record charges the scope of the model that
/// served, and GetUsage lists the scope.
#[tokio::test]
async fn model_scopes_are_checked_held_charged_and_named() {
    let d = Limitsd::start(SCOPED);
    let mut c = d.client().await;
    let ask = |model: &str, cost: f64| pb::CheckLimitsRequest {
        model: model.into(),
        estimated_tokens: 100,
        reserve: true,
        ..check(vec![key("sk-scoped")], cost)
    };
    let held = c.check_limits(ask("gpt-4o", 1.5)).await.unwrap();
    let scope_header = held
        .metadata()
        .get("x-budget-scope")
        .map(|v| v.to_str().unwrap().to_owned());
    let held = held.into_inner();
    assert!(held.allowed, "{}", held.reason);
    assert_eq!(scope_header.as_deref(), Some("gpt-4*"), "75 % of the scope");
    assert_eq!(
        held.headers.get("X-Budget-Scope").map(String::as_str),
        Some("gpt-4*")
    );
    let budget = held.budget.as_ref().unwrap();
    assert_eq!(
        (budget.model_scope.as_str(), budget.used_usd),
        ("gpt-4*", 1.5)
    );
    let scoped: Vec<_> = held
        .statuses
        .iter()
        .filter(|s| s.model_scope == "gpt-4*")
        .collect();
    assert_eq!(scoped.len(), 2, "the scope's budget and token limit");
    assert!(
        scoped
            .iter()
            .all(|s| s.subject.as_ref().unwrap().id == "sk-scoped")
    );

    // $1 more does not fit gpt-4*: downgraded to a model outside it.
    let down = c
        .check_limits(ask("gpt-4o", 1.0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(down.action, pb::Action::Downgrade as i32, "{}", down.reason);
    assert_eq!(down.downgrade_to, "gpt-3.5-turbo");
    assert!(down.statuses.iter().all(|s| s.model_scope.is_empty()));

    // The first call cost $0.40 on gpt-4o: its scope is charged that.
    let rec = c
        .record_usage(pb::RecordUsageRequest {
            subjects: vec![key("sk-scoped")],
            reservation_id: held.reservation_id.clone(),
            request_tokens: 60,
            response_tokens: 20,
            total_tokens: 0,
            cost_usd: Some(0.4),
            provider: String::new(),
            model: "gpt-4o".into(),
            progress: false,
            sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let spent = rec
        .statuses
        .iter()
        .find(|s| s.model_scope == "gpt-4*" && s.kind == pb::LimitKind::BudgetDaily as i32)
        .unwrap();
    assert!((spent.used - 0.4).abs() < 1e-9, "{spent:?}");
    let again = c
        .check_limits(ask("gpt-4o", 1.0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.action, pb::Action::Allow as i32, "{}", again.reason);

    let usage = c
        .get_usage(usage_req(key("sk-scoped")))
        .await
        .unwrap()
        .into_inner();
    let scope_budget = usage
        .statuses
        .iter()
        .find(|s| s.model_scope == "gpt-4*" && s.kind == pb::LimitKind::BudgetDaily as i32)
        .expect("GetUsage lists the scope");
    assert!((scope_budget.used - 1.4).abs() < 1e-9, "{scope_budget:?}");
    let own = usage
        .statuses
        .iter()
        .find(|s| s.model_scope.is_empty() && s.kind == pb::LimitKind::BudgetDaily as i32)
        .unwrap();
    // $0.40 recorded, $1 (gpt-3.5) and $1 (gpt-4o) held.
    assert!((own.used - 2.4).abs() < 1e-9, "{own:?}");
}
