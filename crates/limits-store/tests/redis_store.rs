//! The Redis backend beyond the shared behaviour suite: it decides exactly
//! as the engine does (a differential run against the memory store over
//! random operations), its money stays exact past 2^53 nano-dollars,
//! separate instances on one Redis share ids, windows and leases, and the
//! rate limit service's counters have their own bound, as on the memory
//! store, also over data an earlier version wrote.

mod common;

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
async fn differential(seed: u64, server: &RedisServer) {
    let mut rng = StdRng::seed_from_u64(seed);
    let memory = MemoryStore::new(100_000);
    let redis = server.store(100_000);
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
            .map(|j| Attempt {
                model: format!("m{j}"),
                cost: NanoUsd(rng.random_range(0..40)),
                tokens: rng.random_range(0..60),
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
                let op = |reservation| RecordOp {
                    reservation,
                    cost,
                    tokens,
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
        differential(seed, &server).await;
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

/// `cluster: true`: the same operations through the cluster client on a
/// one-node Redis Cluster holding every slot. All of a prefix's keys share
/// one hash tag, so a request over several subjects is still one script.
#[tokio::test]
async fn a_redis_cluster_runs_the_same_script() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--cluster-enabled",
            "yes",
        ])
        .arg("--dir")
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
    let cli = |args: &[&str]| {
        std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !cli(&["cluster", "addslotsrange", "0", "16383"]).contains("OK") {
        assert!(std::time::Instant::now() < deadline, "no cluster");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    while !cli(&["cluster", "info"]).contains("cluster_state:ok") {
        assert!(std::time::Instant::now() < deadline, "cluster not ok");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let store = RedisStore::open(&limits_store::RedisOptions {
        url: format!("redis://127.0.0.1:{port}"),
        cluster: true,
        key_prefix: "cluster".to_owned(),
        ..limits_store::RedisOptions::default()
    })
    .unwrap()
    .with_fake_clock();
    let l = limits(&[
        (LimitKind::RequestsPerMinute, 2),
        (LimitKind::MaxConcurrent, 1),
    ]);
    let r = Req::new(&[
        (key("c1"), &l),
        (common::user("c2"), &l),
        (common::team("c3"), &l),
    ]);
    assert!(r.check(&store, 0, 0, None, T0).await.unwrap().allowed());
    assert!(r.check(&store, 0, 0, None, T0).await.unwrap().allowed());
    assert!(!r.check(&store, 0, 0, None, T0).await.unwrap().allowed());
    let (_, lease) = r.acquire(&store, Nanos::MINUTE, T0).await.unwrap();
    assert_eq!(store.release(lease.unwrap().0, T0).await, Ok(true));
    let view = store.usage(&key("c1"), &l, T0).await.unwrap();
    assert_eq!(
        common::status(&view.statuses, LimitKind::RequestsPerMinute).used,
        2
    );
    // A rate limit service counter, kept in the counter index too.
    assert_eq!(hit(&store, &[(counter(0), &l)], T0).await, Ok(true));
    // The sweep deletes keys it finds in the indexes (not declared in
    // KEYS): allowed because they share the indexes' slot.
    let table = limits_core::LimitTable::new();
    let swept = store.sweep(&table, at(3_600)).await.unwrap();
    assert_eq!((swept.dropped, swept.subjects), (4, 0));
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

/// A store's raw view of one counter: its score in the index of every
/// state key and in the counter index.
async fn scores(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    state_key: &str,
) -> (Option<u64>, Option<u64>) {
    let mut out = [None, None];
    for (score, index) in out.iter_mut().zip(["idx", "idx:counters"]) {
        *score = redis::cmd("ZSCORE")
            .arg(format!("{{{prefix}}}:{index}"))
            .arg(state_key)
            .query_async(conn)
            .await
            .unwrap();
    }
    (out[0], out[1])
}

async fn state_key(store: &RedisStore, prefix: &str, subject: &Subject) -> String {
    let stored = store.secret().await.unwrap().stored_subject(subject);
    format!("{{{prefix}}}:s:{}:{}", stored.dimension.index(), stored.id)
}

/// Data an earlier version wrote has no counter index: its counters are in
/// the one index, counted as subjects. Read by this version, such a counter
/// keeps its state, counts as a subject (never as nothing) until it is next
/// written, and from then on against the counters' bound.
#[tokio::test]
async fn counters_an_earlier_version_wrote_keep_their_state_and_move_bound() {
    let server = RedisServer::start();
    let prefix = common::unique_prefix();
    let store = server.store_with_bounds(&prefix, 2, 2, true);
    let mut conn = server.connection().await;
    let l = limits(&[(LimitKind::RequestsPerHour, 100)]);
    let hourly = LimitKind::RequestsPerHour;
    for _ in 0..2 {
        assert_eq!(hit(&store, &[(counter(0), &l)], T0).await, Ok(true));
    }
    // As the earlier version left it: in the index, not in a counter index.
    let c0 = state_key(&store, &prefix, &counter(0)).await;
    let _: () = redis::cmd("DEL")
        .arg(format!("{{{prefix}}}:idx:counters"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(matches!(
        scores(&mut conn, &prefix, &c0).await,
        (Some(_), None)
    ));

    assert_eq!(
        used(&store, &counter(0), &l, hourly, T0).await,
        2,
        "state kept"
    );
    assert_eq!(checked(&store, key("a"), &l).await, Ok(true));
    assert_eq!(
        checked(&store, key("b"), &l).await,
        Err(StoreError::Full(2)),
        "the old counter counts as a subject until it is written again"
    );
    assert_eq!(hit(&store, &[(counter(0), &l)], T0).await, Ok(true));
    assert_eq!(used(&store, &counter(0), &l, hourly, T0).await, 3);
    let (all, counters) = scores(&mut conn, &prefix, &c0).await;
    assert!(all.is_some() && all == counters, "{all:?} {counters:?}");
    assert_eq!(checked(&store, key("b"), &l).await, Ok(true));
    assert_eq!(hit(&store, &[(counter(1), &l)], T0).await, Ok(true));
    assert_eq!(
        hit(&store, &[(counter(2), &l)], T0).await,
        Err(StoreError::CountersFull(2))
    );
}

/// During a rolling upgrade an earlier version, which knows no counter
/// index, deletes idle counters from the one index only, and moves a
/// counter's instant there only. The sweep removes the first kind from the
/// counter index (or it would count forever) and keeps the second.
#[tokio::test]
async fn the_sweep_repairs_what_an_earlier_version_changed() {
    let server = RedisServer::start();
    let prefix = common::unique_prefix();
    let store = server.store_with_bounds(&prefix, 10, 2, true);
    let mut conn = server.connection().await;
    let l = limits(&[(LimitKind::RequestsPerMinute, 100)]);
    for i in 0..2 {
        assert_eq!(hit(&store, &[(counter(i), &l)], T0).await, Ok(true));
    }
    let (c0, c1) = (
        state_key(&store, &prefix, &counter(0)).await,
        state_key(&store, &prefix, &counter(1)).await,
    );
    let (_, stale) = scores(&mut conn, &prefix, &c1).await;
    // A later hit on counter 1, then its counter index entry put back as
    // an earlier version's write would have left it.
    assert_eq!(hit(&store, &[(counter(1), &l)], at(100)).await, Ok(true));
    let _: () = redis::cmd("ZADD")
        .arg(format!("{{{prefix}}}:idx:counters"))
        .arg(stale.unwrap())
        .arg(&c1)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Counter 0, idle, deleted as an earlier version's sweep deletes.
    let _: () = redis::cmd("DEL")
        .arg(&c0)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("ZREM")
        .arg(format!("{{{prefix}}}:idx"))
        .arg(&c0)
        .query_async(&mut conn)
        .await
        .unwrap();
    let later = at(120);
    assert_eq!(
        hit(&store, &[(counter(2), &l)], later).await,
        Err(StoreError::CountersFull(2)),
        "until the sweep, the deleted counter is still counted"
    );
    let table = limits_core::LimitTable::new();
    let swept = store.sweep(&table, later).await.unwrap();
    assert_eq!((swept.dropped, swept.subjects), (0, 1));
    assert_eq!(
        used(&store, &counter(1), &l, LimitKind::RequestsPerMinute, later).await,
        1,
        "the counter an earlier version moved is kept"
    );
    let (all, counters) = scores(&mut conn, &prefix, &c1).await;
    assert!(all.is_some() && all == counters, "{all:?} {counters:?}");
    assert_eq!(scores(&mut conn, &prefix, &c0).await, (None, None));
    assert_eq!(hit(&store, &[(counter(2), &l)], later).await, Ok(true));
    assert_eq!(
        hit(&store, &[(counter(3), &l)], later).await,
        Err(StoreError::CountersFull(2))
    );
}
