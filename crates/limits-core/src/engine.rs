//! The engine's operations over the state of the 1–4 subjects of one
//! request: check, record, acquire and release.
//!
//! Each operation takes the subjects' states (already loaded and locked by a
//! store), their limits and `now`, and either applies fully or changes
//! nothing: if any subject's limit denies, no subject's counters move.

use crate::alerts::{Crossing, crossings};
use crate::enforcement::{Action, Attempt, EnforcementMode, Policy};
use crate::limits::{LimitKind, LimitStatus, Resource, SubjectLimits};
use crate::money::NanoUsd;
use crate::state::{Held, Hold, LeaseSlot, Settled, SubjectState};
use crate::time::Nanos;
use crate::window::WindowRef;

/// The limit that stopped (or, in alert mode, would have stopped) a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denial {
    /// Index of the subject in the request.
    pub subject: usize,
    /// The limit that decided (a calendar slot for a budget on a calendar).
    pub kind: LimitKind,
    /// How long until this limit could let the request through; `None` when
    /// it never can (the request alone is larger than the limit).
    pub retry_after: Option<Nanos>,
}

/// A reservation to open if the check is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reserve {
    /// The reservation's id, unique within its subjects.
    pub id: u64,
    /// When the reservation's holds lapse unless settled.
    pub expires_at: Nanos,
    /// Kept with each hold as [`Hold::tag`].
    pub tag: u32,
}

/// What a check asks.
#[derive(Clone, Debug)]
pub struct CheckRequest<'a> {
    /// The model asked for and, in downgrade mode, its cheaper alternatives,
    /// in order. Never empty.
    pub attempts: &'a [Attempt],
    /// Open a reservation (hold the estimate) when the check is allowed.
    pub reserve: Option<Reserve>,
    /// How limits are enforced.
    pub policy: &'a Policy,
}

/// What a check decided: a denial carries the limit that decided it, and an
/// admission cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The request may run.
    Allowed {
        /// The reservation opened, when `reserve` was asked.
        reservation: Option<u64>,
        /// In alert mode, the limit the request is over: it runs anyway,
        /// flagged.
        over: Option<Denial>,
    },
    /// The request may not run.
    Denied {
        /// The limit that decided.
        denial: Denial,
        /// The soonest any attempt could fit; `None` if never.
        retry_after: Option<Nanos>,
    },
}

/// The decision of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOutcome {
    /// Allowed (with what was opened) or denied (with why).
    pub verdict: Verdict,
    /// What the service does with the request.
    pub action: Action,
    /// The attempt admitted, or the last one tried when denied.
    pub attempt: usize,
    /// Every limit of every subject after the decision.
    pub statuses: Vec<LimitStatus>,
    /// A budget reached the alert threshold (counting this request).
    pub alert: bool,
    /// The alert thresholds this check took a budget across (see
    /// [`crate::alerts`]); each is reported by one operation only.
    pub crossings: Vec<Crossing>,
}

impl CheckOutcome {
    /// Whether the request may run.
    pub fn allowed(&self) -> bool {
        matches!(self.verdict, Verdict::Allowed { .. })
    }

    /// The limit that decided a denial, or that an alert-mode admission is
    /// over.
    pub fn denial(&self) -> Option<Denial> {
        match self.verdict {
            Verdict::Allowed { over, .. } => over,
            Verdict::Denied { denial, .. } => Some(denial),
        }
    }

    /// When denied: the soonest the request could fit.
    pub fn retry_after(&self) -> Option<Nanos> {
        match self.verdict {
            Verdict::Allowed { .. } => None,
            Verdict::Denied { retry_after, .. } => retry_after,
        }
    }

    /// The reservation opened, when `reserve` was asked and the check
    /// allowed.
    pub fn reservation(&self) -> Option<u64> {
        match self.verdict {
            Verdict::Allowed { reservation, .. } => reservation,
            Verdict::Denied { .. } => None,
        }
    }
}

/// What a usage record charges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordRequest {
    /// The reservation being settled, if any.
    pub reservation: Option<u64>,
    /// The actual cost to charge.
    pub cost: NanoUsd,
    /// The actual tokens to charge.
    pub tokens: u64,
    /// The actual input (prompt) tokens, charged to input token limits.
    pub input: u64,
    /// The actual output (completion) tokens, charged to output token
    /// limits.
    pub output: u64,
    /// Set for a progress record of a streamed request: the amounts are the
    /// usage so far, and the reservation stays open.
    pub progress: Option<Progress>,
    /// The record's number in its reservation's sequence (1, 2, ...), or 0:
    /// a record numbered no higher than one applied before is a duplicate.
    pub sequence: u32,
}

