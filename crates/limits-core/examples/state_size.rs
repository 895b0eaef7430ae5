//! Measures the memory one subject's state occupies: by accounting
//! (`SubjectState::memory_bytes` plus map overhead) and by the process's
//! resident set (VmRSS) before and after building 100 000 subjects per
//! dimension; then runs the benchmark's traffic for a while and measures
//! again, and reports the worst case of a subject busy in every window.
//!
//! Run it in release: `cargo run --release -p limits-core --example state_size`.
//! `--steps N` sets how many three-subject checks (each followed by a record)
//! run after the build, and `--population N` the subjects per dimension.
//! Under callgrind, `--toggle-collect='*run_steps*'` counts only the traffic.

#[path = "../benches/common/mod.rs"]
mod common;

use common::{POPULATION, Population};
use limits_core::{
    CheckRequest, LimitKind, Nanos, Policy, SubjectState, check, record, window::BUCKETS,
};

/// The resident set of this process in bytes, from /proc/self/status.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a number of kB");
    kb * 1024
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

/// The state of one subject after a month of one request a second, checked
/// and recorded: every window but the per-second one holds all its buckets.
/// Only the instants that make distinct buckets are replayed (each bucket of
/// the month, of the day and of the last minute), which leaves the same
/// buckets and the same vector growth as replaying every second.
fn busy_subject() -> SubjectState {
    let limits = common::subject_limits();
    let attempts = common::estimate();
    let actual = common::actual();
    let policy = Policy::default();
    let end = common::START;
    let mut instants = Vec::new();
    for kind in [
        LimitKind::BudgetMonthly,
        LimitKind::BudgetDaily,
        LimitKind::RequestsPerMinute,
    ] {
        let length = kind.window().expect("windowed");
        let width = length.0 / BUCKETS;
        instants.extend((0..=BUCKETS).map(|k| end.0 - length.0 + k * width));
    }
    instants.sort_unstable();
    instants.dedup();
    let mut state = SubjectState::new();
    for t in instants {
        let req = CheckRequest {
            attempts: &attempts,
            reserve: None,
            policy: &policy,
        };
        let out = check(&mut [&mut state], &[&limits], &req, Nanos(t));
        assert!(out.allowed());
        record(&mut [&mut state], &[&limits], &actual, &policy, Nanos(t));
    }
    state
}

/// The traffic phase, kept out of line so that a profiler can count it
/// alone (`valgrind --tool=callgrind --toggle-collect='*run_steps*'`).
#[inline(never)]
fn run_steps(pop: &mut Population, steps: usize) -> usize {
    (0..steps).filter(|_| pop.step(true)).count()
}

fn main() {
    let n = arg("--population", POPULATION);
    let steps = arg("--steps", 2_000_000);

    let ids = Population::ids(n);
    let before = rss();
    let mut pop = Population::from_ids(ids);
    let built = rss();
    let subjects = (3 * n) as f64;
    println!("population: {n} subjects per dimension, {} in all", 3 * n);
    println!("{}", pop.accounting().report("after build (accounting)"));
    println!(
        "after build (RSS): {:.1} MiB for the maps, {:.1} B/subject",
        (built - before) as f64 / 1_048_576.0,
        (built - before) as f64 / subjects
    );

    let allowed = run_steps(&mut pop, steps);
    let ran = rss();
    println!(
        "ran {steps} check+record steps ({allowed} allowed), fake clock +{:.1} s",
        (pop.now.0 - common::START.0) as f64 / 1e9
    );
    println!("{}", pop.accounting().report("after traffic (accounting)"));
    println!(
        "after traffic (RSS): {:.1} MiB for the maps, {:.1} B/subject",
        (ran - before) as f64 / 1_048_576.0,
        (ran - before) as f64 / subjects
    );

    let busy = busy_subject();
    let buckets: Vec<_> = busy
        .windows()
        .map(|(k, w)| format!("{}={}", k.name(), w.buckets().len()))
        .collect();
    println!(
        "busy subject (1 request/s for 30 days): SubjectState::memory_bytes {} B; buckets {}",
        busy.memory_bytes(),
        buckets.join(" ")
    );
}
