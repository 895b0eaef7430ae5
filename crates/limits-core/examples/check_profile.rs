//! Runs the `check` benchmark's traffic for a fixed number of steps, for a
//! deterministic count of instructions and cache misses under callgrind:
//!
//! ```text
//! cargo build --release -p limits-core --example check_profile
//! valgrind --tool=callgrind --cache-sim=yes --toggle-collect='*measured_steps*' \
//!     target/release/examples/check_profile --population 100000 --steps 100000
//! ```
//!
//! Building the population under callgrind takes minutes; see `--wait-file`
//! in `main` (and `check_profile.sh` next to this file) to skip its
//! instrumentation.
//!
//! `--record 1` follows each check with a record (the
//! `check_record_3_subjects_100k` step); the default is check only
//! (`check_3_subjects_100k`). `--resolved 1` finds the states by index
//! instead of by map lookup (`check_3_subjects_100k_resolved`).

#[path = "../benches/common/mod.rs"]
mod common;

use common::{POPULATION, Population};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn run_steps(pop: &mut Population, steps: usize, record: bool) -> usize {
    (0..steps).filter(|_| pop.step(record)).count()
}

/// The measured phase, kept out of line so that callgrind can count it alone.
#[inline(never)]
fn measured_steps(pop: &mut Population, steps: usize, record: bool) -> usize {
    run_steps(pop, steps, record)
}

fn main() {
    let n = arg("--population", POPULATION);
    let steps = arg("--steps", 100_000);
    let record = arg("--record", 0) != 0;
    let resolved = arg("--resolved", 0) != 0;
    let mut pop = Population::new(n);
    // Visit every subject once first, so the measured steps see state that
    // has been through the benchmark's own traffic.
    run_steps(&mut pop, n, record);
    if resolved {
        pop.resolve();
    }
    // With `--wait-file PATH`, stop here until PATH exists: a script can then
    // run valgrind with `--instr-atstart=no`, build the population at a
    // fraction of callgrind's cost, and `callgrind_control -i on` before
    // creating the file.
    if let Some(i) = std::env::args().position(|a| a == "--wait-file") {
        let path = std::env::args().nth(i + 1).expect("a path");
        println!("ready");
        while !std::path::Path::new(&path).exists() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let allowed = measured_steps(&mut pop, steps, record);
    println!(
        "population {n} per dimension; {steps} steps (record: {record}, resolved: {resolved}); \
         {allowed} allowed"
    );
}