/// What a progress record adds to a usage record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The reservation's holds last at least until then: each progress
    /// record renews them.
    pub hold_until: Nanos,
    /// The reservation's tag, for the holds of a stream whose holds had
    /// lapsed (see [`record`]).
    pub tag: u32,
}

/// The result of recording usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordOutcome {
    /// The reservation had already been settled, or a record with the same
    /// or a later number applied: nothing was charged.
    pub duplicate: bool,
    /// The reservation's hold as it was before this record (from its first
    /// subject that has one; a settled reservation's, when it is settled),
    /// so that the record can be undone.
    pub prior: Option<Hold>,
    /// The subjects (bit `i` for subject `i`) whose hold this record
    /// changed, settled or made.
    pub held_on: u16,
    /// What this record charged to the windows: with a reservation, the
    /// usage it reports less what earlier records of it charged.
    pub charged: Held,
    /// A progress record whose usage went past what its reservation held,
    /// into a limit that has no room for it (marked exceeded in
    /// `statuses`): the request should stop. Once set it stays set for the
    /// reservation. Never set in alert mode.
    pub stop: bool,
    /// Every limit of every subject after the record.
    pub statuses: Vec<LimitStatus>,
    /// A budget reached the alert threshold (counting this record).
    pub alert: bool,
    /// The alert thresholds this record took a budget across.
    pub crossings: Vec<Crossing>,
}

/// Whether concurrency slots were taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Every limited subject's slot was taken, under this lease.
    Acquired(LeaseSlot),
    /// A subject was full.
    Full(Denial),
}

/// The result of acquiring concurrency slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcquireOutcome {
    /// Whether the slots were taken.
    pub admission: Admission,
    /// Every limit of every subject after the acquire.
    pub statuses: Vec<LimitStatus>,
}

impl AcquireOutcome {
    /// Whether the slots were taken.
    pub fn acquired(&self) -> bool {
        matches!(self.admission, Admission::Acquired(_))
    }

    /// The lease, when acquired.
    pub fn lease(&self) -> Option<LeaseSlot> {
        match self.admission {
            Admission::Acquired(lease) => Some(lease),
            Admission::Full(_) => None,
        }
    }

    /// The full subject's limit, when not acquired.
    pub fn denial(&self) -> Option<Denial> {
        match self.admission {
            Admission::Acquired(_) => None,
            Admission::Full(denial) => Some(denial),
        }
    }
}

fn amount_for(resource: Resource, attempt: &Attempt) -> u64 {
    match resource {
        Resource::Cost => attempt.cost.0,
        Resource::Tokens => attempt.tokens,
        Resource::InputTokens => attempt.input,
        Resource::OutputTokens => attempt.output,
        Resource::Requests | Resource::Leases => 1,
    }
}

