//! The Redis backend beyond the shared behaviour suite: it decides exactly
//! as the memory store does (a differential run over random operations, on
//! one hash tag and spread over several), its money stays exact past 2^53
//! nano-dollars, separate instances on one Redis share ids, windows and
//! leases and never admit past a limit when they race, the rate limit
//! service's counters have their own bound, as on the memory store, and a
//! reply or a state it cannot read is an internal error, never an outage.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use cluster::RedisCluster;

use std::collections::HashMap;
use std::num::NonZeroU64;

use limits_core::hit::Charge;
use limits_core::hit::HitOutcome;
use limits_core::{AcquireOutcome, Admission, CheckOutcome, LeaseSlot, RecordOutcome, Verdict};
use limits_core::{
    Attempt, Dimension, EnforcementMode, LimitKind, NanoUsd, Nanos, Policy, Subject, SubjectLimits,
};
use limits_store::{
    Call, CheckOp, MemoryStore, RecordOp, RedisStore, Store, StoreError, UsageView,
};

/// One outcome of any operation, so the two stores' are compared whole.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Check(CheckOutcome),
    Record(RecordOutcome),
    Acquire(AcquireOutcome),
    Hit(HitOutcome),
}
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::{RedisServer, Req, T0, at, key, limits, usd, used};

/// Translates the Redis store's ids into the memory store's, so outcomes
/// can be compared whole.
#[derive(Default)]
struct Ids {
    to_memory: HashMap<u64, u64>,
}

impl Ids {
    fn pair(&mut self, memory: Option<u64>, redis: Option<u64>) {
        assert_eq!(memory.is_some(), redis.is_some(), "one issued an id");
        if let (Some(m), Some(r)) = (memory, redis) {
            self.to_memory.insert(r, m);
        }
    }

    fn map(&self, redis: u64) -> u64 {
        *self.to_memory.get(&redis).unwrap_or(&redis)
    }

    fn outcome(&mut self, memory: &Outcome, redis: Outcome) -> Outcome {
        match (memory, redis) {
            (Outcome::Check(m), Outcome::Check(mut r)) => {
                self.pair(m.reservation(), r.reservation());
                if let Verdict::Allowed { reservation, .. } = &mut r.verdict {
                    *reservation = reservation.map(|id| self.map(id));
                }
                Outcome::Check(r)
            }
            (Outcome::Acquire(m), Outcome::Acquire(mut r)) => {
                self.pair(m.lease().map(|l| l.id), r.lease().map(|l| l.id));
                if let Admission::Acquired(lease) = &mut r.admission {
                    lease.id = self.map(lease.id);
                }
                Outcome::Acquire(r)
            }
            (Outcome::Record(_), Outcome::Record(mut r)) => {
                if let Some(h) = &mut r.prior {
                    h.id = self.map(h.id);
                }
                Outcome::Record(r)
            }
            (_, r) => r,
        }
    }

    fn usage(&self, mut v: UsageView) -> UsageView {
        for h in &mut v.holds {
            h.id = self.map(h.id);
        }
        for l in &mut v.leases {
            l.id = self.map(l.id);
        }
        v
    }
}

fn random_limits(rng: &mut StdRng) -> SubjectLimits {
    let mut l = SubjectLimits::default();
    for kind in LimitKind::WINDOWED {
        if rng.random_bool(0.45) {
            let n = match kind.resource() {
                limits_core::Resource::Cost => rng.random_range(20..120),
                limits_core::Resource::Tokens => rng.random_range(30..200),
                _ => rng.random_range(2..8),
            };
            l.set(kind, NonZeroU64::new(n));
        }
    }
    if rng.random_bool(0.4) {
        l.set_max_concurrent(std::num::NonZeroU32::new(rng.random_range(1..4)));
    }
    l
}

fn pick_subjects(rng: &mut StdRng, pool: &[Subject], most: usize) -> Vec<usize> {
    let n = rng.random_range(1..=most.min(pool.len()));
    let mut idx: Vec<usize> = (0..pool.len()).collect();
    for i in 0..n {
        let j = rng.random_range(i..idx.len());
        idx.swap(i, j);
    }
    idx.truncate(n);
    idx
}

