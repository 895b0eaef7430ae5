//! The engine's operations over the state of the 1–3 subjects of one
//! request: check, record, acquire and release.
//!
//! Each operation takes the subjects' states (already loaded and locked by a
//! store), their limits and `now`, and either applies fully or changes
//! nothing: if any subject's limit denies, no subject's counters move.

use crate::enforcement::{Action, Attempt, EnforcementMode, Policy};
use crate::limits::{LimitKind, LimitStatus, Resource, SubjectLimits};
use crate::money::NanoUsd;
use crate::state::{Hold, LeaseSlot, SubjectState};
use crate::time::Nanos;

/// The limit that stopped (or, in alert mode, would have stopped) a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denial {
    /// Index of the subject in the request.
    pub subject: usize,
    pub kind: LimitKind,
    /// How long until this limit could let the request through; `None` when
    /// it never can (the request alone is larger than the limit).
    pub retry_after: Option<Nanos>,
}

/// A reservation to open if the check is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reserve {
    pub id: u64,
    pub expires_at: Nanos,
}

/// What a check asks.
#[derive(Clone, Debug)]
pub struct CheckRequest<'a> {
    /// The model asked for and, in downgrade mode, its cheaper alternatives,
    /// in order. Never empty.
    pub attempts: &'a [Attempt],
    pub reserve: Option<Reserve>,
    pub policy: &'a Policy,
}

/// The decision of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOutcome {
    pub allowed: bool,
    pub action: Action,
    /// The attempt admitted, or the last one tried when denied.
    pub attempt: usize,
    /// The limit that decided, when one was exceeded.
    pub denial: Option<Denial>,
    /// When denied: the soonest any attempt could fit; `None` if never.
    pub retry_after: Option<Nanos>,
    /// The reservation opened, when `reserve` was asked and the check allowed.
    pub reservation: Option<u64>,
    /// Every limit of every subject after the decision.
    pub statuses: Vec<LimitStatus>,
    /// A budget reached the alert threshold (counting this request).
    pub alert: bool,
}

/// What a usage record charges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRequest {
    /// The reservation being settled, if any.
    pub reservation: Option<u64>,
    pub cost: NanoUsd,
    pub tokens: u64,
}

/// The result of recording usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordOutcome {
    /// The reservation had already been settled: nothing was charged.
    pub duplicate: bool,
    pub statuses: Vec<LimitStatus>,
    pub alert: bool,
}

/// The result of acquiring concurrency slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcquireOutcome {
    pub acquired: bool,
    pub denial: Option<Denial>,
    pub statuses: Vec<LimitStatus>,
}

fn amount_for(resource: Resource, attempt: &Attempt) -> u64 {
    match resource {
        Resource::Cost => attempt.cost.0,
        Resource::Tokens => attempt.tokens,
        Resource::Requests | Resource::Leases => 1,
    }
}

/// Keeps the denial that takes longest to clear: one that never clears wins.
fn worse(a: Option<Denial>, b: Denial) -> Denial {
    match a {
        None => b,
        Some(a) => match (a.retry_after, b.retry_after) {
            (None, _) => a,
            (_, None) => b,
            (Some(x), Some(y)) => {
                if y > x {
                    b
                } else {
                    a
                }
            }
        },
    }
}

/// Tests one windowed limit against an amount: the request fits when the
/// limit has room for it, and a request of nothing still needs the window not
/// to be full (so an exhausted budget blocks calls of unknown cost).
fn test_limit(
    state: &SubjectState,
    kind: LimitKind,
    limit: u64,
    amount: u64,
    now: Nanos,
) -> Result<(), Option<Nanos>> {
    let amount = amount.max(1);
    let used = state.used(kind, now);
    if used.saturating_add(amount) <= limit {
        return Ok(());
    }
    if amount > limit {
        return Err(None);
    }
    let need = used.saturating_add(amount) - limit;
    Err(state.time_until_freed(kind, now, need))
}