/// Keeps the denial that takes longest to clear: one that never clears wins;
/// on a tie the first stays. Every backend and operation picks the deciding
/// denial with this, so they all name the same limit.
pub fn worse(a: Option<Denial>, b: Denial) -> Denial {
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

/// Notes that limit `kind` of subject `subject` does not fit: keeps the
/// worse of the denials so far (see [`worse`]) and lists the limit as
/// exceeded.
#[inline(always)]
pub(crate) fn note_denial(
    worst: &mut Option<Denial>,
    exceeded: &mut Vec<(usize, LimitKind)>,
    subject: usize,
    kind: LimitKind,
    retry_after: Option<Nanos>,
) {
    let denial = Denial {
        subject,
        kind,
        retry_after,
    };
    *worst = Some(worse(*worst, denial));
    exceeded.push((subject, kind));
}

/// Tests one windowed limit against an amount: the request fits when the
/// limit has room for it, and a request of nothing still needs the window not
/// to be full (so an exhausted budget blocks calls of unknown cost).
pub(crate) fn test_limit(
    state: &SubjectState,
    kind: LimitKind,
    limit: u64,
    amount: u64,
    now: Nanos,
    window: Option<WindowRef<'_>>,
    held: Held,
) -> Result<(), Option<Nanos>> {
    let amount = amount.max(1);
    let used = state.used_with(kind, window, held, now);
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
        if skips(attempt.skip, i) {
            continue;
        }
        let held = state.held(now);
        let windows = state.windows_by_kind();
        let limit = lim.windowed_limits();
        // One call per kind with the kind a constant, as in `statuses`.
        let mut test = |kind: LimitKind| {
            let Some(limit) = limit[kind.index()] else {
                return;
            };
            let amount = amount_for(kind.resource(), attempt);
            let slot = lim.slot(kind);
            let window = windows.get(slot);
            if let Err(retry_after) =
                test_limit(state, slot, limit.get(), amount, now, window, held)
            {
                note_denial(&mut worst, &mut exceeded, i, slot, retry_after);
            }
        };
        test(LimitKind::BudgetHourly);
        test(LimitKind::BudgetDaily);
        test(LimitKind::BudgetWeekly);
        test(LimitKind::BudgetMonthly);
        test(LimitKind::RequestsPerSecond);
        test(LimitKind::RequestsPerMinute);
        test(LimitKind::RequestsPerHour);
        test(LimitKind::TokensPerMinute);
        test(LimitKind::TokensPerHour);
        test(LimitKind::InputTokensPerMinute);
        test(LimitKind::InputTokensPerHour);
        test(LimitKind::OutputTokensPerMinute);
        test(LimitKind::OutputTokensPerHour);
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
    for (i, (state, lim)) in states.iter_mut().zip(limits).enumerate() {
        if skips(attempt.skip, i) {
            continue;
        }
        state.charge(lim, Resource::Requests, now, 1);
        if let Some(r) = reserve
            && holds_anything(lim)
        {
            state.push_hold(Hold {
                id: r.id,
                cost: attempt.cost.0,
                tokens: attempt.tokens,
                input: attempt.input,
                output: attempt.output,
                expires_at: r.expires_at,
                tag: r.tag,
                ..Hold::default()
            });
        }
    }
    reserve.map(|r| r.id)
}

/// Whether a subject with these limits keeps a reservation's hold: it has a
/// budget or a token limit.
fn holds_anything(limits: &SubjectLimits) -> bool {
    limits
        .windowed()
        .any(|(k, _)| !matches!(k.resource(), Resource::Requests))
}

/// Whether an attempt's `skip` mask leaves out subject `i`.
#[inline(always)]
pub(crate) fn skips(skip: u16, i: usize) -> bool {
    skip != 0 && i < 16 && skip & (1 << i) != 0
}

/// The state of every limit of every subject (`states` as `&mut` or `&`
/// references).
pub fn statuses<S: std::ops::Deref<Target = SubjectState>>(
    states: &[S],
    limits: &[&SubjectLimits],
    exceeded: &[(usize, LimitKind)],
    now: Nanos,
) -> Vec<LimitStatus> {
    statuses_of(states, limits, exceeded, 0, now)
}

/// [`statuses`] of the subjects an attempt's `skip` mask leaves in.
fn statuses_of<S: std::ops::Deref<Target = SubjectState>>(
    states: &[S],
    limits: &[&SubjectLimits],
    exceeded: &[(usize, LimitKind)],
    skip: u16,
    now: Nanos,
) -> Vec<LimitStatus> {
    let count = limits
        .iter()
        .enumerate()
        .filter(|(i, _)| !skips(skip, *i))
        .map(|(_, l)| l.count())
        .sum();
    let mut out = Vec::with_capacity(count);
    for (i, (state, lim)) in states.iter().zip(limits).enumerate() {
        if skips(skip, i) {
            continue;
        }
        // Sum the holds once per subject, not once per limit, and index the
        // windows by kind once: this loop runs on every check and record.
        let held = state.held(now);
        let windows = state.windows_by_kind();
        let limit = lim.windowed_limits();
        // One call per kind with the kind a constant, so that its resource
        // and window length fold away after inlining.
        let mut push = |kind: LimitKind| {
            push_windowed_status(&mut out, i, kind, lim, limit, &windows, held, exceeded, now)
        };
        push(LimitKind::BudgetHourly);
        push(LimitKind::BudgetDaily);
        push(LimitKind::BudgetWeekly);
        push(LimitKind::BudgetMonthly);
        push(LimitKind::RequestsPerSecond);
        push(LimitKind::RequestsPerMinute);
        push(LimitKind::RequestsPerHour);
        push(LimitKind::TokensPerMinute);
        push(LimitKind::TokensPerHour);
        push(LimitKind::InputTokensPerMinute);
        push(LimitKind::InputTokensPerHour);
        push(LimitKind::OutputTokensPerMinute);
        push(LimitKind::OutputTokensPerHour);
        if let Some(limit) = lim.get(LimitKind::MaxConcurrent) {
            let kind = LimitKind::MaxConcurrent;
            out.push(LimitStatus {
                subject: i,
                kind,
                limit,
                used: state.used_with(kind, None, held, now),
                reset_at: state.reset_at_with(kind, None),
                exceeded: !exceeded.is_empty() && exceeded.contains(&(i, kind)),
                scope: None,
            });
        }
    }
    out
}

/// Appends the status of one windowed limit, if the subject has it. A
/// calendar budget's status names its calendar slot, and resets at the end
/// of the current period even when nothing is counted yet.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn push_windowed_status(
    out: &mut Vec<LimitStatus>,
    subject: usize,
    kind: LimitKind,
    lim: &SubjectLimits,
    limits: &[Option<std::num::NonZeroU64>; crate::limits::WINDOW_KINDS],
    windows: &crate::window_set::ByKind<'_>,
    held: Held,
    exceeded: &[(usize, LimitKind)],
    now: Nanos,
) {
    let Some(limit) = limits[kind.index()] else {
        return;
    };
    // Each arm with its kind a constant, so that the window's bucket
    // arithmetic folds (as `kind` does in the rolling arm).
    let (slot, window, reset_at) = match (kind.calendar(), lim.calendar()) {
        (Some(slot), Some(calendar)) => {
            let window = windows.get(slot);
            // The period's bucket ends with it; with none yet, the calendar
            // says when the current period ends.
            let reset_at = match window.and_then(|w| w.reset_at(Nanos::ZERO)) {
                Some(t) => Some(t),
                None => slot.period().map(|p| calendar.end(p, now)),
            };
            (slot, window, reset_at)
        }
        _ => {
            let window = windows.get(kind);
            let length = kind.window().expect("windowed kind");
            (kind, window, window.and_then(|w| w.reset_at(length)))
        }
    };
    let counted = window.map_or(0, |w| w.total());
    let used = counted.saturating_add(held.of(kind.resource()));
    out.push(LimitStatus {
        subject,
        kind: slot,
        limit: limit.get(),
        used,
        reset_at,
        exceeded: !exceeded.is_empty() && exceeded.contains(&(subject, slot)),
        scope: None,
    });
}