/// Random operations, the same on both stores at the same fake instants:
/// every outcome, usage view and sweep count must be equal.
async fn differential(seed: u64, server: &RedisServer, shards: u16) {
    let mut rng = StdRng::seed_from_u64(seed);
    let memory = MemoryStore::new(100_000);
    let redis = server.spread_store(100_000, shards);
    let mut ids = Ids::default();
    let pool: Vec<Subject> = (0..5)
        .map(|i| {
            let d = Dimension::ALL[i % 3];
            Subject::new(d, format!("s{i}-{seed}"))
        })
        .collect();
    let mut lims: Vec<SubjectLimits> = pool.iter().map(|_| random_limits(&mut rng)).collect();
    let mut reservations: Vec<(u64, u64)> = Vec::new();
    let mut leases: Vec<(u64, u64)> = Vec::new();
    let mut now = T0;
    let steps = [
        0,
        1_000_000,
        7_000_000,
        100_000_000,
        1_000_000_000,
        17_000_000_000,
        61_000_000_000,
        600_000_000_000,
        7_200_000_000_000,
    ];
    for step in 0..1_500 {
        if rng.random_bool(0.3) {
            now = now.saturating_add(Nanos(steps[rng.random_range(0..steps.len())]));
        }
        if rng.random_bool(0.01) {
            // A reload: new limits for one subject, counters kept.
            let i = rng.random_range(0..pool.len());
            lims[i] = random_limits(&mut rng);
        }
        let chosen = pick_subjects(&mut rng, &pool, 3);
        let subjects: Vec<Subject> = chosen.iter().map(|&i| pool[i].clone()).collect();
        let sl: Vec<&SubjectLimits> = chosen.iter().map(|&i| &lims[i]).collect();
        let mode = [
            EnforcementMode::Block,
            EnforcementMode::Downgrade,
            EnforcementMode::Alert,
            EnforcementMode::Queue,
        ][rng.random_range(0..4)];
        let policy = Policy {
            mode,
            alert_threshold_ppm: rng.random_bool(0.5).then_some(800_000),
            ..Policy::default()
        };
        let attempts: Vec<Attempt> = (0..rng.random_range(1..4))
            .map(|j| {
                let tokens = rng.random_range(0..60);
                let input = rng.random_range(0..=tokens);
                Attempt {
                    model: format!("m{j}"),
                    cost: NanoUsd(rng.random_range(0..40)),
                    tokens,
                    input,
                    output: tokens - input,
                    // As a model scope of another attempt's model leaves
                    // a subject out.
                    skip: rng.random_range(0..4),
                }
            })
            .collect();
        let what = rng.random_range(0..100);
        let (m, r) = match what {
            0..40 => {
                let reserve_ttl = rng
                    .random_bool(0.5)
                    .then(|| Nanos::from_millis(rng.random_range(1..120_000)));
                let op = CheckOp {
                    attempts: &attempts,
                    reserve_ttl,
                    tag: 7,
                    policy: &policy,
                };
                (
                    memory
                        .check(Call {
                            subjects: &subjects,
                            limits: &sl,
                            op,
                            now,
                        })
                        .await
                        .map(Outcome::Check),
                    redis
                        .check(Call {
                            subjects: &subjects,
                            limits: &sl,
                            op,
                            now,
                        })
                        .await
                        .map(Outcome::Check),
                )
            }
            40..60 => {
                let (reservation, redis_reservation) = match rng.random_range(0..4) {
                    0 => (None, None),
                    1 => (Some(1 << 50), Some(1 << 50)),
                    _ if !reservations.is_empty() => {
                        let (m, r) = reservations[rng.random_range(0..reservations.len())];
                        (Some(m), Some(r))
                    }
                    _ => (None, None),
                };
                let cost = NanoUsd(rng.random_range(0..40));
                let tokens = rng.random_range(0..60);
                // A third are progress records of a streamed response,
                // some numbered.
                let progress = (reservation.is_some() && rng.random_bool(0.35)).then(|| {
                    limits_core::Progress {
                        hold_until: now
                            .saturating_add(Nanos::from_millis(rng.random_range(1..60_000))),
                        tag: 0,
                    }
                });
                let sequence = if reservation.is_some() && rng.random_bool(0.3) {
                    rng.random_range(1..5)
                } else {
                    0
                };
                let op = |reservation| RecordOp {
                    reservation,
                    cost,
                    tokens,
                    input: tokens / 3,
                    output: tokens - tokens / 3,
                    progress,
                    sequence,
                    policy: &policy,
                };
                (
                    memory
                        .record(Call {
                            subjects: &subjects,
                            limits: &sl,
                            op: op(reservation),
                            now,
                        })
                        .await
                        .map(Outcome::Record),
                    redis
                        .record(Call {
                            subjects: &subjects,
                            limits: &sl,
                            op: op(redis_reservation),
                            now,
                        })
                        .await
                        .map(Outcome::Record),
                )
            }
            60..75 => {
                let ttl = Nanos::from_millis(rng.random_range(1..60_000));
                (
                    memory
                        .acquire(Call {
                            subjects: &subjects,
                            limits: &sl,
                            op: ttl,
                            now,
                        })
                        .await
                        .map(Outcome::Acquire),
                    redis
                        .acquire(Call {
                            subjects: &subjects,
                            limits: &sl,
                            op: ttl,
                            now,
                        })
                        .await
                        .map(Outcome::Acquire),
                )
            }
            75..85 => {
                let charges: Vec<Charge> = subjects
                    .iter()
                    .map(|_| Charge {
                        requests: rng.random_range(0..3),
                        tokens: rng.random_range(0..50),
                    })
                    .collect();
                (
                    memory
                        .hit(Call {
                            subjects: &subjects,
                            limits: &sl,
                            op: &charges,
                            now,
                        })
                        .await
                        .map(Outcome::Hit),
                    redis
                        .hit(Call {
                            subjects: &subjects,
                            limits: &sl,
                            op: &charges,
                            now,
                        })
                        .await
                        .map(Outcome::Hit),
                )
            }
            85..93 => {
                let (m, r) = if leases.is_empty() || rng.random_bool(0.1) {
                    (1 << 50, 1 << 50)
                } else {
                    leases[rng.random_range(0..leases.len())]
                };
                assert_eq!(
                    memory.release(m, now).await,
                    redis.release(r, now).await,
                    "release at step {step} (seed {seed})"
                );
                continue;
            }
            93..98 => {
                let i = rng.random_range(0..pool.len());
                let m = memory.usage(&pool[i], &lims[i], now).await.unwrap();
                let r = redis.usage(&pool[i], &lims[i], now).await.unwrap();
                assert_eq!(m, ids.usage(r), "usage at step {step} (seed {seed})");
                continue;
            }
            _ => {
                let table = limits_core::LimitTable::new();
                let m = memory.sweep(&table, now).await.unwrap();
                let r = redis.sweep(&table, now).await.unwrap();
                assert_eq!(
                    (m.open_reservations, m.live_leases),
                    (r.open_reservations, r.live_leases),
                    "sweep at step {step} (seed {seed})"
                );
                continue;
            }
        };
        match (&m, r) {
            (Ok(m), Ok(r)) => {
                let r = ids.outcome(m, r);
                assert_eq!(m, &r, "step {step} (seed {seed})");
                match (m, &r) {
                    (Outcome::Check(mc), Outcome::Check(_)) => {
                        if let Some(id) = mc.reservation() {
                            let rid = ids
                                .to_memory
                                .iter()
                                .find(|&(_, &v)| v == id)
                                .map(|(&k, _)| k)
                                .unwrap();
                            reservations.push((id, rid));
                        }
                    }
                    (
                        Outcome::Acquire(AcquireOutcome {
                            admission: Admission::Acquired(LeaseSlot { id, .. }),
                            ..
                        }),
                        _,
                    ) => {
                        let rid = ids
                            .to_memory
                            .iter()
                            .find(|&(_, v)| v == id)
                            .map(|(&k, _)| k)
                            .unwrap();
                        leases.push((*id, rid));
                    }
                    _ => {}
                }
            }
            (Err(me), Err(re)) => assert_eq!(me, &re, "step {step} (seed {seed})"),
            (m, r) => panic!("step {step} (seed {seed}): memory {m:?}, redis {r:?}"),
        }
    }
}

