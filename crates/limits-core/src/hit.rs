//! Hits: requests and tokens charged by count rather than by a gateway's
//! check-and-record flow. This is how rate limit service calls (Envoy's
//! `ShouldRateLimit`) land on the engine: each subject is charged some
//! requests and some tokens in one atomic step.
//!
//! Requests are admissions: they are charged only if every request and token
//! limit of every subject fits, all or nothing. Tokens are usage that already
//! happened (a gateway reports them after the response): they are always
//! charged, and a token limit they overrun is reported as exceeded. A charge
//! of zero asks without charging: it is denied only by a limit that is
//! already full.

use crate::engine::{Denial, expire_all, note_denial, statuses, test_limit};
use crate::limits::{LimitStatus, Resource, SubjectLimits};
use crate::state::SubjectState;
use crate::time::Nanos;

/// What one subject is charged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Charge {
    /// Requests to count.
    pub requests: u64,
    /// Tokens to count.
    pub tokens: u64,
}

/// The result of a hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HitOutcome {
    /// The limit that takes longest to clear, when one was exceeded (and
    /// then no request was charged).
    pub denial: Option<Denial>,
    /// The request and token limits of every subject after the hit.
    pub statuses: Vec<LimitStatus>,
}

/// Charges each subject its [`Charge`]; see the module documentation.
pub fn hit(
    states: &mut [&mut SubjectState],
    limits: &[&SubjectLimits],
    charges: &[Charge],
    now: Nanos,
) -> HitOutcome {
    debug_assert!(states.len() == limits.len() && limits.len() == charges.len());
    expire_all(states, limits, now);
    let mut worst: Option<Denial> = None;
    let mut exceeded = Vec::new();
    for (i, ((state, lim), charge)) in states.iter().zip(limits).zip(charges).enumerate() {
        let held = state.held(now);
        let windows = state.windows_by_kind();
        for (kind, limit) in lim.windowed() {
            let amount = match kind.resource() {
                Resource::Requests => charge.requests,
                Resource::Tokens => charge.tokens,
                // A hit's tokens are a total (Envoy's hits_addend): input
                // and output limits are for callers that split them.
                Resource::Cost
                | Resource::InputTokens
                | Resource::OutputTokens
                | Resource::Leases => continue,
            };
            let window = windows.get(kind);
            if let Err(retry_after) = test_limit(state, kind, limit, amount, now, window, held) {
                note_denial(&mut worst, &mut exceeded, i, kind, retry_after);
            }
        }
    }
    let allowed = worst.is_none();
    for ((state, lim), charge) in states.iter_mut().zip(limits).zip(charges) {
        if allowed {
            state.charge(lim, Resource::Requests, now, charge.requests);
        }
        state.charge(lim, Resource::Tokens, now, charge.tokens);
    }
    let statuses = statuses(states, limits, &exceeded, now)
        .into_iter()
        .filter(|s| matches!(s.kind.resource(), Resource::Requests | Resource::Tokens))
        .collect();
    HitOutcome {
        denial: worst,
        statuses,
    }
}

impl HitOutcome {
    /// No limit was exceeded, and the requests were charged.
    pub fn allowed(&self) -> bool {
        self.denial.is_none()
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::*;
    use crate::limits::LimitKind;

    fn nz(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).unwrap()
    }

    const T0: Nanos = Nanos(1_000_000 * 1_000_000_000);

    #[test]
    fn requests_are_all_or_nothing_across_subjects() {
        let a = SubjectLimits::default().with(LimitKind::RequestsPerSecond, nz(5));
        let b = SubjectLimits::default().with(LimitKind::RequestsPerSecond, nz(1));
        let (mut sa, mut sb) = (SubjectState::new(), SubjectState::new());
        let two = [Charge {
            requests: 1,
            tokens: 0,
        }; 2];
        let out = hit(&mut [&mut sa, &mut sb], &[&a, &b], &two, T0);
        assert!(out.allowed());
        let before = (sa.clone(), sb.clone());
        let out = hit(&mut [&mut sa, &mut sb], &[&a, &b], &two, T0);
        assert!(!out.allowed());
        assert_eq!(out.denial.unwrap().subject, 1);
        assert!(out.denial.unwrap().retry_after.is_some());
        assert_eq!((sa, sb), before, "a denied hit charges no subject");
    }

    #[test]
    fn tokens_are_always_charged_and_zero_only_asks() {
        let l = SubjectLimits::default().with(LimitKind::TokensPerMinute, nz(100));
        let mut s = SubjectState::new();
        let ask = [Charge::default()];
        assert!(hit(&mut [&mut s], &[&l], &ask, T0).allowed());
        let used = |s: &SubjectState| s.used(LimitKind::TokensPerMinute, T0);
        assert_eq!(used(&s), 0, "a zero charge only asks");
        let over = [Charge {
            requests: 0,
            tokens: 150,
        }];
        let out = hit(&mut [&mut s], &[&l], &over, T0);
        assert!(!out.allowed());
        assert!(out.statuses[0].exceeded);
        assert_eq!(
            used(&s),
            150,
            "usage that happened is recorded even over the limit"
        );
        assert!(
            !hit(&mut [&mut s], &[&l], &ask, T0).allowed(),
            "a full limit denies an ask"
        );
    }
}
