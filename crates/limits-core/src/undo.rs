//! Taking back an operation that was applied but not made durable.
//!
//! A durable store applies an operation to its state in memory, then writes
//! it out; when the write fails, the caller is told the call failed, so the
//! operation must leave no trace: a gateway that retries a failed
//! RecordUsage must not be charged twice. Other operations may have run on
//! the same subjects in between, so the state cannot simply be restored;
//! each function here removes exactly what its operation added (and puts
//! back what it removed), leaving everything else as it is.
//!
//! Each takes `at`, the instant the operation ran with, and `now`. Amounts
//! are taken back from the buckets they went to (or, when that is ambiguous,
//! from buckets that expire sooner, so that a window may count them a little
//! longer but never shorter); windows and holds that expired in between are
//! left alone.

use crate::engine::{CheckOutcome, RecordOutcome, RecordRequest};
use crate::hit::{Charge, HitOutcome};
use crate::limits::{Resource, SubjectLimits};
use crate::state::{LeaseSlot, SubjectState};
use crate::time::Nanos;

/// Request and token windows never follow a calendar: taking back from them
/// needs no subject's limits.
const NO_CALENDAR: &SubjectLimits = &SubjectLimits::UNLIMITED;

/// Undoes an allowed [`check`](crate::check): the request counted, and the
/// reservation held.
pub fn undo_check(states: &mut [&mut SubjectState], out: &CheckOutcome, at: Nanos, now: Nanos) {
    if !out.allowed() {
        return;
    }
    for state in states.iter_mut() {
        state.uncharge(NO_CALENDAR, Resource::Requests, at, now, 1);
        if let Some(id) = out.reservation() {
            state.remove_hold(id);
        }
    }
}

/// Undoes a [`record`](crate::record): the usage charged, and what it did
/// to its reservation's hold (which holds what it held before again, or,
/// if the record made it, goes).
pub fn undo_record(
    states: &mut [&mut SubjectState],
    limits: &[&SubjectLimits],
    req: &RecordRequest,
    out: &RecordOutcome,
    at: Nanos,
    now: Nanos,
) {
    if out.duplicate {
        return;
    }
    let charged = out.charged;
    for (i, (state, lim)) in states.iter_mut().zip(limits).enumerate() {
        state.uncharge(lim, Resource::Cost, at, now, charged.cost);
        state.uncharge(lim, Resource::Tokens, at, now, charged.tokens);
        state.uncharge(lim, Resource::InputTokens, at, now, charged.input);
        state.uncharge(lim, Resource::OutputTokens, at, now, charged.output);
        let Some(id) = req.reservation else {
            continue;
        };
        let had = i < 16 && out.held_on & (1 << i) != 0;
        match &out.prior {
            // The hold was open: as it was, where it was (a settlement
            // removed it, and remembered the reservation as settled).
            Some(prior) => {
                state.remove_settled(id);
                if had {
                    match state.hold_mut(id) {
                        Some(h) => *h = prior.clone(),
                        None => state.push_hold(prior.clone()),
                    }
                }
            }
            // The record held a lapsed stream again.
            None => {
                state.remove_hold(id);
            }
        }
    }
}

/// Undoes an [`acquire`](crate::acquire): the lease's slots.
pub fn undo_acquire(states: &mut [&mut SubjectState], lease_id: u64) {
    for state in states.iter_mut() {
        state.remove_lease(lease_id, Nanos::ZERO);
    }
}

/// Undoes a [`release`](crate::release): puts the lease back on the
/// subjects that held it (`held[i]` for `states[i]`), unless it has expired
/// since.
pub fn undo_release(
    states: &mut [&mut SubjectState],
    lease: &LeaseSlot,
    held: &[bool],
    now: Nanos,
) {
    if lease.expires_at <= now {
        return;
    }
    for (state, &had) in states.iter_mut().zip(held) {
        if had && !state.leases().iter().any(|l| l.id == lease.id) {
            state.push_lease(*lease);
        }
    }
}

/// Undoes a [`hit`](crate::hit::hit): the requests (if they were admitted)
/// and the tokens.
pub fn undo_hit(
    states: &mut [&mut SubjectState],
    charges: &[Charge],
    out: &HitOutcome,
    at: Nanos,
    now: Nanos,
) {
    for (state, charge) in states.iter_mut().zip(charges) {
        if out.allowed() {
            state.uncharge(NO_CALENDAR, Resource::Requests, at, now, charge.requests);
        }
        state.uncharge(NO_CALENDAR, Resource::Tokens, at, now, charge.tokens);
    }
}

/// Whether a lease with this id is on the subject (for [`undo_release`]).
pub fn holds_lease(state: &SubjectState, lease_id: u64) -> bool {
    state.leases().iter().any(|l| l.id == lease_id)
}

#[cfg(test)]
mod tests {
    use std::num::{NonZeroU32, NonZeroU64};

    use super::*;
    use crate::enforcement::{Attempt, Policy};
    use crate::engine::{self, CheckRequest, Reserve};
    use crate::limits::{LimitKind, SubjectLimits};
    use crate::money::NanoUsd;

    const T: Nanos = Nanos(280_000 * 3_600 * 1_000_000_000);