#[tokio::test]
async fn decides_exactly_as_the_engine_over_random_operations() {
    let server = RedisServer::start();
    for seed in 1..=4 {
        differential(seed, &server, 1).await;
    }
    // Several subjects of one operation in several hash tags.
    for seed in 5..=6 {
        differential(seed, &server, 8).await;
    }
}

/// Amounts are two limbs in Redis, so money stays exact where a double
/// would not: a $1e9 budget (1e18 nano-dollars) and many small costs on
/// top of a spend beyond 2^53.
#[tokio::test]
async fn money_stays_exact_beyond_two_to_the_fifty_three() {
    let server = RedisServer::start();
    let store = server.store(100);
    let daily = LimitKind::BudgetDaily;
    let max = 1_000_000_000_000_000_000; // $1e9
    let l = limits(&[(daily, max)]);
    let s = key("big");
    let r = Req::new(&[(s.clone(), &l)]);
    // 2^53 + 1 is the first integer a double cannot hold.
    let base = (1u64 << 53) + 1;
    r.record(&store, None, base, 0, T0).await.unwrap();
    assert_eq!(used(&store, &s, &l, daily, T0).await, base);
    // 10 000 costs of $0.000001 each (1 000 nano-dollars).
    for _ in 0..10_000 {
        r.record(&store, None, 1_000, 0, T0).await.unwrap();
    }
    assert_eq!(used(&store, &s, &l, daily, T0).await, base + 10_000_000);
    // Fill to exactly the limit: a cost of one more nano-dollar is denied,
    // the exact remainder fits.
    let rest = max - base - 10_000_000;
    let over = r.check(&store, rest + 1, 0, None, T0).await.unwrap();
    assert!(!over.allowed());
    let fits = r
        .check(&store, rest, 0, Some(Nanos::MINUTE), T0)
        .await
        .unwrap();
    assert!(fits.allowed(), "the exact remainder fits");
    assert_eq!(used(&store, &s, &l, daily, T0).await, max);
    let full = r.check(&store, 0, 0, None, T0).await.unwrap();
    assert!(
        !full.allowed(),
        "a full budget denies a call of unknown cost"
    );
    let status = common::status(&full.statuses, daily);
    assert_eq!((status.used, status.limit), (max, max));
}