/// Every denial an attempt meets, worst first, or empty if it fits.
fn evaluate(
    states: &[&mut SubjectState],
    limits: &[&SubjectLimits],
    attempt: &Attempt,
    now: Nanos,
) -> (Option<Denial>, Vec<(usize, LimitKind)>) {
    let mut worst = None;
    let mut exceeded = Vec::new();
    for (i, (state, lim)) in states.iter().zip(limits).enumerate() {
        for (kind, limit) in lim.windowed() {
            let amount = amount_for(kind.resource(), attempt);
            if let Err(retry_after) = test_limit(state, kind, limit, amount, now) {
                worst = Some(worse(
                    worst,
                    Denial {
                        subject: i,
                        kind,
                        retry_after,
                    },
                ));
                exceeded.push((i, kind));
            }
        }
    }
    (worst, exceeded)
}

fn commit(
    states: &mut [&mut SubjectState],
    limits: &[&SubjectLimits],
    attempt: &Attempt,
    reserve: Option<Reserve>,
    now: Nanos,
) -> Option<u64> {
    for (state, lim) in states.iter_mut().zip(limits) {
        state.charge(lim, Resource::Requests, now, 1);
        if let Some(r) = reserve {
            let holds_anything = lim
                .windowed()
                .any(|(k, _)| matches!(k.resource(), Resource::Cost | Resource::Tokens));
            if holds_anything {
                state.push_hold(Hold {
                    id: r.id,
                    cost: attempt.cost.0,
                    tokens: attempt.tokens,
                    expires_at: r.expires_at,
                    settled: false,
                });
            }
        }
    }
    reserve.map(|r| r.id)
}

/// The state of every limit of every subject.
pub fn statuses(
    states: &[&mut SubjectState],
    limits: &[&SubjectLimits],
    exceeded: &[(usize, LimitKind)],
    now: Nanos,
) -> Vec<LimitStatus> {
    let count = limits.iter().map(|l| l.all().count()).sum();
    let mut out = Vec::with_capacity(count);
    for (i, (state, lim)) in states.iter().zip(limits).enumerate() {
        for (kind, limit) in lim.all() {
            out.push(LimitStatus {
                subject: i,
                kind,
                limit,
                used: state.used(kind, now),
                reset_at: state.reset_at(kind),
                exceeded: exceeded.contains(&(i, kind)),
            });
        }
    }
    out
}

fn alert_flag(policy: &Policy, statuses: &[LimitStatus], pending_cost: u64) -> bool {
    statuses
        .iter()
        .filter(|s| s.kind.is_budget())
        .any(|s| policy.crosses_alert(s.used.saturating_add(pending_cost), s.limit))
}

fn expire_all(states: &mut [&mut SubjectState], limits: &[&SubjectLimits], now: Nanos) {
    for (state, lim) in states.iter_mut().zip(limits) {
        state.expire(lim, now);
    }
}

/// Decides a request over its subjects and, if allowed, counts it: one
/// request against every request-rate limit, and with a reservation the
/// estimate held against budgets and token limits.
pub fn check(
    states: &mut [&mut SubjectState],
    limits: &[&SubjectLimits],
    req: &CheckRequest<'_>,
    now: Nanos,
) -> CheckOutcome {
    debug_assert_eq!(states.len(), limits.len());
    debug_assert!(!req.attempts.is_empty());
    expire_all(states, limits, now);
    let mode = req.policy.mode;

    let mut admitted = None;
    let mut last = (None, Vec::new());
    let mut soonest: Option<Option<Nanos>> = None;
    let tries = if mode == EnforcementMode::Downgrade {
        req.attempts.len()
    } else {
        1
    };
    for (idx, attempt) in req.attempts.iter().take(tries).enumerate() {
        let (denial, exceeded) = evaluate(states, limits, attempt, now);
        match denial {
            None => {
                admitted = Some(idx);
                break;
            }
            Some(d) => {
                soonest = Some(match soonest {
                    None => d.retry_after,
                    Some(prev) => match (prev, d.retry_after) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    },
                });
                last = (Some(d), exceeded);
            }
        }
    }

    let (allowed, attempt, action, denial, exceeded) = match admitted {
        Some(idx) => {
            let action = if idx > 0 {
                Action::Downgrade
            } else {
                Action::Allow
            };
            (true, idx, action, None, Vec::new())
        }
        // Alert mode lets an over-limit request through, flagged.
        None if mode == EnforcementMode::Alert => (true, 0, Action::Alert, last.0, last.1),
        None => (false, tries - 1, Action::Block, last.0, last.1),
    };

    let reservation = if allowed {
        commit(states, limits, &req.attempts[attempt], req.reserve, now)
    } else {
        None
    };
    let statuses = statuses(states, limits, &exceeded, now);
    // Without a reservation the estimate is not in `used`; count it so the
    // flag says what this request would bring the budget to.
    let pending = if reservation.is_some() {
        0
    } else {
        req.attempts[attempt].cost.0
    };
    let alert = alert_flag(req.policy, &statuses, pending);
    let action = if allowed && alert && action == Action::Allow {
        Action::Alert
    } else {
        action
    };
    CheckOutcome {
        allowed,
        action,
        attempt,
        denial,
        retry_after: if allowed { None } else { soonest.flatten() },
        reservation,
        statuses,
        alert,
    }
}

