//! The subject population and traffic model shared by the `check` benchmark
//! and the `state_size` example: 100 000 subjects per dimension in ahash maps,
//! each with daily and monthly budgets, per-second and per-minute request
//! limits and a per-minute token limit, and a day of sparse history.

// The benchmark and the example each use part of this module.
#![allow(dead_code)]

use std::num::NonZeroU64;

use ahash::AHashMap;
use limits_core::{
    Attempt, CheckRequest, LimitKind, NanoUsd, Nanos, Policy, RecordRequest, SubjectLimits,
    SubjectState, check, record,
};

/// Subjects per dimension.
pub const POPULATION: usize = 100_000;

/// Fake time between two benchmark iterations: 20 000 checks a second.
pub const STEP: Nanos = Nanos(50_000);

/// The benchmark's clock starts at a realistic Unix time.
pub const START: Nanos = Nanos(1_750_000_000 * 1_000_000_000);

/// Past requests each subject made during the day before `START`.
pub const HISTORY_EVENTS: u64 = 8;

fn nz(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).expect("non-zero")
}

fn usd(x: f64) -> u64 {
    NanoUsd::try_from_usd(x).expect("valid").0
}

/// Generous limits, so that rotating traffic rarely reaches them and the
/// benchmark measures the common, allowed path.
pub fn subject_limits() -> SubjectLimits {
    SubjectLimits::default()
        .with(LimitKind::BudgetDaily, nz(usd(1_000.0)))
        .with(LimitKind::BudgetMonthly, nz(usd(10_000.0)))
        .with(LimitKind::RequestsPerSecond, nz(1_000))
        .with(LimitKind::RequestsPerMinute, nz(60_000))
        .with(LimitKind::TokensPerMinute, nz(10_000_000))
}

/// The same limits with the daily and monthly budgets on a calendar (New
/// York, whose current periods each subject's limits share, as config
/// entries with one calendar do).
pub fn calendar_limits() -> SubjectLimits {
    let calendar = limits_core::Calendar::new("America/New_York", 0, 1).expect("a calendar");
    subject_limits().with_calendar(std::sync::Arc::new(calendar))
}

/// One model scope's limits: a daily budget and a token rate for the
/// model the traffic asks for (`gpt-4o*`), beside the key's own.
pub fn scope_limits() -> SubjectLimits {
    SubjectLimits::default()
        .with(LimitKind::BudgetDaily, nz(usd(500.0)))
        .with(LimitKind::TokensPerMinute, nz(5_000_000))
}

/// A small request: $0.001 and 500 tokens estimated.
pub fn estimate() -> Vec<Attempt> {
    vec![Attempt {
        model: "gpt-4o-mini".to_owned(),
        cost: NanoUsd(usd(0.001)),
        tokens: 500,
        input: 500,
        output: 500,
        skip: 0,
    }]
}

/// What a request turned out to cost.
pub fn actual() -> RecordRequest {
    RecordRequest {
        reservation: None,
        cost: NanoUsd(usd(0.0012)),
        tokens: 600,
        input: 400,
        output: 200,
        ..RecordRequest::default()
    }
}

/// Three dimensions of subjects held the way a memory store would hold them,
/// plus the fake clock and a cursor that rotates through them.
#[derive(Debug)]
pub struct Population {
    /// api_key, user and team maps.
    pub maps: [AHashMap<String, SubjectState>; 3],
    /// The ids in a fixed order, standing in for the ids a request carries.
    pub ids: [Vec<String>; 3],
    pub limits: SubjectLimits,
    pub attempts: Vec<Attempt>,
    pub actual: RecordRequest,
    pub policy: Policy,
    pub now: Nanos,
    cursor: usize,
    /// When the keys have a model scope: each key's scope state, by the
    /// key's id, and the scope's limits (a fourth subject of each check).
    pub scoped: Option<(AHashMap<String, SubjectState>, SubjectLimits)>,
    /// After [`resolve`](Self::resolve): the states, moved out of the maps
    /// into vectors in id order.
    resolved: Option<[Vec<SubjectState>; 3]>,
}

impl Population {
    /// `n` ids per dimension, in the order the benchmark visits them.
    pub fn ids(n: usize) -> [Vec<String>; 3] {
        ["key", "user", "team"].map(|p| (0..n).map(|i| format!("{p}-{i:06}")).collect())
    }

