//! Every target over the seed corpus and a fixed number of generated and
//! mutated inputs (a fixed seed, so a failure here repeats): the short run
//! the test command does; `limits-fuzz` runs longer.

use limits_fuzz::{Harness, Target, generate, mutate};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn corpus(target: Target) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target.name());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

#[test]
fn every_target_survives_its_corpus_and_a_short_run() {
    for target in Target::ALL {
        let seeds = corpus(target);
        assert!(!seeds.is_empty(), "{} has seeds", target.name());
        let mut harness = Harness::new();
        for input in &seeds {
            harness.run(target, input).unwrap();
        }
        let mut rng = StdRng::seed_from_u64(0x5eed);
        for i in 0..2_000 {
            let input = if i % 2 == 0 {
                generate(target, &mut rng, &harness.issued)
            } else {
                let a = &seeds[i % seeds.len()];
                let b = &seeds[(i / 2) % seeds.len()];
                mutate(&mut rng, a, b)
            };
            if let Err(e) = harness.run(target, &input) {
                panic!("{}: {e}\ninput: {input:?}", target.name());
            }
        }
    }
}

#[test]
fn requests_reach_the_engine() {
    // The generators are meant to get past validation most of the time:
    // without that the target would only fuzz the validator.
    let mut harness = Harness::new();
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..2_000 {
        let input = generate(Target::Requests, &mut rng, &harness.issued);
        harness.run(Target::Requests, &input).unwrap();
    }
    let ok = harness.outcomes.get("OK").copied().unwrap_or(0);
    assert!(ok >= 200, "{:?}", harness.outcomes);
    assert!(!harness.issued.is_empty(), "ids were issued and reused");
}
