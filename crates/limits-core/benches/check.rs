//! Criterion benchmark of `engine::check` over three subjects (api_key, user,
//! team) drawn from 100 000 subjects per dimension, with and without
//! recording usage, followed by a memory-per-subject report. The subjects
//! are found by map lookup, as a store would; the `_resolved` variant finds
//! them by index, to time the check alone on equally cold state.
//!
//! Set `LIMITS_BENCH_CPU_TIME=1` to time iterations in this thread's CPU time
//! instead of wall-clock time: on a machine shared with other work, time
//! spent descheduled then stops counting against the code measured.

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{POPULATION, Population};
use criterion::{Bencher, Criterion};
use rustix::time::{ClockId, clock_gettime};

fn thread_cpu_time() -> Duration {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Runs `step(record)` once per iteration, timed by the wall clock or, when
/// `cpu` is set, by this thread's CPU time.
fn run(b: &mut Bencher<'_>, pop: &mut Population, record: bool, cpu: bool) {
    if cpu {
        b.iter_custom(|iters| {
            let start = thread_cpu_time();
            for _ in 0..iters {
                black_box(pop.step(record));
            }
            thread_cpu_time() - start
        });
    } else {
        b.iter(|| black_box(pop.step(record)));
    }
}

fn main() {
    let cpu = std::env::var_os("LIMITS_BENCH_CPU_TIME").is_some_and(|v| v == "1");
    let mut c = Criterion::default().configure_from_args();

    // A population small enough to stay in cache: the same work without the
    // memory latency of 300 000 subjects, to tell the two costs apart.
    let mut small = Population::new(1_000);
    c.bench_function("check_3_subjects_1k", |b| run(b, &mut small, false, cpu));
    drop(small);

    let mut pop = Population::new(POPULATION);
    let before = pop.accounting();
    // One iteration: three map lookups, one check with reserve = false, and
    // the fake clock advanced by 50 µs.
    c.bench_function("check_3_subjects_100k", |b| run(b, &mut pop, false, cpu));
    // The same, followed by recording the actual usage on all three.
    c.bench_function("check_record_3_subjects_100k", |b| {
        run(b, &mut pop, true, cpu)
    });
    let after = pop.accounting();
    // The same traffic on the same (now used) states, found by index
    // instead of by map lookup: what `check` itself costs on cold state.
    pop.resolve();
    c.bench_function("check_3_subjects_100k_resolved", |b| {
        run(b, &mut pop, false, cpu)
    });
    drop(pop);

    // The same traffic with the daily and monthly budgets on a calendar:
    // what calendar periods add to a check (compare with the rows above,
    // from the same run).
    let mut cal = Population::with_limits(POPULATION, common::calendar_limits());
    c.bench_function("check_3_subjects_100k_calendar", |b| {
        run(b, &mut cal, false, cpu)
    });
    c.bench_function("check_record_3_subjects_100k_calendar", |b| {
        run(b, &mut cal, true, cpu)
    });
    drop(cal);

    // Each key with one model scope that the traffic's model matches, the
    // budgets on a calendar: a fourth state per check (the scope is a
    // subject of its own), as a store hands it to the engine. The id is
    // formatted per request, as the library does.
    let mut scoped = Population::with_scope(POPULATION, common::calendar_limits());
    c.bench_function("check_3_subjects_100k_scoped_calendar", |b| {
        run(b, &mut scoped, false, cpu)
    });
    c.bench_function("check_record_3_subjects_100k_scoped_calendar", |b| {
        run(b, &mut scoped, true, cpu)
    });

    // A busy shared subject (a team at 100 requests a second with the
    // default 10-minute reservation TTL) in its steady state: it remembers
    // 60 000 settled reservations, and each iteration is one more request's
    // reserved check and its settlement, 10 ms of fake time later.
    let mut team = BusyTeam::new(60_000);
    c.bench_function("reserve_settle_busy_team_60k_settled", |b| {
        if cpu {
            b.iter_custom(|iters| {
                let start = thread_cpu_time();
                for _ in 0..iters {
                    black_box(team.step());
                }
                thread_cpu_time() - start
            });
        } else {
            b.iter(|| black_box(team.step()));
        }
    });
    c.final_summary();

    // Shown after the run, so the figures are for state that has been used.
    eprintln!("{}", before.report("memory before the run"));
    eprintln!("{}", after.report("memory after the run"));
    eprintln!(
        "fake clock advanced {:.1} s over the scoped run; timing: {}",
        (scoped.now.0 - common::START.0) as f64 / 1e9,
        if cpu { "thread CPU time" } else { "wall clock" }
    );
}

/// One subject with a daily budget and a token rate that settles a
/// reservation every 10 ms of fake time, each held for ten minutes.
struct BusyTeam {
    state: limits_core::SubjectState,
    limits: limits_core::SubjectLimits,
    policy: limits_core::Policy,
    now: limits_core::Nanos,
    next: u64,
}

impl BusyTeam {
    const TTL: limits_core::Nanos = limits_core::Nanos::from_secs(600);
    const EVERY: limits_core::Nanos = limits_core::Nanos::from_millis(10);

    fn new(settled: u64) -> BusyTeam {
        let mut team = BusyTeam {
            state: limits_core::SubjectState::new(),
            limits: common::subject_limits(),
            policy: limits_core::Policy::default(),
            now: common::START,
            next: 1,
        };
        for _ in 0..settled {
            team.step();
        }
        team
    }

    /// One request: a reserved check, then its settlement.
    fn step(&mut self) -> bool {
        use limits_core::engine::Reserve;
        self.now = self.now.saturating_add(Self::EVERY);
        let id = self.next;
        self.next += 1;
        let attempts = common::estimate();
        let req = limits_core::CheckRequest {
            attempts: &attempts,
            reserve: Some(Reserve {
                id,
                expires_at: self.now.saturating_add(Self::TTL),
                tag: 0,
            }),
            policy: &self.policy,
        };
        let out = limits_core::check(&mut [&mut self.state], &[&self.limits], &req, self.now);
        let mut actual = common::actual();
        actual.reservation = Some(id);
        let rec = limits_core::record(
            &mut [&mut self.state],
            &[&self.limits],
            &actual,
            &self.policy,
            self.now,
        );
        out.allowed() && !rec.duplicate
    }
}