    fn nz(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).unwrap()
    }

    fn limits() -> SubjectLimits {
        SubjectLimits::default()
            .with(LimitKind::BudgetDaily, nz(1_000_000))
            .with(LimitKind::RequestsPerMinute, nz(100))
            .with(LimitKind::TokensPerMinute, nz(100_000))
            .with_max_concurrent(NonZeroU32::new(4).unwrap())
    }

    /// A state with some history, so undoing must leave that alone.
    fn busy(lim: &SubjectLimits) -> SubjectState {
        let mut s = SubjectState::new();
        let policy = Policy::default();
        let attempts = [Attempt {
            model: "m".into(),
            cost: NanoUsd(10),
            tokens: 5,
            input: 5,
            output: 5,
            skip: 0,
        }];
        let req = CheckRequest {
            attempts: &attempts,
            reserve: Some(Reserve {
                id: 1,
                expires_at: T.saturating_add(Nanos::MINUTE),
                tag: 0,
            }),
            policy: &policy,
        };
        engine::check(&mut [&mut s], &[lim], &req, T);
        let rec = RecordRequest {
            reservation: None,
            cost: NanoUsd(7),
            tokens: 3,
            ..Default::default()
        };
        engine::record(&mut [&mut s], &[lim], &rec, &policy, T);
        s
    }

    #[test]
    fn each_undo_restores_the_state_before_its_operation() {
        let lim = limits();
        let policy = Policy::default();
        let at = T.saturating_add(Nanos::from_secs(2));
        let now = at.saturating_add(Nanos::from_millis(30));

        // A reserved check.
        let mut s = busy(&lim);
        let before = s.clone();
        let attempts = [Attempt {
            model: "m".into(),
            cost: NanoUsd(100),
            tokens: 50,
            input: 50,
            output: 50,
            skip: 0,
        }];
        let req = CheckRequest {
            attempts: &attempts,
            reserve: Some(Reserve {
                id: 2,
                expires_at: at.saturating_add(Nanos::MINUTE),
                tag: 9,
            }),
            policy: &policy,
        };
        let out = engine::check(&mut [&mut s], &[&lim], &req, at);
        assert!(out.allowed() && out.reservation() == Some(2));
        undo_check(&mut [&mut s], &out, at, now);
        assert_eq!(s, before);

        // A record that settles a reservation.
        let rec = RecordRequest {
            reservation: Some(1),
            cost: NanoUsd(40),
            tokens: 20,
            ..Default::default()
        };
        let out = engine::record(&mut [&mut s], &[&lim], &rec, &policy, at);
        assert_eq!(
            out.prior.as_ref().map(|h| (h.cost, h.tokens)),
            Some((10, 5))
        );
        undo_record(&mut [&mut s], &[&lim], &rec, &out, at, now);
        assert_eq!(s, before, "the hold holds its estimate again");
        // ...so that the retry settles it.
        let again = engine::record(&mut [&mut s], &[&lim], &rec, &policy, now);
        assert!(!again.duplicate);

        // An acquire and a release.
        let mut s = busy(&lim);
        let before = s.clone();
        let expires_at = at.saturating_add(Nanos::MINUTE);
        let out = engine::acquire(&mut [&mut s], &[&lim], 7, expires_at, at);
        assert!(out.acquired());
        undo_acquire(&mut [&mut s], 7);
        assert_eq!(s, before);
        engine::acquire(&mut [&mut s], &[&lim], 7, expires_at, at);
        let with_lease = s.clone();
        let held = [holds_lease(&s, 7)];
        assert!(engine::release(&mut [&mut s], 7, at));
        let lease = LeaseSlot { id: 7, expires_at };
        undo_release(&mut [&mut s], &lease, &held, now);
        assert_eq!(s, with_lease);
        // A lease that has expired meanwhile does not come back.
        engine::release(&mut [&mut s], 7, at);
        undo_release(&mut [&mut s], &lease, &held, expires_at);
        assert!(s.leases().is_empty());

        // A hit.
        let mut s = busy(&lim);
        let before = s.clone();
        let charges = [Charge {
            requests: 2,
            tokens: 30,
        }];
        let out = crate::hit::hit(&mut [&mut s], &[&lim], &charges, at);
        assert!(out.allowed());
        undo_hit(&mut [&mut s], &charges, &out, at, now);
        assert_eq!(s, before);
    }

    #[test]
    fn a_denied_check_and_a_duplicate_record_have_nothing_to_undo() {
        let lim = SubjectLimits::default().with(LimitKind::RequestsPerMinute, nz(1));
        let policy = Policy::default();
        let mut s = SubjectState::new();
        let attempts = [Attempt {
            model: "m".into(),
            cost: NanoUsd(0),
            tokens: 0,
            input: 0,
            output: 0,
            skip: 0,
        }];
        let req = CheckRequest {
            attempts: &attempts,
            reserve: None,
            policy: &policy,
        };
        assert!(engine::check(&mut [&mut s], &[&lim], &req, T).allowed());
        let before = s.clone();
        let denied = engine::check(&mut [&mut s], &[&lim], &req, T);
        assert!(!denied.allowed());
        undo_check(&mut [&mut s], &denied, T, T);
        assert_eq!(s, before);
    }
}
