//! The subject population: which ids a call names, drawn from K ids either
//! uniformly or by Zipf's law, so that hot keys behave as they do behind a
//! real gateway (a few keys carry most of the traffic).

use rand::Rng;
use rand_distr::{Distribution as _, Zipf};

use crate::pb;

/// How subject indices are drawn from the population.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Distribution {
    /// Every id equally likely: the worst case for caches.
    Uniform,
    /// Id `i` (0-based) drawn with weight 1 / (i + 1)^s.
    Zipf,
}

/// K ids and the law to draw them by.
#[derive(Debug, Clone)]
pub struct Population {
    k: u64,
    sampler: Sampler,
    per_call: usize,
}

#[derive(Debug, Clone)]
enum Sampler {
    Uniform,
    Zipf(Zipf<f64>),
}

impl Population {
    /// A population of `k` ids; each call names `per_call` subjects (1 to 3:
    /// API key, then user, then team).
    pub fn new(k: u64, dist: Distribution, zipf_s: f64, per_call: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(k >= 1, "--subjects must be at least 1");
        anyhow::ensure!(
            (1..=3).contains(&per_call),
            "--subjects-per-call must be 1, 2 or 3"
        );
        let sampler = match dist {
            Distribution::Uniform => Sampler::Uniform,
            Distribution::Zipf => Sampler::Zipf(
                Zipf::new(k as f64, zipf_s)
                    .map_err(|e| anyhow::anyhow!("--zipf-s {zipf_s}: {e}"))?,
            ),
        };
        Ok(Population {
            k,
            sampler,
            per_call,
        })
    }

    /// Draws one subject index in `0..k`.
    pub fn draw(&self, rng: &mut impl Rng) -> u64 {
        match &self.sampler {
            Sampler::Uniform => rng.random_range(0..self.k),
            // Zipf samples are whole numbers in 1..=k carried as f64.
            Sampler::Zipf(z) => (z.sample(rng) as u64).clamp(1, self.k) - 1,
        }
    }

    /// The subjects of one call for index `i`.
    pub fn subjects(&self, i: u64) -> Vec<pb::Subject> {
        subjects(i, self.per_call)
    }
}

/// The subjects for index `i`: `key-i`, then `user-i`, then `team-(i/10)`,
/// so that ten users share a team as they would in an organisation.
pub fn subjects(i: u64, per_call: usize) -> Vec<pb::Subject> {
    let all = [
        (pb::Dimension::ApiKey, format!("key-{i}")),
        (pb::Dimension::User, format!("user-{i}")),
        (pb::Dimension::Team, format!("team-{}", i / 10)),
    ];
    all.into_iter()
        .take(per_call)
        .map(|(d, id)| pb::Subject {
            dimension: d as i32,
            id,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn draws_stay_in_range_and_zipf_favours_low_indices() {
        let mut rng = SmallRng::seed_from_u64(7);
        let z = Population::new(1000, Distribution::Zipf, 1.0, 1).unwrap();
        let u = Population::new(1000, Distribution::Uniform, 1.0, 1).unwrap();
        let (mut z_hot, mut u_hot) = (0, 0);
        for _ in 0..10_000 {
            let a = z.draw(&mut rng);
            let b = u.draw(&mut rng);
            assert!(a < 1000 && b < 1000);
            z_hot += usize::from(a < 10);
            u_hot += usize::from(b < 10);
        }
        // With s = 1 and K = 1000 the ten hottest ids carry about 39 % of
        // draws; uniformly they carry 1 %.
        assert!(z_hot > 3000, "{z_hot}");
        assert!(u_hot < 300, "{u_hot}");
    }

    #[test]
    fn subjects_follow_the_key_user_team_order() {
        let s = subjects(123, 3);
        let ids: Vec<_> = s.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["key-123", "user-123", "team-12"]);
        assert_eq!(s[2].dimension, pb::Dimension::Team as i32);
        assert_eq!(subjects(5, 1).len(), 1);
    }
}
