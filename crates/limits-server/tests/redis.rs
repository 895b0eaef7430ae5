//! Several limitsd replicas sharing one Redis: the real binary, three
//! processes, one `redis-server` of the test's own on a loopback port.
//!
//! - 300 concurrent reserved checks spread over three replicas against a
//!   budget that fits 50 admit exactly 50;
//! - request-rate limits hold across the three;
//! - with Redis stopped a replica answers UNAVAILABLE (or allows, counted,
//!   when `fail_open` is set), and serves correctly again once Redis is
//!   back, without a restart;
//! - replicas whose local clocks disagree by minutes agree on windows,
//!   because decisions use Redis's clock;
//! - on a real three-master Redis Cluster, 300 reserved checks over three
//!   replicas, each request's subjects in different hash slots, admit
//!   exactly a team budget's 50, with state on every master.
//!
//! A missing `redis-server` fails these tests; `.ci/run` installs it.

#[path = "../../limits-store/tests/common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use common::*;
use limits_server::pb;
use redis_server::RedisServer;
use tonic::Code;

fn config(redis: &RedisServer, extra_redis: &str) -> String {
    format!(
        r#"
limits:
  budgets:
    by_api_key:
      "shared-budget":
        hourly: 50.00
  rate_limits:
    by_api_key:
      "rps-key":
        requests_per_second: 10
      "rpm-key":
        requests_per_minute: 20
      "after-restart":
        requests_per_minute: 2
  storage:
    backend: redis
    redis:
      url: {url}
      key_prefix: e2e
      command_timeout: 2s
      connect_timeout: 500ms
{extra_redis}
"#,
        url = redis.url()
    )
}

fn three(redis: &RedisServer) -> Vec<Limitsd> {
    (0..3).map(|_| Limitsd::start(&config(redis, ""))).collect()
}