    /// `n` subjects per dimension, each with [`HISTORY_EVENTS`] requests
    /// (checked and recorded) spread over the day before [`START`].
    pub fn new(n: usize) -> Population {
        Population::from_ids(Population::ids(n))
    }

    /// As [`new`](Self::new), every subject with `limits`.
    pub fn with_limits(n: usize, limits: SubjectLimits) -> Population {
        Population::from_ids_with(Population::ids(n), limits)
    }

    /// The population of the given ids, built separately so that a memory
    /// measurement can leave out the ids that stand in for requests.
    pub fn from_ids(ids: [Vec<String>; 3]) -> Population {
        Population::from_ids_with(ids, subject_limits())
    }

    fn from_ids_with(ids: [Vec<String>; 3], limits: SubjectLimits) -> Population {
        let attempts = estimate();
        let actual = actual();
        let policy = Policy::default();
        let n = ids[0].len();
        let maps = std::array::from_fn(|d| {
            let mut map = AHashMap::with_capacity(n);
            for (i, id) in ids[d].iter().enumerate() {
                let mut state = SubjectState::new();
                // Each subject has its own phase within three-hour slots, so
                // the population's buckets are spread like real traffic.
                let phase = (i as u64 * 7_919) % (3 * 3_600) * 1_000_000_000;
                for j in 0..HISTORY_EVENTS {
                    let at = Nanos(START.0 - Nanos::DAY.0 + j * 3 * Nanos::HOUR.0 + phase);
                    let req = CheckRequest {
                        attempts: &attempts,
                        reserve: None,
                        policy: &policy,
                    };
                    let out = check(&mut [&mut state], &[&limits], &req, at);
                    assert!(out.allowed(), "history must fit the limits");
                    record(&mut [&mut state], &[&limits], &actual, &policy, at);
                }
                map.insert(id.clone(), state);
            }
            map
        });
        Population {
            maps,
            ids,
            limits,
            attempts,
            actual,
            policy,
            now: START,
            cursor: 0,
            scoped: None,
            resolved: None,
        }
    }

    /// As [`with_limits`](Self::with_limits), each key with one model
    /// scope of [`scope_limits`] that the traffic's model matches, with the
    /// same history as the keys: every check then meets four states.
    pub fn with_scope(n: usize, limits: SubjectLimits) -> Population {
        let mut pop = Population::with_limits(n, limits);
        let scope = scope_limits();
        let mut map = AHashMap::with_capacity(n);
        for (i, id) in pop.ids[0].iter().enumerate() {
            let mut state = SubjectState::new();
            let phase = (i as u64 * 7_919) % (3 * 3_600) * 1_000_000_000;
            for j in 0..HISTORY_EVENTS {
                let at = Nanos(START.0 - Nanos::DAY.0 + j * 3 * Nanos::HOUR.0 + phase);
                let req = CheckRequest {
                    attempts: &pop.attempts,
                    reserve: None,
                    policy: &pop.policy,
                };
                assert!(check(&mut [&mut state], &[&scope], &req, at).allowed());
                record(&mut [&mut state], &[&scope], &pop.actual, &pop.policy, at);
            }
            // Its own id, as a store keys a scope apart from its subject.
            map.insert(format!("{id}\u{1f}gpt-4o*"), state);
        }
        pop.scoped = Some((map, scope));
        pop
    }

    /// Moves every state out of its map into a vector in id order, so that
    /// [`step`](Self::step) finds a request's states by index: the check
    /// alone, on state just as cold, without the hashing and key
    /// comparisons of a map lookup. The states' buffers do not move.
    pub fn resolve(&mut self) {
        let maps = &mut self.maps;
        let ids = &self.ids;
        self.resolved = Some(std::array::from_fn(|d| {
            let states = ids[d]
                .iter()
                .map(|id| maps[d].remove(id.as_str()).expect("every id has a state"))
                .collect();
            maps[d] = AHashMap::new();
            states
        }));
    }