/// Two instances on one prefix are one store: ids issued by one are known
/// to the other, a reservation settles once whichever settles it, a lease
/// Three replicas on one Redis, 60 reserved checks at once: each alert
/// threshold is crossed by exactly one of them, whichever replica decided
/// it (the fired thresholds are part of the state each decision swaps in).
#[tokio::test]
async fn three_replicas_report_each_crossing_once() {
    let server = RedisServer::start();
    let prefix = common::unique_prefix();
    let replicas: Vec<_> = (0..3)
        .map(|_| server.store_on_prefix(&prefix, 100, true))
        .collect();
    let l = limits(&[(LimitKind::BudgetHourly, usd(50))]);
    let subjects = vec![key("crossed")];
    let policy = Policy {
        alert_thresholds: limits_core::Thresholds::new([500_000, 800_000]).unwrap(),
        ..Policy::default()
    };
    let attempts = [Attempt {
        model: "m".into(),
        cost: NanoUsd(usd(1)),
        ..Attempt::default()
    }];
    let calls = (0..60).map(|i| {
        let store = &replicas[i % 3];
        let (subjects, policy, attempts, l) = (&subjects, &policy, &attempts, &l);
        async move {
            store
                .check(limits_store::Call {
                    subjects,
                    limits: &[l],
                    op: limits_store::CheckOp {
                        attempts,
                        reserve_ttl: Some(at(600)),
                        tag: 0,
                        policy,
                    },
                    now: T0,
                })
                .await
                .unwrap()
        }
    });
    let outcomes = futures_util::future::join_all(calls).await;
    assert_eq!(outcomes.iter().filter(|o| o.allowed()).count(), 50);
    let mut fired: Vec<u32> = outcomes
        .iter()
        .flat_map(|o| o.crossings.iter().map(|c| c.threshold_ppm))
        .collect();
    fired.sort_unstable();
    assert_eq!(fired, [500_000, 800_000], "each threshold once in all");
}

/// taken on one is released on the other.
#[tokio::test]
async fn instances_share_ids_reservations_and_leases() {
    let server = RedisServer::start();
    let prefix = common::unique_prefix();
    let a = server.store_on_prefix(&prefix, 100, true);
    let b = server.store_on_prefix(&prefix, 100, true);
    let l = limits(&[
        (LimitKind::BudgetHourly, usd(10)),
        (LimitKind::MaxConcurrent, 1),
    ]);
    let s = key("shared");
    let r = Req::new(&[(s.clone(), &l)]);
    let id = r
        .check(&a, usd(6), 0, Some(Nanos::MINUTE), T0)
        .await
        .unwrap()
        .reservation()
        .unwrap();
    assert!(
        !r.check(&b, usd(6), 0, None, T0).await.unwrap().allowed(),
        "b sees a's hold"
    );
    let first = r.record(&b, Some(id), usd(1), 0, T0).await.unwrap();
    assert!(!first.duplicate);
    let again = r.record(&a, Some(id), usd(1), 0, T0).await.unwrap();
    assert!(again.duplicate, "settled once, whichever replica retries");
    assert_eq!(used(&a, &s, &l, LimitKind::BudgetHourly, T0).await, usd(1));

    let (_, lease) = r.acquire(&a, Nanos::MINUTE, T0).await.unwrap();
    let (lease, _) = lease.unwrap();
    assert!(!r.acquire(&b, Nanos::MINUTE, T0).await.unwrap().0.acquired());
    assert_eq!(b.release(lease, at(1)).await, Ok(true));
    assert_eq!(
        a.release(lease, at(1)).await,
        Ok(false),
        "twice is harmless"
    );
    assert!(
        r.acquire(&b, Nanos::MINUTE, at(1))
            .await
            .unwrap()
            .0
            .acquired()
    );
    assert_eq!(
        a.release(1 << 40, at(1)).await,
        Err(StoreError::UnknownLease)
    );
}