/// Accounts for what a request consumed. With a reservation, the actual
/// replaces the held estimate (larger or smaller); recording the same
/// reservation twice charges once. Usage is never denied: it happened.
pub fn record(
    states: &mut [&mut SubjectState],
    limits: &[&SubjectLimits],
    req: &RecordRequest,
    policy: &Policy,
    now: Nanos,
) -> RecordOutcome {
    expire_all(states, limits, now);
    let duplicate = req.reservation.is_some_and(|id| {
        states
            .iter_mut()
            .any(|s| s.hold_mut(id).is_some_and(|h| h.settled))
    });
    if !duplicate {
        for (state, lim) in states.iter_mut().zip(limits) {
            if let Some(h) = req.reservation.and_then(|id| state.hold_mut(id)) {
                h.settled = true;
                h.cost = 0;
                h.tokens = 0;
            }
            state.charge(lim, Resource::Cost, now, req.cost.0);
            state.charge(lim, Resource::Tokens, now, req.tokens);
        }
    }
    let statuses = statuses(states, limits, &[], now);
    let alert = alert_flag(policy, &statuses, 0);
    RecordOutcome {
        duplicate,
        statuses,
        alert,
    }
}

/// Takes one concurrency slot on every subject that has a concurrency limit,
/// all or none.
pub fn acquire(
    states: &mut [&mut SubjectState],
    limits: &[&SubjectLimits],
    lease_id: u64,
    expires_at: Nanos,
    now: Nanos,
) -> AcquireOutcome {
    expire_all(states, limits, now);
    let mut worst = None;
    let mut exceeded = Vec::new();
    for (i, (state, lim)) in states.iter().zip(limits).enumerate() {
        if let Some(max) = lim.get(LimitKind::MaxConcurrent)
            && state.live_leases(now) as u64 >= max
        {
            // A full subject frees a slot when its oldest lease expires, or
            // sooner if one is released.
            let retry_after = state
                .reset_at(LimitKind::MaxConcurrent)
                .map(|t| t.saturating_sub(now));
            let kind = LimitKind::MaxConcurrent;
            worst = Some(worse(
                worst,
                Denial {
                    subject: i,
                    kind,
                    retry_after,
                },
            ));
            exceeded.push((i, kind));
        }
    }
    let acquired = worst.is_none();
    if acquired {
        for (state, lim) in states.iter_mut().zip(limits) {
            if lim.get(LimitKind::MaxConcurrent).is_some() {
                state.push_lease(LeaseSlot {
                    id: lease_id,
                    expires_at,
                });
            }
        }
    }
    let statuses = statuses(states, limits, &exceeded, now)
        .into_iter()
        .filter(|s| s.kind == LimitKind::MaxConcurrent)
        .collect();
    AcquireOutcome {
        acquired,
        denial: worst,
        statuses,
    }
}

/// Gives back a lease's slots. True if the lease was live on any subject;
/// releasing twice, or after expiry, is harmless and returns false.
pub fn release(states: &mut [&mut SubjectState], lease_id: u64, now: Nanos) -> bool {
    let mut released = false;
    for state in states.iter_mut() {
        released |= state.remove_lease(lease_id, now);
    }
    released
}

/// The state of every limit of one subject, changing nothing but expiry.
pub fn usage(state: &mut SubjectState, limits: &SubjectLimits, now: Nanos) -> Vec<LimitStatus> {
    state.expire(limits, now);
    statuses(&[state], &[limits], &[], now)
}