fn alert_flag(policy: &Policy, statuses: &[LimitStatus], pending_cost: u64) -> bool {
    statuses
        .iter()
        .filter(|s| s.kind.is_budget())
        .any(|s| policy.crosses_alert(s.used.saturating_add(pending_cost), s.limit))
}

/// Expires every subject's state, after starting to load all of them.
pub(crate) fn expire_all(states: &mut [&mut SubjectState], limits: &[&SubjectLimits], now: Nanos) {
    for state in states.iter() {
        state.prefetch();
    }
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

    // Who decided, and the limits to mark exceeded.
    enum Decided {
        Allow { over: Option<Denial> },
        Deny(Denial),
    }
    let (decided, attempt, action, exceeded) = match (admitted, last.0) {
        (Some(idx), _) => {
            let action = if idx > 0 {
                Action::Downgrade
            } else {
                Action::Allow
            };
            (Decided::Allow { over: None }, idx, action, Vec::new())
        }
        // Alert mode lets an over-limit request through, flagged.
        (None, over) if mode == EnforcementMode::Alert => {
            (Decided::Allow { over }, 0, Action::Alert, last.1)
        }
        (None, Some(denial)) => (Decided::Deny(denial), tries - 1, Action::Block, last.1),
        (None, None) => unreachable!("an attempt that does not fit has a denial"),
    };

    let verdict = match decided {
        Decided::Allow { over } => Verdict::Allowed {
            reservation: commit(states, limits, &req.attempts[attempt], req.reserve, now),
            over,
        },
        Decided::Deny(denial) => Verdict::Denied {
            denial,
            retry_after: soonest.flatten(),
        },
    };
    let skip = req.attempts[attempt].skip;
    let statuses = statuses_of(states, limits, &exceeded, skip, now);
    let crossings = if matches!(verdict, Verdict::Allowed { .. }) {
        crossings(
            states,
            limits,
            &req.policy.alert_thresholds,
            &statuses,
            skip,
            now,
        )
    } else {
        Vec::new()
    };
    // Without a reservation the estimate is not in `used`; count it so the
    // flag says what this request would bring the budget to.
    let pending = match verdict {
        Verdict::Allowed {
            reservation: Some(_),
            ..
        } => 0,
        _ => req.attempts[attempt].cost.0,
    };
    let alert = alert_flag(req.policy, &statuses, pending);
    let allowed = matches!(verdict, Verdict::Allowed { .. });
    let action = if allowed && alert && action == Action::Allow {
        Action::Alert
    } else {
        action
    };
    CheckOutcome {
        verdict,
        action,
        attempt,
        statuses,
        alert,
        crossings,
    }
}