/// With Redis gone every call is `Unavailable`; when it is back (on the
/// same port) the same store instance serves again without being rebuilt.
#[tokio::test]
async fn unavailable_while_redis_is_down_then_recovers() {
    let mut server = RedisServer::start();
    let store: RedisStore = server.store_with_clock(100, false);
    let l = limits(&[(LimitKind::RequestsPerMinute, 5)]);
    let r = Req::new(&[(key("k"), &l)]);
    assert!(r.check(&store, 0, 0, None, T0).await.unwrap().allowed());
    let port = server.port;
    server.stop();
    let err = r.check(&store, 0, 0, None, T0).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.is_transient());
    let _server = RedisServer::start_on(port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match r.check(&store, 0, 0, None, T0).await {
            Ok(out) => {
                assert!(out.allowed());
                break;
            }
            Err(StoreError::Unavailable(_)) => {
                assert!(std::time::Instant::now() < deadline, "no recovery");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

/// `rediss://`: the client speaks TLS (rustls) to a TLS-only redis-server
/// with a self-signed certificate made here (`#insecure` skips the
/// certificate check, as only a test may).
#[tokio::test]
async fn rediss_speaks_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key_file)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl makes the test certificate");
    assert!(made.success());
    let port = common::free_port();
    let mut child = std::process::Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key_file)
        .args(["--tls-auth-clients", "no", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(&mut child);
    let store = RedisStore::open(&limits_store::RedisOptions {
        url: format!("rediss://127.0.0.1:{port}/#insecure"),
        key_prefix: "tls".to_owned(),
        ..limits_store::RedisOptions::default()
    })
    .unwrap()
    .with_fake_clock();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while store.ping().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "no TLS connection");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let l = limits(&[(LimitKind::RequestsPerMinute, 1)]);
    let r = Req::new(&[(key("tls"), &l)]);
    assert!(r.check(&store, 0, 0, None, T0).await.unwrap().allowed());
    assert!(!r.check(&store, 0, 0, None, T0).await.unwrap().allowed());
}

/// A real Redis Cluster of three persistent masters. Three replicas race
/// 300 reserved checks against a team's budget for 50, each request naming
/// one of 30 API keys and users too: exactly 50 are admitted although each
/// request's subjects sit in different slots, and the subjects' states are
/// spread over all three masters. Then the master that holds the team's
/// state stops: calls that need it are `UNAVAILABLE`; when it is back,
/// service resumes by itself and nothing it acknowledged is lost.
#[tokio::test]
async fn a_three_master_cluster_spreads_subjects_and_stays_exact() {
    let mut cluster = RedisCluster::start(true);
    let open = || {
        RedisStore::open(&limits_store::RedisOptions {
            url: cluster.url(0),
            nodes: cluster.urls(),
            cluster: true,
            key_prefix: "cluster".to_owned(),
            command_timeout: std::time::Duration::from_secs(2),
            ..limits_store::RedisOptions::default()
        })
        .unwrap()
    };
    let replicas = [open(), open(), open()];
    assert_eq!(replicas[0].shards(), 64);
    let budget = limits(&[(LimitKind::BudgetDaily, usd(50))]);
    let open_limits = limits(&[(LimitKind::RequestsPerHour, 1_000)]);
    let requests: Vec<Req<'_>> = (0..30)
        .map(|i| {
            Req::new(&[
                (key(&format!("k{i}")), &open_limits),
                (common::user(&format!("u{i}")), &open_limits),
                (common::team("shared"), &budget),
            ])
        })
        .collect();
    let calls = (0..300).map(|i| {
        let (store, r) = (&replicas[i % 3], &requests[i % 30]);
        async move { r.check(store, usd(1), 0, Some(Nanos::MINUTE), T0).await }
    });
    let outcomes = futures_util::future::join_all(calls).await;
    let allowed = outcomes
        .iter()
        .filter(|o| o.as_ref().expect("answered").allowed())
        .count();
    assert_eq!(allowed, 50, "exactly the budget");
    let states = |i: usize| {
        cluster
            .cli(i, &["--scan", "--pattern", "*:s2:*"])
            .lines()
            .count()
    };
    let spread: Vec<usize> = (0..3).map(states).collect();
    assert!(
        spread.iter().all(|&n| n > 0),
        "states per master: {spread:?}"
    );
    assert_eq!(
        spread.iter().sum::<usize>(),
        61,
        "30 keys, 30 users, 1 team"
    );

    // An acknowledged record, then the team's master stops.
    let team = Req::new(&[(common::team("shared"), &budget)]);
    team.record(&replicas[0], None, usd(7), 0, T0)
        .await
        .unwrap();
    let daily = LimitKind::BudgetDaily;
    let spent = used(&replicas[1], &common::team("shared"), &budget, daily, T0).await;
    assert_eq!(spent, usd(57), "50 held, 7 recorded");
    let holder = (0..3)
        .find(|&i| {
            cluster
                .cli(i, &["--scan", "--pattern", "*:s2:2:shared"])
                .contains("shared")
        })
        .expect("a master holds the team");
    cluster.stop(holder);
    let err = team
        .check(&replicas[2], 0, 0, None, T0)
        .await
        .expect_err("the team's master is down");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    cluster.restart(holder);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match used_or_err(&replicas[2], &budget).await {
            Ok(n) => {
                assert_eq!(n, usd(57), "nothing acknowledged was lost");
                break;
            }
            Err(e) => {
                assert!(e.is_transient(), "{e:?}");
                assert!(std::time::Instant::now() < deadline, "no recovery: {e:?}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    assert!(team.check(&replicas[2], 0, 0, None, T0).await.is_ok());
}

async fn used_or_err(store: &RedisStore, l: &SubjectLimits) -> Result<u64, StoreError> {
    let view = store.usage(&common::team("shared"), l, T0).await?;
    Ok(common::status(&view.statuses, LimitKind::BudgetDaily).used)
}

/// A script that answers what this build cannot read, or fails, is an
/// internal error: never `Unavailable`, which fail-open would answer with
/// an allow.
#[tokio::test]
async fn a_reply_that_cannot_be_read_is_internal_never_unavailable() {
    let server = RedisServer::start();
    let l = limits(&[(LimitKind::RequestsPerMinute, 5)]);
    let r = Req::new(&[(key("k"), &l)]);
    for script in [
        "return { 0, 'not a number' }",
        "return 'a string'",
        "return { 0 }",
        "return { 9 }",
        "error('a bug in the script')",
        "return redis.call('NOSUCHCOMMAND')",
    ] {
        let store = server.store(100).with_script(script);
        let err = r.check(&store, 0, 0, None, T0).await.unwrap_err();
        assert!(matches!(err, StoreError::Internal(_)), "{script}: {err:?}");
        assert!(!err.is_transient(), "{script}");
    }
}

/// Redis losing its data (a restart without persistence, a FLUSHALL) loses
/// the secret it kept for replicas without a configured one. Replicas that
/// had settled it, and one that had not, settle again on one secret: a key
/// is never counted under two hashes.
#[tokio::test]
async fn replicas_agree_on_a_secret_after_redis_loses_its_data() {
    let server = RedisServer::start();
    let prefix = common::unique_prefix();
    let a = server.store_on_prefix(&prefix, 100, true);
    let l = limits(&[(LimitKind::RequestsPerMinute, 3)]);
    let r = Req::new(&[(key("shared"), &l)]);
    assert!(r.check(&a, 0, 0, None, T0).await.unwrap().allowed());
    let before = a.secret().await.unwrap();

    server.flush_all();
    // A replica that never saw the old secret comes first after the loss.
    let b = server.store_on_prefix(&prefix, 100, true);
    let mut allowed = Vec::new();
    for store in [&b, &a, &b, &a] {
        allowed.push(r.check(store, 0, 0, None, T0).await.unwrap().allowed());
    }
    assert_eq!(allowed, [true, true, true, false], "one count across both");
    let (sa, sb) = (a.secret().await.unwrap(), b.secret().await.unwrap());
    assert_eq!(sa, sb);
    assert_ne!(*sa, *before, "the replica that came first made the new one");

    // A replica with another configured secret is refused, changing nothing.
    let options = limits_store::RedisOptions {
        url: server.url(),
        key_prefix: prefix.clone(),
        secret: Some(limits_store::Secret::new(b"a configured secret that differs").unwrap()),
        ..limits_store::RedisOptions::default()
    };
    let c = RedisStore::open(&options).unwrap().with_fake_clock();
    let err = r.check(&c, 0, 0, None, T0).await.unwrap_err();
    assert!(matches!(err, StoreError::Internal(_)), "{err:?}");
    assert!(err.to_string().contains("security.secret"), "{err}");
    assert!(
        !r.check(&a, 0, 0, None, T0).await.unwrap().allowed(),
        "still 3 counted"
    );
}

/// A rate limit service counter, as `limits::config::rls::counter_id`
/// names one: an API-key subject whose id starts with the internal marker
/// (here, a rule keyed per client address).
fn counter(i: usize) -> Subject {
    key(&format!(
        "{}rls\u{2}d\u{2}ip\u{3}10.0.0.{i}",
        limits_store::INTERNAL
    ))
}

/// One request, as `ShouldRateLimit` charges each of its counters.
const ONE: Charge = Charge {
    requests: 1,
    tokens: 0,
};

/// The bounds of the stores the counter-bound tests compare: two subjects,
/// three counters.
const BOUNDS: limits_store::Bounds = limits_store::Bounds {
    subjects: 2,
    counters: 3,
};

/// One request on each subject, all or nothing: whether it was allowed.
async fn hit<S: Store>(
    store: &S,
    pairs: &[(Subject, &SubjectLimits)],
    now: Nanos,
) -> Result<bool, StoreError> {
    let charges = vec![ONE; pairs.len()];
    Ok(Req::new(pairs).hit(store, &charges, now).await?.allowed())
}

/// A check of one subject at no cost: whether it was allowed.
async fn checked<S: Store>(
    store: &S,
    subject: Subject,
    l: &SubjectLimits,
) -> Result<bool, StoreError> {
    Ok(Req::new(&[(subject, l)])
        .check(store, 0, 0, None, T0)
        .await?
        .allowed())
}

/// Issue 15 item 7 (Redis): a flood of counters (one per client address
/// through `ShouldRateLimit`) filled the one bound Redis had, and every new
/// API key's `CheckLimits` answered `RESOURCE_EXHAUSTED`. Counters now
/// have their own bound, refused as `CountersFull`, exactly as the memory
/// store answers.
async fn a_flood_of_counters_leaves_room_for_api_keys<S: Store>(store: &S) {
    let l = limits(&[(LimitKind::RequestsPerHour, 100)]);
    for i in 0..3 {
        assert_eq!(hit(store, &[(counter(i), &l)], T0).await, Ok(true));
    }
    assert_eq!(
        hit(store, &[(counter(99), &l)], T0).await,
        Err(StoreError::CountersFull(3))
    );
    // API keys still get in, up to their own bound.
    for k in ["a", "b"] {
        assert_eq!(checked(store, key(k), &l).await, Ok(true), "{k}");
    }
    assert_eq!(checked(store, key("c"), &l).await, Err(StoreError::Full(2)));
    // With both bounds reached, a call that would add one of each is
    // refused by the subjects' bound first, as the embedded stores check.
    assert_eq!(
        hit(store, &[(key("c"), &l), (counter(99), &l)], T0).await,
        Err(StoreError::Full(2))
    );
    assert_eq!(
        hit(store, &[(key("a"), &l), (counter(99), &l)], T0).await,
        Err(StoreError::CountersFull(3))
    );
    // What is kept is still served, and the refusals moved nothing.
    assert_eq!(
        hit(store, &[(key("a"), &l), (counter(0), &l)], T0).await,
        Ok(true)
    );
    let hourly = LimitKind::RequestsPerHour;
    assert_eq!(used(store, &counter(0), &l, hourly, T0).await, 2);
    assert_eq!(used(store, &key("a"), &l, hourly, T0).await, 2);
}

/// The other way round: subjects up to `max_entries` are refused as
/// `Full`, and a new counter still gets in.
async fn full_subjects_leave_room_for_counters<S: Store>(store: &S) {
    let l = limits(&[(LimitKind::RequestsPerHour, 100)]);
    for k in ["a", "b"] {
        assert_eq!(checked(store, key(k), &l).await, Ok(true), "{k}");
    }
    assert_eq!(checked(store, key("c"), &l).await, Err(StoreError::Full(2)));
    for i in 0..3 {
        assert_eq!(hit(store, &[(counter(i), &l)], T0).await, Ok(true), "{i}");
    }
    assert_eq!(
        hit(store, &[(counter(3), &l)], T0).await,
        Err(StoreError::CountersFull(3))
    );
}

/// Counters that expired leave room for new ones once the sweep has
/// dropped them (or an operation found them idle), and the room is exact:
/// as many new counters as were dropped, not one more.
async fn expired_counters_make_room_after_a_sweep<S: Store>(store: &S) {
    let l = limits(&[(LimitKind::RequestsPerMinute, 100)]);
    let subject = limits(&[(LimitKind::RequestsPerHour, 100)]);
    assert_eq!(checked(store, key("a"), &subject).await, Ok(true));
    for i in 0..3 {
        assert_eq!(hit(store, &[(counter(i), &l)], T0).await, Ok(true));
    }
    let later = at(120);
    assert_eq!(
        hit(store, &[(counter(3), &l)], later).await,
        Err(StoreError::CountersFull(3)),
        "expired, but still counted until swept"
    );
    let table = limits_core::LimitTable::new();
    let swept = store.sweep(&table, later).await.unwrap();
    assert_eq!((swept.dropped, swept.subjects), (3, 1), "the API key stays");
    for i in 10..13 {
        assert_eq!(
            hit(store, &[(counter(i), &l)], later).await,
            Ok(true),
            "{i}"
        );
    }
    assert_eq!(
        hit(store, &[(counter(13), &l)], later).await,
        Err(StoreError::CountersFull(3))
    );
    // An operation that finds a counter idle drops it there and then
    // (a hit of nothing, after its window): room again without a sweep.
    let nothing = [Charge {
        requests: 0,
        tokens: 0,
    }];
    let idle = Req::new(&[(counter(10), &l)]);
    assert!(idle.hit(store, &nothing, at(240)).await.unwrap().allowed());
    assert_eq!(hit(store, &[(counter(13), &l)], at(240)).await, Ok(true));
    // The API key was never in the counters' way, nor they in its.
    assert_eq!(checked(store, key("b"), &subject).await, Ok(true));
}

/// Each of the counter-bound behaviours on Redis and on the memory store
/// with the same bounds: the answers are the same, error for error.
#[tokio::test]
async fn counters_have_their_own_bound_as_on_the_memory_store() {
    let server = RedisServer::start();
    let redis = || {
        server.store_with_bounds(
            &common::unique_prefix(),
            BOUNDS.subjects,
            BOUNDS.counters,
            true,
        )
    };
    let memory = || MemoryStore::with_options(BOUNDS, None);
    a_flood_of_counters_leaves_room_for_api_keys(&memory()).await;
    a_flood_of_counters_leaves_room_for_api_keys(&redis()).await;
    full_subjects_leave_room_for_counters(&memory()).await;
    full_subjects_leave_room_for_counters(&redis()).await;
    expired_counters_make_room_after_a_sweep(&memory()).await;
    expired_counters_make_room_after_a_sweep(&redis()).await;
}

/// Two replicas on one prefix, their subjects spread over eight hash tags,
/// race 240 checks of the same three subjects (an API key, a user, a team)
/// against 50 requests a minute: exactly 50 are admitted, and each subject
/// counts exactly 50, whatever conflicts and retries happened in between.
#[tokio::test]
async fn racing_replicas_admit_exactly_the_limit_on_spread_subjects() {
    let server = RedisServer::start();
    let prefix = common::unique_prefix();
    let open = || {
        RedisStore::open(&limits_store::RedisOptions {
            url: server.url(),
            key_prefix: prefix.clone(),
            shards: 8,
            command_timeout: std::time::Duration::from_secs(5),
            ..limits_store::RedisOptions::default()
        })
        .unwrap()
        .with_fake_clock()
    };
    let (a, b) = (open(), open());
    let l = limits(&[(LimitKind::RequestsPerMinute, 50)]);
    let subjects = [
        key("racing"),
        common::user("racing"),
        common::team("racing"),
    ];
    let r = Req::new(&[
        (subjects[0].clone(), &l),
        (subjects[1].clone(), &l),
        (subjects[2].clone(), &l),
    ]);
    let calls = (0..240).map(|i| {
        let store = if i % 2 == 0 { &a } else { &b };
        let r = &r;
        async move { r.check(store, 0, 0, None, T0).await }
    });
    let outcomes = futures_util::future::join_all(calls).await;
    let allowed = outcomes
        .iter()
        .filter(|o| o.as_ref().expect("answered").allowed())
        .count();
    assert_eq!(allowed, 50);
    for s in &subjects {
        let rpm = LimitKind::RequestsPerMinute;
        assert_eq!(used(&a, s, &l, rpm, T0).await, 50, "{s:?}");
        assert_eq!(used(&b, s, &l, rpm, T0).await, 50, "{s:?}");
    }
}

/// A stored state this build cannot decode (another version's format, or
/// damage) is an internal error for every operation that reads it, never a
/// reason to treat the subject as empty, and never `Unavailable`.
#[tokio::test]
async fn a_state_that_cannot_be_read_is_internal() {
    let server = RedisServer::start();
    let prefix = common::unique_prefix();
    let store = server.store_on_prefix(&prefix, 100, true);
    let l = limits(&[(LimitKind::RequestsPerMinute, 5)]);
    let r = Req::new(&[(key("damaged"), &l)]);
    assert!(r.check(&store, 0, 0, None, T0).await.unwrap().allowed());
    let stored = store
        .secret()
        .await
        .unwrap()
        .stored_subject(&key("damaged"));
    let state_key = format!("{{{prefix}}}:s2:{}:{}", stored.dimension.index(), stored.id);
    let mut conn = server.connection().await;
    let _: () = redis::cmd("HSET")
        .arg(&state_key)
        .arg("v")
        .arg(999_999)
        .arg("s")
        .arg(b"\xffnot a state".as_slice())
        .query_async(&mut conn)
        .await
        .unwrap();
    // Another replica, whose cache never held the state, and this one,
    // whose cached version no longer matches.
    let other = server.store_on_prefix(&prefix, 100, true);
    for s in [&other, &store] {
        let err = r.check(s, 0, 0, None, T0).await.unwrap_err();
        assert!(matches!(err, StoreError::Internal(_)), "{err:?}");
        assert!(!err.is_transient());
    }
    let err = store.usage(&key("damaged"), &l, T0).await.unwrap_err();
    assert!(matches!(err, StoreError::Internal(_)), "{err:?}");
}
