//! Shared fixtures for the limits-core integration tests: limit builders, a
//! fake clock and a group of subjects that wraps the engine's slice-based calls.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::num::{NonZeroU32, NonZeroU64};

use limits_core::engine::Reserve;
use limits_core::{
    AcquireOutcome, Attempt, CheckOutcome, CheckRequest, EnforcementMode, LimitKind, LimitStatus,
    NanoUsd, Nanos, Policy, RecordOutcome, RecordRequest, SubjectLimits, SubjectState, acquire,
    check, record, release, usage,
};

/// A start instant that is a whole number of 30-day windows since the epoch,
/// so every window's buckets start exactly at `T0` and tests can reason about
/// bucket boundaries.
pub const T0: Nanos = Nanos(656 * 30 * 86_400 * 1_000_000_000);

pub fn nz(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).expect("limits are non-zero")
}

pub fn usd(x: f64) -> NanoUsd {
    NanoUsd::try_from_usd(x).expect("a valid amount")
}

pub fn secs(s: u64) -> Nanos {
    Nanos::from_secs(s)
}

pub fn ms(m: u64) -> Nanos {
    Nanos::from_millis(m)
}

/// Limits from `(kind, limit)` pairs; budgets are in nano-dollars.
pub fn limits(pairs: &[(LimitKind, u64)]) -> SubjectLimits {
    let mut l = SubjectLimits::default();
    for &(kind, limit) in pairs {
        if kind == LimitKind::MaxConcurrent {
            let n = u32::try_from(limit).expect("a small concurrency limit");
            l.set_max_concurrent(Some(NonZeroU32::new(n).expect("non-zero")));
        } else {
            l.set(kind, Some(nz(limit)));
        }
    }
    l
}

pub fn policy(mode: EnforcementMode) -> Policy {
    Policy {
        mode,
        ..Policy::default()
    }
}

/// One attempt at a model with a cost estimate in nano-dollars and tokens.
pub fn attempt(cost: u64, tokens: u64) -> Vec<Attempt> {
    vec![Attempt {
        model: "gpt-4".to_owned(),
        cost: NanoUsd(cost),
        tokens,
        input: tokens,
        output: tokens,
        skip: 0,
    }]
}

/// A fake clock that tests drive forward instead of sleeping.
#[derive(Clone, Copy, Debug)]
pub struct Clock(pub Nanos);

impl Clock {
    pub fn start() -> Clock {
        Clock(T0)
    }

    pub fn now(&self) -> Nanos {
        self.0
    }

    pub fn advance(&mut self, by: Nanos) -> Nanos {
        self.0 = self.0.saturating_add(by);
        self.0
    }
}

/// The subjects of one request with their limits, as a store would hand them
/// to the engine.
#[derive(Clone, Debug, Default)]
pub struct Group {
    pub states: Vec<SubjectState>,
    pub limits: Vec<SubjectLimits>,
}

impl Group {
    pub fn new(limits: Vec<SubjectLimits>) -> Group {
        Group {
            states: vec![SubjectState::new(); limits.len()],
            limits,
        }
    }

    pub fn one(limits: SubjectLimits) -> Group {
        Group::new(vec![limits])
    }

    fn parts(&mut self) -> (Vec<&mut SubjectState>, Vec<&SubjectLimits>) {
        (
            self.states.iter_mut().collect(),
            self.limits.iter().collect(),
        )
    }

    pub fn check_with(
        &mut self,
        attempts: &[Attempt],
        reserve: Option<Reserve>,
        policy: &Policy,
        now: Nanos,
    ) -> CheckOutcome {
        let (mut states, limits) = self.parts();
        let req = CheckRequest {
            attempts,
            reserve,
            policy,
        };
        check(&mut states, &limits, &req, now)
    }

    /// A plain (unreserved) check in block mode.
    pub fn check(&mut self, cost: u64, tokens: u64, now: Nanos) -> CheckOutcome {
        self.check_with(&attempt(cost, tokens), None, &Policy::default(), now)
    }

    /// A reserved check in block mode whose hold expires at `expires_at`.
    pub fn reserve(
        &mut self,
        id: u64,
        cost: u64,
        tokens: u64,
        expires_at: Nanos,
        now: Nanos,
    ) -> CheckOutcome {
        self.check_with(
            &attempt(cost, tokens),
            Some(Reserve {
                id,
                expires_at,
                tag: 0,
            }),
            &Policy::default(),
            now,
        )
    }

    pub fn record_with(
        &mut self,
        reservation: Option<u64>,
        cost: u64,
        tokens: u64,
        policy: &Policy,
        now: Nanos,
    ) -> RecordOutcome {
        let (mut states, limits) = self.parts();
        let req = RecordRequest {
            reservation,
            cost: NanoUsd(cost),
            tokens,
            ..Default::default()
        };
        record(&mut states, &limits, &req, policy, now)
    }

    pub fn record(&mut self, cost: u64, tokens: u64, now: Nanos) -> RecordOutcome {
        self.record_with(None, cost, tokens, &Policy::default(), now)
    }

    /// A record as given.
    pub fn record_with_request(&mut self, req: &RecordRequest, now: Nanos) -> RecordOutcome {
        let (mut states, limits) = self.parts();
        record(&mut states, &limits, req, &Policy::default(), now)
    }

    /// A record of input and output tokens (and their sum as the total).
    pub fn record_split(&mut self, input: u64, output: u64, now: Nanos) -> RecordOutcome {
        let (mut states, limits) = self.parts();
        let req = RecordRequest {
            reservation: None,
            cost: NanoUsd(0),
            tokens: input.saturating_add(output),
            input,
            output,
            ..Default::default()
        };
        record(&mut states, &limits, &req, &Policy::default(), now)
    }

    pub fn settle(&mut self, id: u64, cost: u64, tokens: u64, now: Nanos) -> RecordOutcome {
        self.record_with(Some(id), cost, tokens, &Policy::default(), now)
    }

    pub fn acquire(&mut self, lease: u64, expires_at: Nanos, now: Nanos) -> AcquireOutcome {
        let (mut states, limits) = self.parts();
        acquire(&mut states, &limits, lease, expires_at, now)
    }

    pub fn release(&mut self, lease: u64, now: Nanos) -> bool {
        let mut states: Vec<&mut SubjectState> = self.states.iter_mut().collect();
        release(&mut states, lease, now)
    }

    /// Every limit of subject `i` at `now`, as `GetUsage` would report it.
    pub fn usage(&mut self, i: usize, now: Nanos) -> Vec<LimitStatus> {
        usage(&mut self.states[i], &self.limits[i], now)
    }

    /// What one limit of subject `i` holds at `now`.
    pub fn used(&mut self, i: usize, kind: LimitKind, now: Nanos) -> u64 {
        self.usage(i, now)
            .into_iter()
            .find(|s| s.kind == kind)
            .expect("the subject has this limit")
            .used
    }

    /// The states as they are after expiring everything due at `now`: what a
    /// check that changes nothing must leave behind.
    pub fn expired_clone(&self, now: Nanos) -> Vec<SubjectState> {
        let mut states = self.states.clone();
        for (s, l) in states.iter_mut().zip(&self.limits) {
            s.expire(l, now);
        }
        states
    }
}