/// Fires `n` checks for `subject` spread round-robin over the replicas, all
/// at once, and returns how many were allowed.
async fn burst(replicas: &[Limitsd], n: usize, subject: &str, cost: f64, reserve: bool) -> usize {
    let mut clients = Vec::new();
    for d in replicas {
        clients.push(d.client().await);
    }
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = clients[i % clients.len()].clone();
        let mut req = check(vec![key(subject)], cost);
        req.reserve = reserve;
        tasks.push(tokio::spawn(async move {
            c.check_limits(req).await.expect("a decision").into_inner()
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        if t.await.unwrap().allowed {
            allowed += 1;
        }
    }
    allowed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_admit_exactly_the_budget() {
    let redis = RedisServer::start();
    let replicas = three(&redis);
    // $1 reserved per check against an hourly budget of $50.
    let allowed = burst(&replicas, 300, "shared-budget", 1.0, true).await;
    assert_eq!(
        allowed, 50,
        "exactly the budget is admitted across replicas"
    );
    // Every replica sees the same held total.
    for d in &replicas {
        let u = d
            .client()
            .await
            .get_usage(usage_req(key("shared-budget")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(used(&u, pb::LimitKind::BudgetHourly), 50.0);
        assert_eq!(u.reservations.len(), 50);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_rate_limits_hold_across_replicas() {
    let redis = RedisServer::start();
    let replicas = three(&redis);

    // A minute window: a burst takes far less than a minute, so exactly the
    // limit is admitted.
    let allowed = burst(&replicas, 90, "rpm-key", 0.0, false).await;
    assert_eq!(allowed, 20, "requests_per_minute: 20 across three replicas");

    // A one-second window: within any second at most 10 are admitted; a
    // burst that takes under a second admits exactly 10.
    let started = Instant::now();
    let allowed = burst(&replicas, 60, "rps-key", 0.0, false).await;
    let took = started.elapsed();
    if took < Duration::from_millis(900) {
        assert_eq!(allowed, 10, "requests_per_second: 10 across three replicas");
    } else {
        let windows = took.as_secs() as usize + 2;
        assert!(
            (1..=10 * windows).contains(&allowed),
            "{allowed} admitted in {took:?}"
        );
    }
}

async fn check_code(d: &Limitsd, subject: &str) -> Result<pb::CheckLimitsResponse, Code> {
    let mut c = d.client().await;
    c.check_limits(check(vec![key(subject)], 0.0))
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_is_unavailable_or_fail_open_and_service_resumes() {
    let mut redis = RedisServer::start();
    let closed = Limitsd::start(&config(&redis, ""));
    let open = Limitsd::start(&config(&redis, "      fail_open: true"));
    assert!(check_code(&closed, "after-restart").await.unwrap().allowed);

    redis.stop();
    // Fail closed: UNAVAILABLE, never a silent allow.
    let code = eventually("UNAVAILABLE with Redis down", || async {
        check_code(&closed, "after-restart").await.err()
    })
    .await;
    assert_eq!(code, Code::Unavailable);
    let mut c = closed.client().await;
    let acquire = c
        .acquire_concurrent(pb::AcquireConcurrentRequest {
            subjects: vec![key("after-restart")],
            ttl: None,
        })
        .await;
    assert_eq!(acquire.unwrap_err().code(), Code::Unavailable);
    // Fail open: allowed, said so, and counted.
    let r = eventually("a fail-open answer", || async {
        check_code(&open, "after-restart")
            .await
            .ok()
            .filter(|r| r.reason.contains("fail-open"))
    })
    .await;
    assert!(r.allowed);
    assert_eq!(r.reason, "store unavailable: fail-open");
    let scrape = open.scrape();
    assert!(
        scrape
            .lines()
            .any(|l| l.starts_with("mercator_limits_fail_open_total") && !l.ends_with(" 0")),
        "the fail-open decision is counted:\n{scrape}"
    );
    let closed_scrape = closed.scrape();
    assert!(
        closed_scrape.lines().any(|l| l
            .starts_with("mercator_limits_store_errors_total{operation=\"check\"}")
            && !l.ends_with(" 0")),
        "Redis errors are counted:\n{closed_scrape}"
    );

    // Redis comes back (empty: it keeps nothing on disk here): both
    // replicas decide again, without a restart, and correctly.
    redis.restart();
    for d in [&closed, &open] {
        eventually("service after Redis returns", || async {
            check_code(d, "warm-up")
                .await
                .ok()
                .filter(|r| r.reason.is_empty())
        })
        .await;
    }
    let mut decisions = Vec::new();
    for d in [&closed, &open, &closed] {
        let r = check_code(d, "after-restart").await.expect("a decision");
        decisions.push(r.allowed);
    }
    assert_eq!(
        decisions,
        [true, true, false],
        "requests_per_minute: 2, shared again"
    );
    assert!(
        closed
            .scrape()
            .contains("mercator_limits_redis_duration_seconds_bucket"),
        "Redis latency is exported"
    );
}

/// Replicas' own clocks do not enter decisions: two stores on one Redis,
/// given local `now`s ten minutes apart, agree on every window, reset and
/// reservation expiry, because the script reads Redis's `TIME`.
#[tokio::test]
async fn replicas_with_skewed_clocks_agree() {
    use limits_core::{Attempt, LimitKind, NanoUsd, Nanos, Policy, Subject, SubjectLimits};
    use limits_store::{Call, CheckOp, RedisOptions, RedisStore, Store};
    use std::num::NonZeroU64;

    let redis = RedisServer::start();
    let open = || {
        RedisStore::open(&RedisOptions {
            url: redis.url(),
            key_prefix: "skew".to_owned(),
            ..RedisOptions::default()
        })
        .unwrap()
    };
    let (a, b) = (open(), open());
    let wall = Nanos::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap(),
    );
    let skew = Nanos::from_secs(600);
    let (now_a, now_b) = (wall, wall.saturating_add(skew));

    let limits = SubjectLimits::default()
        .with(LimitKind::RequestsPerMinute, NonZeroU64::new(3).unwrap())
        .with(
            LimitKind::BudgetHourly,
            NonZeroU64::new(10_000_000_000).unwrap(),
        );
    let subjects = [Subject::new(limits_core::Dimension::ApiKey, "skewed")];
    let policy = Policy::default();
    let attempts = [Attempt {
        model: "m".into(),
        cost: NanoUsd(1_000_000_000),
        tokens: 0,
        input: 0,
        output: 0,
        skip: 0,
    }];
    let op = CheckOp {
        attempts: &attempts,
        reserve_ttl: Some(Nanos::from_secs(60)),
        tag: 0,
        policy: &policy,
    };
    let mut outcomes = Vec::new();
    for (store, now) in [(&a, now_a), (&b, now_b), (&a, now_a), (&b, now_b)] {
        outcomes.push(
            store
                .check(Call {
                    subjects: &subjects,
                    limits: &[&limits],
                    op,
                    now,
                })
                .await
                .unwrap(),
        );
    }
    let allowed: Vec<_> = outcomes.iter().map(|c| c.allowed()).collect();
    assert_eq!(allowed, [true, true, true, false], "one shared window of 3");
    // The denial's retry and every reset instant come from one clock: the
    // window's oldest bucket, the same whichever replica is asked.
    let ua = a.usage(&subjects[0], &limits, now_a).await.unwrap();
    let ub = b.usage(&subjects[0], &limits, now_b).await.unwrap();
    assert_eq!(ua, ub, "both replicas see the same state");
    let rpm = ua
        .statuses
        .iter()
        .find(|s| s.kind == LimitKind::RequestsPerMinute)
        .unwrap();
    let reset = rpm.reset_at.expect("a reset");
    // The reset is a minute (plus at most one bucket) after Redis's now,
    // which is near the wall clock, not ten minutes ahead of it.
    let lag = Nanos(reset.0.abs_diff(wall.0));
    assert!(
        lag < Nanos::from_secs(120),
        "reset {reset:?} follows Redis's clock, not a skewed local one"
    );
    // Reservations expire by Redis's clock too: one minute from Redis's
    // now on both replicas, whatever `now` each was given.
    for h in &ua.holds {
        assert!(h.expires_at.0.abs_diff(wall.0) < Nanos::from_secs(120).0);
    }
    let denied = &outcomes[3];
    assert!(denied.retry_after().unwrap() <= Nanos::from_secs(62));

    // With the caller's clock instead (what a store without Redis time would
    // do), the same skew splits the window: B's `now` is past every amount
    // A counted, so B admits again.
    let fa = RedisStore::open(&RedisOptions {
        url: redis.url(),
        key_prefix: "skew-local".to_owned(),
        ..RedisOptions::default()
    })
    .unwrap()
    .with_fake_clock();
    let mut local = Vec::new();
    for now in [now_a, now_a, now_a, now_b] {
        local.push(
            fa.check(Call {
                subjects: &subjects,
                limits: &[&limits],
                op,
                now,
            })
            .await
            .unwrap()
            .allowed(),
        );
    }
    assert_eq!(
        local,
        [true, true, true, true],
        "local clocks ten minutes apart disagree"
    );
}

/// `storage.redis` loads with its defaults, takes the password from the
/// environment, never shows a password in `Debug`, and names the key of a
/// bad value.
#[test]
fn redis_config_loads_and_validates() {
    use limits_server::config::{self, Overrides, Storage};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limits.yaml");
    std::fs::write(
        &path,
        "limits:\n  storage:\n    backend: redis\n    redis:\n      url: redis://redis:6379/2\n      fail_open: true\n",
    )
    .unwrap();
    let env = [(
        "MERCATOR_LIMITS_STORAGE_REDIS_PASSWORD".to_owned(),
        "s3cret".to_owned(),
    )];
    let c = config::load(Some(&path), env, &Overrides::default()).unwrap();
    let Storage::Redis(r) = &c.storage else {
        panic!("{:?}", c.storage)
    };
    assert_eq!(r.url, "redis://redis:6379/2");
    assert_eq!(r.password.as_deref(), Some("s3cret"));
    assert!(r.fail_open && !r.cluster);
    assert_eq!(r.key_prefix, "limits");
    assert_eq!(r.command_timeout, Duration::from_millis(250));
    assert_eq!(r.shards, 0, "unset: the store's own default");
    assert!(!format!("{c:?}").contains("s3cret"));
    assert_eq!(
        config::redact_url("rediss://app:pw@host:6380"),
        "rediss://app:<redacted>@host:6380"
    );

    let bad = |yaml: &str| config::parse_str(yaml).unwrap_err().to_string();
    let e = bad("limits:\n  storage:\n    backend: redis\n    redis:\n      url: http://x\n");
    assert!(e.contains("limits.storage.redis.url"), "{e}");
    let e = bad("limits:\n  storage:\n    backend: redis\n    redis:\n      key_prefix: \"{a}\"\n");
    assert!(e.contains("limits.storage.redis.key_prefix"), "{e}");
    let e = bad("limits:\n  storage:\n    redis:\n      command_timeout: 0s\n");
    assert!(e.contains("limits.storage.redis.command_timeout"), "{e}");
    for shards in ["0", "1025"] {
        let e = bad(&format!(
            "limits:\n  storage:\n    redis:\n      shards: {shards}\n"
        ));
        assert!(e.contains("limits.storage.redis.shards"), "{e}");
    }
    let c = config::parse_str(
        "limits:\n  storage:\n    backend: redis\n    redis:\n      shards: 16\n",
    )
    .unwrap();
    let Storage::Redis(r) = &c.storage else {
        panic!("{:?}", c.storage)
    };
    assert_eq!(r.shards, 16);
}

/// Waits for `f` to hold, failing if it takes longer than `bound` (the
/// documented bound on how long a change takes to reach every replica).
async fn within<F, Fut>(what: &str, bound: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return;
        }
        assert!(start.elapsed() < bound, "{what}: not seen within {bound:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_change_through_one_replica_is_enforced_by_all_within_a_second() {
    use limits_server::pb::admin as apb;
    use limits_server::pb::admin::limits_admin_service_client::LimitsAdminServiceClient;
    use sha2::Digest;

    let token = "replica-admin-token-1";
    let sha = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    let redis = RedisServer::start();
    let extra = format!(
        "  admin:\n    sync_interval: 100ms\n  security:\n    tokens:\n      - {{ name: ops, sha256: \"{sha}\", scope: write }}\n"
    );
    let replicas: Vec<Limitsd> = (0..3)
        .map(|_| Limitsd::start(&(config(&redis, "") + &extra)))
        .collect();
    let admin = |i: usize| {
        let addr = replicas[i].addr;
        async move {
            LimitsAdminServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap()
        }
    };
    fn authed<T>(msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert(
            "authorization",
            "Bearer replica-admin-token-1".parse().unwrap(),
        );
        r
    }
    let allowed = |i: usize| {
        let d = &replicas[i];
        async move {
            d.client()
                .await
                .check_limits(check(vec![key("runtime-key")], 0.5))
                .await
                .unwrap()
                .into_inner()
                .allowed
        }
    };
    let bound = Duration::from_secs(1);
    for i in 0..3 {
        assert!(allowed(i).await, "unlimited before any entry");
    }

    // Created through replica 0: every replica denies $0.50 within the bound.
    admin(0)
        .await
        .create_subject_limits(authed(apb::CreateSubjectLimitsRequest {
            subject_limits: Some(apb::SubjectLimits {
                subject: Some(key("runtime-key")),
                daily_usd: Some(0.10),
                ..Default::default()
            }),
            reason: "new customer".into(),
        }))
        .await
        .expect("create");
    for i in 0..3 {
        within(&format!("the entry on replica {i}"), bound, || async {
            !allowed(i).await
        })
        .await;
    }

    // Topped up through replica 2: allowed everywhere within the bound.
    admin(2)
        .await
        .raise_budget(authed(apb::RaiseBudgetRequest {
            subject: Some(apb::SubjectRef {
                subject: Some(key("runtime-key")),
                key_hash: String::new(),
            }),
            kind: pb::LimitKind::BudgetDaily as i32,
            amount: 5.0,
            expire_time: Some(prost_types::Timestamp {
                seconds: (std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
                    + 3600) as i64,
                nanos: 0,
            }),
            reason: "top-up".into(),
        }))
        .await
        .expect("raise");
    for i in 0..3 {
        within(&format!("the increase on replica {i}"), bound, || async {
            allowed(i).await
        })
        .await;
    }

    // Replica 1 sees both changes in the one audit trail.
    let events = admin(1)
        .await
        .list_audit_events(authed(apb::ListAuditEventsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .events;
    let methods: Vec<&str> = events.iter().map(|e| e.method.as_str()).collect();
    assert_eq!(methods, ["RaiseBudget", "CreateSubjectLimits"]);

    // Two replicas updating the same entry with the same etag: one wins,
    // the other is ABORTED.
    let get = admin(1)
        .await
        .get_subject_limits(authed(apb::GetSubjectLimitsRequest {
            subject: Some(apb::SubjectRef {
                subject: Some(key("runtime-key")),
                key_hash: String::new(),
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .subject_limits
        .unwrap();
    let update = |daily: f64| apb::UpdateSubjectLimitsRequest {
        subject: Some(apb::SubjectRef {
            subject: Some(key("runtime-key")),
            key_hash: String::new(),
        }),
        subject_limits: Some(apb::SubjectLimits {
            daily_usd: Some(daily),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["daily_usd".into()],
        }),
        etag: get.etag.clone(),
        allow_missing: false,
        reason: "race".into(),
    };
    let first = admin(0)
        .await
        .update_subject_limits(authed(update(1.0)))
        .await;
    let second = admin(2)
        .await
        .update_subject_limits(authed(update(2.0)))
        .await;
    assert!(first.is_ok(), "{first:?}");
    assert_eq!(second.unwrap_err().code(), Code::Aborted);
}

/// The exactness test on a Redis Cluster of three masters: requests name
/// one of 30 API keys, its user and one shared team whose hourly budget
/// fits 50 reserved checks of $1; the subjects of one request sit in
/// different hash slots, on different masters.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_a_redis_cluster_admit_exactly_the_budget() {
    let redis = cluster::RedisCluster::start(false);
    let config = format!(
        r#"
limits:
  budgets:
    by_team:
      "cluster-team":
        hourly: 50.00
  rate_limits:
    by_api_key:
      default:
        requests_per_hour: 1000
    by_user:
      default:
        requests_per_hour: 1000
  storage:
    backend: redis
    redis:
      url: {url}
      nodes: [{nodes}]
      cluster: true
      key_prefix: e2e-cluster
      command_timeout: 2s
"#,
        url = redis.url(0),
        nodes = redis.urls().join(", ")
    );
    let replicas: Vec<Limitsd> = (0..3).map(|_| Limitsd::start(&config)).collect();
    let mut clients = Vec::new();
    for d in &replicas {
        clients.push(d.client().await);
    }
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let mut c = clients[i % 3].clone();
            let subjects = vec![
                key(&format!("cluster-key-{}", i % 30)),
                user(&format!("cluster-user-{}", i % 30)),
                team("cluster-team"),
            ];
            let mut req = check(subjects, 1.0);
            req.reserve = true;
            tokio::spawn(async move { c.check_limits(req).await.expect("a decision").into_inner() })
        })
        .collect();
    let mut allowed = 0;
    for t in tasks {
        if t.await.unwrap().allowed {
            allowed += 1;
        }
    }
    assert_eq!(
        allowed, 50,
        "exactly the budget is admitted across replicas"
    );
    for c in &mut clients {
        let u = c
            .get_usage(usage_req(team("cluster-team")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(used(&u, pb::LimitKind::BudgetHourly), 50.0);
    }
    let states: Vec<usize> = (0..3)
        .map(|i| {
            redis
                .cli(i, &["--scan", "--pattern", "*:s2:*"])
                .lines()
                .count()
        })
        .collect();
    assert!(
        states.iter().all(|&n| n > 0),
        "states per master: {states:?}"
    );
}

/// Three replicas on one Redis, each with the same webhook: 100 reserved
/// checks spread over them cross 50 % and 80 % of a shared budget, and the
/// receiver gets each crossing exactly once, from whichever replica
/// decided it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_deliver_each_crossing_once() {
    let redis = RedisServer::start();
    let (url, got) = receiver(vec![]).await;
    let yaml = format!(
        r#"
limits:
  budgets:
    alert_thresholds: [0.5, 0.8]
    by_api_key:
      "alerted-key": {{ hourly: 50.00 }}
  alerts:
    webhooks:
      - url: {url}
        secret: {SECRET}
  storage:
    backend: redis
    redis:
      url: {redis}
      key_prefix: e2e-alerts
      command_timeout: 2s
"#,
        redis = redis.url()
    );
    let replicas: Vec<Limitsd> = (0..3).map(|_| Limitsd::start(&yaml)).collect();
    let allowed = burst(&replicas, 100, "alerted-key", 0.5, true).await;
    assert_eq!(allowed, 100, "$50 of $50");
    let posts = wait_for(&got, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let posts_now = got.lock().len();
    assert_eq!(
        posts_now, 2,
        "one POST per crossing for the fleet: {posts:?}"
    );
    let mut thresholds: Vec<f64> = posts
        .iter()
        .map(|p| {
            verify(p);
            let e: serde_json::Value = serde_json::from_str(&p.body).unwrap();
            e["threshold"].as_f64().unwrap()
        })
        .collect();
    thresholds.sort_by(f64::total_cmp);
    assert_eq!(thresholds, [0.5, 0.8]);
}