    /// One request: look the three subjects up, check them together and,
    /// when `record_usage` is set, record the actual usage. Returns whether
    /// the check allowed the request.
    #[inline]
    pub fn step(&mut self, record_usage: bool) -> bool {
        let n = self.ids[0].len();
        let i = self.cursor;
        self.cursor = if i + 1 == n { 0 } else { i + 1 };
        // Different strides per dimension (coprime with 100 000), so a key's
        // user and team are not its neighbours in memory.
        let idx = [i, (i * 7 + 3) % n, (i * 13 + 5) % n];
        self.now = self.now.saturating_add(STEP);
        let req = CheckRequest {
            attempts: &self.attempts,
            reserve: None,
            policy: &self.policy,
        };
        if let Some((scopes, scope_limits)) = &mut self.scoped {
            let [keys, users, teams] = &mut self.maps;
            let key_id = self.ids[0][idx[0]].as_str();
            let scope = scopes
                .get_mut(format!("{key_id}\u{1f}gpt-4o*").as_str())
                .expect("scope");
            let key = keys.get_mut(key_id).expect("key");
            let user = users.get_mut(self.ids[1][idx[1]].as_str()).expect("user");
            let team = teams.get_mut(self.ids[2][idx[2]].as_str()).expect("team");
            let mut states = [key, user, team, scope];
            let limits = [&self.limits, &self.limits, &self.limits, &*scope_limits];
            let out = check(&mut states, &limits, &req, self.now);
            if record_usage && out.allowed() {
                record(&mut states, &limits, &self.actual, &self.policy, self.now);
            }
            return out.allowed();
        }
        let mut states = match &mut self.resolved {
            Some([keys, users, teams]) => {
                [&mut keys[idx[0]], &mut users[idx[1]], &mut teams[idx[2]]]
            }
            None => {
                let [keys, users, teams] = &mut self.maps;
                let key = keys.get_mut(self.ids[0][idx[0]].as_str()).expect("key");
                let user = users.get_mut(self.ids[1][idx[1]].as_str()).expect("user");
                let team = teams.get_mut(self.ids[2][idx[2]].as_str()).expect("team");
                [key, user, team]
            }
        };
        let limits = [&self.limits, &self.limits, &self.limits];
        let out = check(&mut states, &limits, &req, self.now);
        if record_usage && out.allowed() {
            record(&mut states, &limits, &self.actual, &self.policy, self.now);
        }
        out.allowed()
    }

    /// Bytes per subject by accounting: the state's own figure
    /// (`SubjectState::memory_bytes`, inline plus heap capacity), the key's
    /// heap bytes, and the map's table bytes divided over its entries.
    pub fn accounting(&self) -> Accounting {
        let mut a = Accounting::default();
        for map in &self.maps {
            a.subjects += map.len();
            a.state_bytes += map.values().map(SubjectState::memory_bytes).sum::<usize>();
            a.key_heap_bytes += map.keys().map(String::capacity).sum::<usize>();
            // hashbrown keeps `capacity * 8 / 7` buckets (a power of two),
            // each holding one (key, value) pair and one control byte, plus
            // 16 trailing control bytes. The pair's inline `SubjectState` is
            // already in `state_bytes`, so only the key's inline part and the
            // slack of empty buckets are added here.
            let buckets = (map.capacity() * 8 / 7).next_power_of_two();
            let pair = std::mem::size_of::<(String, SubjectState)>();
            let table = buckets * (pair + 1) + 16;
            a.table_bytes += table - map.len() * std::mem::size_of::<SubjectState>();
        }
        a
    }
}

/// Memory per subject, by accounting rather than by measurement.
#[derive(Debug, Default, Clone, Copy)]
pub struct Accounting {
    pub subjects: usize,
    pub state_bytes: usize,
    pub key_heap_bytes: usize,
    pub table_bytes: usize,
}

impl Accounting {
    pub fn state_per_subject(&self) -> f64 {
        self.state_bytes as f64 / self.subjects as f64
    }

    pub fn total_per_subject(&self) -> f64 {
        (self.state_bytes + self.key_heap_bytes + self.table_bytes) as f64 / self.subjects as f64
    }

    pub fn report(&self, label: &str) -> String {
        format!(
            "{label}: {} subjects; SubjectState::memory_bytes {:.1} B/subject; \
             with key heap {:.1} B and map table {:.1} B: {:.1} B/subject",
            self.subjects,
            self.state_per_subject(),
            self.key_heap_bytes as f64 / self.subjects as f64,
            self.table_bytes as f64 / self.subjects as f64,
            self.total_per_subject(),
        )
    }
}
