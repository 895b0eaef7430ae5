//! The same request-rate decision made by limits-core beside two peers'
//! libraries, in one process: Limitador's `RateLimiter` (crates.io, its
//! in-memory storage, default features off: no RocksDB, no Redis) and
//! governor's keyed rate limiter.
//!
//! Every library gets the same job: 10 000 keys, each limited to 1 000 000
//! requests a minute (so every call is admitted and counted), visited in a
//! fixed order; one iteration is one "may this key make a request, and if
//! so count it". Each keeps its state its own way: limits-core in an
//! `AHashMap` of subject states (as limitsd's memory store, without its
//! locks), Limitador in its own storage (conditions and variables in its
//! CEL-based limit language, the per-key context built once up front, as a
//! server would have it from the request), governor in its default keyed
//! store (a sharded `DashMap` of GCRA cells).
//!
//! limits-core's fake clock advances 50 µs per iteration; the peers read
//! their own clocks, as they must. Set `LIMITS_BENCH_CPU_TIME=1` to time
//! iterations in this thread's CPU time.

use std::collections::HashMap;
use std::hint::black_box;
use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

use ahash::AHashMap;
use criterion::{Bencher, Criterion};
use limits_core::{
    Attempt, CheckRequest, LimitKind, NanoUsd, Nanos, Policy, SubjectLimits, SubjectState, check,
};
use rustix::time::{ClockId, clock_gettime};

/// Keys visited.
const KEYS: usize = 10_000;
/// Requests a minute each key may make.
const PER_MINUTE: u32 = 1_000_000;

fn thread_cpu_time() -> Duration {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Runs `step` once per iteration, timed by the wall clock or, when `cpu`
/// is set, by this thread's CPU time.
fn run(b: &mut Bencher<'_>, cpu: bool, mut step: impl FnMut() -> bool) {
    if cpu {
        b.iter_custom(|iters| {
            let start = thread_cpu_time();
            for _ in 0..iters {
                black_box(step());
            }
            thread_cpu_time() - start
        });
    } else {
        b.iter(|| black_box(step()));
    }
}

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("key-{i:05}")).collect()
}

fn main() {
    let cpu = std::env::var_os("LIMITS_BENCH_CPU_TIME").is_some_and(|v| v == "1");
    let mut c = Criterion::default().configure_from_args();
    let ids = keys();

    // limits-core: one subject, one requests-per-minute limit.
    {
        let limits = SubjectLimits::default().with(
            LimitKind::RequestsPerMinute,
            NonZeroU64::new(u64::from(PER_MINUTE)).expect("non-zero"),
        );
        let attempts = [Attempt {
            model: String::new(),
            cost: NanoUsd(0),
            tokens: 0,
            input: 0,
            output: 0,
            skip: 0,
        }];
        let policy = Policy::default();
        let mut states: AHashMap<String, SubjectState> = ids
            .iter()
            .map(|id| (id.clone(), SubjectState::new()))
            .collect();
        let mut now = Nanos::from_secs(1_750_000_000);
        let mut i = 0;
        c.bench_function("peers/limits_core_check", |b| {
            run(b, cpu, || {
                i = (i + 1) % KEYS;
                now = now.saturating_add(Nanos(50_000));
                let state = states.get_mut(ids[i].as_str()).expect("a state");
                let req = CheckRequest {
                    attempts: &attempts,
                    reserve: None,
                    policy: &policy,
                };
                check(&mut [state], &[&limits], &req, now).allowed()
            })
        });
    }

    // Limitador: the same limit, per `key`, in its in-memory storage.
    {
        use limitador::RateLimiter;
        use limitador::limit::{Context, Limit, Namespace};
        let limiter = RateLimiter::new(KEYS as u64 * 2);
        let limit = Limit::new(
            "bench",
            u64::from(PER_MINUTE),
            60,
            Vec::<limitador::limit::Predicate>::new(),
            vec!["key".try_into().expect("a variable")],
        );
        limiter.add_limit(limit);
        let namespace: Namespace = "bench".into();
        let contexts: Vec<Context<'static>> = ids
            .iter()
            .map(|id| {
                let values: HashMap<String, String> =
                    HashMap::from([("key".to_owned(), id.clone())]);
                values.into()
            })
            .collect();
        let mut i = 0;
        c.bench_function("peers/limitador_check_and_update", |b| {
            run(b, cpu, || {
                i = (i + 1) % KEYS;
                let r = limiter
                    .check_rate_limited_and_update(&namespace, &contexts[i], 1, false)
                    .expect("in-memory storage does not fail");
                !r.limited
            })
        });
    }

    // governor: a keyed GCRA limiter with the same quota.
    {
        use governor::{Quota, RateLimiter};
        let quota = Quota::per_minute(NonZeroU32::new(PER_MINUTE).expect("non-zero"));
        let limiter = RateLimiter::keyed(quota);
        let mut i = 0;
        c.bench_function("peers/governor_check_key", |b| {
            run(b, cpu, || {
                i = (i + 1) % KEYS;
                limiter.check_key(&ids[i]).is_ok()
            })
        });
    }

    c.final_summary();
    eprintln!(
        "timing: {}",
        if cpu { "thread CPU time" } else { "wall clock" }
    );
}