/// Accounts for what a request consumed. Usage is never denied: it
/// happened.
///
/// With a reservation, a record reports the request's usage so far (a
/// progress record, `progress` set) or in total (a final one), and charges
/// what earlier records of the reservation have not: the hold holds the
/// rest of the estimate while the request runs, and a final record settles
/// it, holding nothing. Recording the same usage again charges nothing, and
/// so does a numbered record whose number is not above the last one
/// applied, or any record once the reservation is settled.
///
/// A progress record that goes past what the hold held must fit every
/// budget and token limit of every subject it goes past on (the hold is
/// extended by the overshoot): if one has no room, the usage is charged
/// all the same and [`RecordOutcome::stop`] tells the caller to stop the
/// request, so a limit is overshot by at most the last progress step.
///
/// A progress record for a reservation with no hold left (its holds lapsed
/// because no record came within their time to live) charges all it
/// reports and holds the reservation again, so that later records charge
/// only what is new.
pub fn record(
    states: &mut [&mut SubjectState],
    limits: &[&SubjectLimits],
    req: &RecordRequest,
    policy: &Policy,
    now: Nanos,
) -> RecordOutcome {
    expire_all(states, limits, now);
    let prior = req.reservation.and_then(|id| {
        let open = states.iter().find_map(|s| s.hold(id)).cloned();
        open.or_else(|| {
            let settled = states.iter().find_map(|s| s.find_settled(id))?;
            Some(Hold {
                id,
                expires_at: settled.expires_at,
                settled: true,
                ..Hold::default()
            })
        })
    });
    let duplicate = prior
        .as_ref()
        .is_some_and(|h| h.settled || (req.sequence != 0 && req.sequence <= h.seq));
    let mut charged = Held::default();
    let mut overshoot = Held::default();
    let mut held_on = 0u16;
    if !duplicate {
        let total = Held {
            cost: req.cost.0,
            tokens: req.tokens,
            input: req.input,
            output: req.output,
        };
        let (before, held) = prior
            .as_ref()
            .map_or_else(Default::default, |h| (h.charged, h.estimate()));
        charged = total.saturating_sub(before);
        overshoot = charged.saturating_sub(held);
        for (i, (state, lim)) in states.iter_mut().zip(limits).enumerate() {
            let bit = if i < 16 { 1 << i } else { 0 };
            match req.reservation.and_then(|id| state.hold_mut(id)) {
                Some(h) => {
                    held_on |= bit;
                    match req.progress {
                        Some(p) => {
                            h.charged = h.charged.saturating_add(charged);
                            h.seq = h.seq.max(req.sequence);
                            h.set_estimate(h.estimate().saturating_sub(charged));
                            h.expires_at = h.expires_at.max(p.hold_until);
                        }
                        None => {
                            // Settled: the first subject remembers it, until
                            // the hold would have expired.
                            let (id, expires_at) = (h.id, h.expires_at);
                            state.remove_hold(id);
                            if held_on == bit {
                                state.push_settled(Settled { id, expires_at });
                            }
                        }
                    }
                }
                None => {
                    if let (Some(id), Some(p), None) = (req.reservation, req.progress, &prior)
                        && holds_anything(lim)
                    {
                        held_on |= bit;
                        state.push_hold(Hold {
                            id,
                            expires_at: p.hold_until,
                            tag: p.tag,
                            charged,
                            seq: req.sequence,
                            ..Hold::default()
                        });
                    }
                }
            }
            state.charge(lim, Resource::Cost, now, charged.cost);
            state.charge(lim, Resource::Tokens, now, charged.tokens);
            state.charge(lim, Resource::InputTokens, now, charged.input);
            state.charge(lim, Resource::OutputTokens, now, charged.output);
        }
    }
    let mut statuses = statuses(states, limits, &[], now);
    let mut stop = false;
    if req.progress.is_some() {
        stop = prior.as_ref().is_some_and(|h| h.stopped);
        if !duplicate && !overshoot.is_zero() {
            for s in statuses.iter_mut() {
                if overshoot.of(s.kind.resource()) > 0 && s.used > s.limit {
                    s.exceeded = true;
                    stop = true;
                }
            }
        }
        stop &= policy.mode != EnforcementMode::Alert;
        if stop && !duplicate {
            for state in states.iter_mut() {
                if let Some(h) = req.reservation.and_then(|id| state.hold_mut(id)) {
                    h.stopped = true;
                }
            }
        }
    }
    let alert = alert_flag(policy, &statuses, 0);
    let crossings = if duplicate {
        Vec::new()
    } else {
        crossings(states, limits, &policy.alert_thresholds, &statuses, 0, now)
    };
    RecordOutcome {
        duplicate,
        prior,
        held_on,
        charged,
        stop,
        statuses,
        alert,
        crossings,
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
        let live = state.live_leases(now) as u64;
        if let Some(max) = lim.get(LimitKind::MaxConcurrent)
            && live >= max
        {
            // A full subject frees a slot once `live - max + 1` leases have
            // expired (one, unless a reload lowered the limit below the
            // leases out), or sooner if leases are released.
            let excess = usize::try_from(live - max).unwrap_or(usize::MAX);
            let mut expiries: Vec<Nanos> = state
                .leases()
                .iter()
                .map(|l| l.expires_at)
                .filter(|&t| t > now)
                .collect();
            expiries.sort_unstable();
            let retry_after = expiries.get(excess).map(|t| t.saturating_sub(now));
            let kind = LimitKind::MaxConcurrent;
            note_denial(&mut worst, &mut exceeded, i, kind, retry_after);
        }
    }
    let admission = match worst {
        Some(denial) => Admission::Full(denial),
        None => {
            let lease = LeaseSlot {
                id: lease_id,
                expires_at,
            };
            for (state, lim) in states.iter_mut().zip(limits) {
                if lim.get(LimitKind::MaxConcurrent).is_some() {
                    state.push_lease(lease);
                }
            }
            Admission::Acquired(lease)
        }
    };
    let statuses = statuses(states, limits, &exceeded, now)
        .into_iter()
        .filter(|s| s.kind == LimitKind::MaxConcurrent)
        .collect();
    AcquireOutcome {
        admission,
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

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::*;

    /// A whole number of hours, so bucket boundaries fall on `T`.
    const T: Nanos = Nanos(280_000 * 3_600 * 1_000_000_000);

    fn nz(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).unwrap()
    }

    fn denial(subject: usize, retry_after: Option<u64>) -> Denial {
        Denial {
            subject,
            kind: LimitKind::BudgetDaily,
            retry_after: retry_after.map(Nanos),
        }
    }

    fn attempt(cost: u64, tokens: u64) -> Attempt {
        Attempt {
            model: "m".into(),
            cost: NanoUsd(cost),
            tokens,
            input: tokens,
            output: tokens,
            skip: 0,
        }
    }

    #[test]
    fn worse_keeps_a_denial_that_never_clears_then_the_longest_wait() {
        assert_eq!(worse(None, denial(0, Some(5))), denial(0, Some(5)));
        assert_eq!(
            worse(Some(denial(0, Some(5))), denial(1, Some(9))),
            denial(1, Some(9))
        );
        assert_eq!(
            worse(Some(denial(0, Some(9))), denial(1, Some(5))),
            denial(0, Some(9))
        );
        assert_eq!(
            worse(Some(denial(0, None)), denial(1, Some(9))),
            denial(0, None)
        );
        assert_eq!(
            worse(Some(denial(0, Some(9))), denial(1, None)),
            denial(1, None)
        );
        // On a tie the first one found stays, so subject order decides.
        assert_eq!(
            worse(Some(denial(0, Some(5))), denial(1, Some(5))),
            denial(0, Some(5))
        );
    }

    #[test]
    fn test_limit_needs_room_for_at_least_one_unit() {
        let mut s = SubjectState::new();
        let lim = SubjectLimits::default().with(LimitKind::BudgetDaily, nz(10));
        s.charge(&lim, Resource::Cost, T, 9);
        assert_eq!(
            test_limit(
                &s,
                LimitKind::BudgetDaily,
                10,
                0,
                T,
                s.window(LimitKind::BudgetDaily),
                Held::default()
            ),
            Ok(())
        );
        assert_eq!(
            test_limit(
                &s,
                LimitKind::BudgetDaily,
                10,
                1,
                T,
                s.window(LimitKind::BudgetDaily),
                Held::default()
            ),
            Ok(())
        );
        s.charge(&lim, Resource::Cost, T, 1);
        // A request of nothing is refused by a full window...
        assert!(
            test_limit(
                &s,
                LimitKind::BudgetDaily,
                10,
                0,
                T,
                s.window(LimitKind::BudgetDaily),
                Held::default()
            )
            .is_err()
        );
        // ...and one larger than the limit can never fit.
        assert_eq!(
            test_limit(
                &s,
                LimitKind::BudgetDaily,
                10,
                11,
                T,
                s.window(LimitKind::BudgetDaily),
                Held::default()
            ),
            Err(None)
        );
    }

    #[test]
    fn evaluate_marks_every_exceeded_limit_and_keeps_the_worst() {
        let lim = SubjectLimits::default()
            .with(LimitKind::RequestsPerSecond, nz(1))
            .with(LimitKind::RequestsPerMinute, nz(1))
            .with(LimitKind::BudgetDaily, nz(1_000));
        let mut a = SubjectState::new();
        let mut b = SubjectState::new();
        a.charge(&lim, Resource::Requests, T, 1);
        b.charge(&lim, Resource::Requests, T, 1);
        let states = [&mut a, &mut b];
        let (worst, exceeded) = evaluate(&states, &[&lim, &lim], &attempt(5, 0), T);
        assert_eq!(
            exceeded,
            [
                (0, LimitKind::RequestsPerSecond),
                (0, LimitKind::RequestsPerMinute),
                (1, LimitKind::RequestsPerSecond),
                (1, LimitKind::RequestsPerMinute),
            ]
        );
        let worst = worst.unwrap();
        assert_eq!(
            (worst.subject, worst.kind),
            (0, LimitKind::RequestsPerMinute)
        );
        // Nothing exceeded: no denial and no allocation of the list. The
        // engine expires state before evaluating, so this does too.
        let later = T
            .saturating_add(Nanos::MINUTE)
            .saturating_add(Nanos::SECOND);
        let mut states = states;
        for s in states.iter_mut() {
            s.expire(&lim, later);
        }
        let (worst, exceeded) = evaluate(&states, &[&lim, &lim], &attempt(5, 0), later);
        assert_eq!(worst, None);
        assert_eq!(exceeded.capacity(), 0);
    }

    #[test]
    fn statuses_cover_every_limit_in_kind_order_with_concurrency_last() {
        let lim = SubjectLimits::default()
            .with(LimitKind::TokensPerHour, nz(100))
            .with(LimitKind::BudgetHourly, nz(100))
            .with_max_concurrent(std::num::NonZeroU32::new(2).unwrap());
        let mut s = SubjectState::new();
        s.push_lease(LeaseSlot {
            id: 1,
            expires_at: T.saturating_add(Nanos::SECOND),
        });
        let out = statuses(&[&mut s], &[&lim], &[(0, LimitKind::TokensPerHour)], T);
        let kinds: Vec<_> = out.iter().map(|s| (s.kind, s.used, s.exceeded)).collect();
        assert_eq!(
            kinds,
            [
                (LimitKind::BudgetHourly, 0, false),
                (LimitKind::TokensPerHour, 0, true),
                (LimitKind::MaxConcurrent, 1, false),
            ]
        );
    }

    #[test]
    fn a_check_over_no_subjects_allows_and_reports_nothing() {
        let policy = Policy::default();
        let attempts = [attempt(1, 1)];
        let req = CheckRequest {
            attempts: &attempts,
            reserve: None,
            policy: &policy,
        };
        let out = check(&mut [], &[], &req, T);
        assert!(out.allowed());
        assert!(out.statuses.is_empty());
    }
}
