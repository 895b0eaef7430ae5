//! Property tests of the engine's invariants: no window of length W admits
//! more than its limit (with and without reservations), amounts leave a
//! window between W and W + W/60, reservations are admitted only when
//! committed + held + estimate fit, a denied check changes nothing, and
//! `retry_after` is exact.

mod common;

use common::{Group, T0, attempt, limits, policy};
use limits_core::engine::Reserve;
use limits_core::window::BUCKETS;
use limits_core::{Attempt, EnforcementMode, LimitKind, NanoUsd, Nanos, Resource, SubjectLimits};
use proptest::prelude::*;

fn window(kind: LimitKind) -> Nanos {
    kind.window().expect("a windowed kind")
}

/// The most an amount can outlive its window: one bucket.
fn lag(kind: LimitKind) -> Nanos {
    Nanos(window(kind).0 / BUCKETS)
}

fn budget_kind() -> impl Strategy<Value = LimitKind> {
    prop_oneof![
        Just(LimitKind::BudgetHourly),
        Just(LimitKind::BudgetDaily),
        Just(LimitKind::BudgetMonthly),
    ]
}

/// Fails when any span `[t, t + length)` holds more than `limit` of the
/// admitted amounts. A span's sum is largest when it starts at an admission,
/// so checking those spans checks them all.
fn assert_no_span_exceeds(
    admitted: &[(Nanos, u64)],
    length: Nanos,
    limit: u64,
) -> Result<(), TestCaseError> {
    for (i, &(t, _)) in admitted.iter().enumerate() {
        let end = t.saturating_add(length);
        let sum: u64 = admitted[i..]
            .iter()
            .take_while(|&&(u, _)| u < end)
            .map(|&(_, a)| a)
            .sum();
        prop_assert!(sum <= limit, "span from {:?} holds {} > {}", t, sum, limit);
    }
    Ok(())
}

proptest! {
    /// (a) Unreserved: check with the estimate, then record the same amount
    /// as actual. Arrival gaps are up to a fifth of the window, so spans see
    /// both spend expiring and spend piling up.
    #[test]
    fn no_budget_window_admits_more_than_the_limit_unreserved(
        kind in budget_kind(),
        limit in 1u64..1_000,
        arrivals in prop::collection::vec((0u64..200, 0u64..400), 1..200),
    ) {
        let w = window(kind);
        let mut g = Group::one(limits(&[(kind, limit)]));
        let mut now = T0;
        let mut admitted = Vec::new();
        for (gap, amount) in arrivals {
            now = now.saturating_add(Nanos(w.0 / 1_000 * gap));
            if g.check(amount, 0, now).allowed() {
                g.record(amount, 0, now);
                admitted.push((now, amount));
            }
        }
        assert_no_span_exceeds(&admitted, w, limit)?;
    }

    /// (a) Reserved: the estimate is held at the check and settled (with the
    /// same amount) some time later, possibly after the hold has expired.
    /// With a hold lifetime of W, an admitted amount is counted, as a hold or
    /// as spend, for at least W after its admission.
    #[test]
    fn no_budget_window_admits_more_than_the_limit_reserved(
        kind in budget_kind(),
        limit in 1u64..1_000,
        arrivals in prop::collection::vec((0u64..200, 0u64..400, 0u64..1_500), 1..200),
    ) {
        let w = window(kind);
        let mut g = Group::one(limits(&[(kind, limit)]));
        let mut now = T0;
        let mut admitted = Vec::new();
        // Settlements due: (when, reservation, amount).
        let mut pending: Vec<(Nanos, u64, u64)> = Vec::new();
        for (id, (gap, amount, delay)) in (1u64..).zip(arrivals) {
            now = now.saturating_add(Nanos(w.0 / 1_000 * gap));
            pending.sort_by_key(|p| p.0);
            let due = pending.iter().take_while(|p| p.0 <= now).count();
            for (at, rid, actual) in pending.drain(..due) {
                prop_assert!(!g.settle(rid, actual, 0, at).duplicate);
            }
            let out = g.reserve(id, amount, 0, now.saturating_add(w), now);
            if out.allowed() {
                admitted.push((now, amount));
                pending.push((now.saturating_add(Nanos(w.0 / 1_000 * delay)), id, amount));
            }
        }
        assert_no_span_exceeds(&admitted, w, limit)?;
    }

    /// (b) Through the engine: an amount counted by check (requests) or
    /// record (cost, tokens) is still in `usage()` just before W has passed
    /// and gone once W + W/60 has.
    #[test]
    fn an_amount_leaves_the_engine_between_w_and_w_plus_one_bucket(
        kind_index in 0usize..LimitKind::WINDOWED.len(),
        start in 0u64..(1u64 << 62),
        amount in 1u64..1_000_000_000,
        probe in any::<u64>(),
    ) {
        let kind = LimitKind::WINDOWED[kind_index];
        let w = window(kind);
        let t = Nanos(start);
        let mut g = Group::one(limits(&[(kind, u64::MAX)]));
        let expected = match kind.resource() {
            Resource::Requests => {
                prop_assert!(g.check(0, 0, t).allowed());
                1
            }
            Resource::Cost => {
                g.record(amount, 0, t);
                amount
            }
            Resource::Tokens => {
                g.record(0, amount, t);
                amount
            }
            Resource::InputTokens => {
                g.record_split(amount, 0, t);
                amount
            }
            Resource::OutputTokens => {
                g.record_split(0, amount, t);
                amount
            }
            Resource::Leases => unreachable!("not a windowed kind"),
        };
        let early = t.saturating_add(Nanos(probe % w.0));
        prop_assert_eq!(g.used(0, kind, early), expected);
        let last = t.saturating_add(w).saturating_sub(Nanos(1));
        prop_assert_eq!(g.used(0, kind, last), expected);
        let gone = t.saturating_add(w).saturating_add(lag(kind));
        prop_assert_eq!(g.used(0, kind, gone), 0);
        prop_assert!(g.states[0].is_idle());
    }
}

/// One step of a reservation workload.
#[derive(Clone, Debug)]
enum ResOp {
    Check {
        estimate: u64,
    },
    /// Settles one of the unsettled reservations with `percent` of its
    /// estimate (0–299 %: smaller or larger actuals).
    Settle {
        pick: usize,
        percent: u64,
    },
    Jump {
        by_ms: u64,
    },
}

fn res_op() -> impl Strategy<Value = ResOp> {
    prop_oneof![
        3 => (0u64..300).prop_map(|estimate| ResOp::Check { estimate }),
        2 => (any::<usize>(), 0u64..300)
            .prop_map(|(pick, percent)| ResOp::Settle { pick, percent }),
        2 => prop_oneof![0u64..60_000, 0u64..7_200_000].prop_map(|by_ms| ResOp::Jump { by_ms }),
    ]
}

#[derive(Clone, Debug)]
struct ModelHold {
    id: u64,
    estimate: u64,
    expires_at: Nanos,
    settled: bool,
}

/// An exact model of spend and holds, independent of the engine's buckets.
#[derive(Debug, Default)]
struct Model {
    spent: Vec<(Nanos, u64)>,
    holds: Vec<ModelHold>,
}

impl Model {
    fn held(&self, now: Nanos) -> u64 {
        self.holds
            .iter()
            .filter(|h| !h.settled && h.expires_at > now)
            .map(|h| h.estimate)
            .sum()
    }

    /// Spend still inside a window that is `extra` longer than W.
    fn spent_within(&self, length: Nanos, now: Nanos) -> u64 {
        self.spent
            .iter()
            .filter(|&&(t, _)| t.saturating_add(length) > now)
            .map(|&(_, a)| a)
            .sum()
    }

    /// The exact usage, and the most the conservative window may show.
    fn bounds(&self, kind: LimitKind, now: Nanos) -> (u64, u64) {
        let held = self.held(now);
        let exact = self.spent_within(window(kind), now) + held;
        let lagged = self.spent_within(window(kind).saturating_add(lag(kind)), now) + held;
        (exact, lagged)
    }
}

proptest! {
    /// (c) Any interleaving of reserved checks, settlements (smaller or
    /// larger than the estimate) and clock jumps past hold expiries: a check
    /// is admitted only when committed + held + estimate fits every budget,
    /// and denied only when it does not fit some budget. A larger settlement
    /// may push spend over the limit afterwards; that spend happened.
    #[test]
    fn reservations_are_admitted_only_when_committed_plus_held_fits(
        hourly in 100u64..2_000,
        daily_factor in 1u64..4,
        ttl_s in 1u64..7_200,
        ops in prop::collection::vec(res_op(), 1..150),
    ) {
        let daily = hourly * daily_factor;
        let kinds = [(LimitKind::BudgetHourly, hourly), (LimitKind::BudgetDaily, daily)];
        let mut g = Group::one(limits(&kinds));
        let mut model = Model::default();
        let mut now = T0;
        let mut next_id = 1u64;
        for op in ops {
            match op {
                ResOp::Check { estimate } => {
                    let mut fits = true;
                    for &(kind, limit) in &kinds {
                        let used = g.used(0, kind, now);
                        let (exact, lagged) = model.bounds(kind, now);
                        prop_assert!(exact <= used && used <= lagged,
                            "{:?}: engine {} outside [{}, {}]", kind, used, exact, lagged);
                        // A zero estimate still needs one nano-dollar of room.
                        fits &= used + estimate.max(1) <= limit;
                    }
                    let expires_at = now.saturating_add(Nanos::from_secs(ttl_s));
                    let out = g.reserve(next_id, estimate, 0, expires_at, now);
                    prop_assert_eq!(out.allowed(), fits);
                    if out.allowed() {
                        for &(kind, limit) in &kinds {
                            let (exact, _) = model.bounds(kind, now);
                            prop_assert!(exact + estimate <= limit);
                            prop_assert!(g.used(0, kind, now) <= limit);
                        }
                        model.holds.push(ModelHold {
                            id: next_id,
                            estimate,
                            expires_at,
                            settled: false,
                        });
                    }
                    next_id += 1;
                }
                ResOp::Settle { pick, percent } => {
                    let open: Vec<usize> = (0..model.holds.len())
                        .filter(|&i| !model.holds[i].settled)
                        .collect();
                    if open.is_empty() {
                        continue;
                    }
                    let h = &mut model.holds[open[pick % open.len()]];
                    let actual = h.estimate * percent / 100;
                    h.settled = true;
                    let out = g.settle(h.id, actual, 0, now);
                    prop_assert!(!out.duplicate);
                    model.spent.push((now, actual));
                }
                ResOp::Jump { by_ms } => now = now.saturating_add(Nanos::from_millis(by_ms)),
            }
        }
    }
}

/// One step that builds random subject state.
#[derive(Clone, Debug)]
enum Prior {
    Check {
        cost: u64,
        tokens: u64,
        reserve: bool,
    },
    /// Records usage, settling one of the reservations when `settle` is set.
    Record {
        cost: u64,
        tokens: u64,
        settle: Option<usize>,
    },
    Acquire {
        ttl_ms: u64,
    },
    Release {
        pick: usize,
    },
    Jump {
        by_ms: u64,
    },
}

fn prior() -> impl Strategy<Value = Prior> {
    prop_oneof![
        4 => (0u64..30, 0u64..30, any::<bool>())
            .prop_map(|(cost, tokens, reserve)| Prior::Check { cost, tokens, reserve }),
        2 => (0u64..30, 0u64..30, prop::option::of(any::<usize>()))
            .prop_map(|(cost, tokens, settle)| Prior::Record { cost, tokens, settle }),
        1 => (1u64..120_000).prop_map(|ttl_ms| Prior::Acquire { ttl_ms }),
        1 => any::<usize>().prop_map(|pick| Prior::Release { pick }),
        2 => prop_oneof![0u64..2_000, 0u64..120_000, 0u64..90_000_000]
            .prop_map(|by_ms| Prior::Jump { by_ms }),
    ]
}

/// Random small limits, so that random traffic often reaches them.
fn subject_limits() -> impl Strategy<Value = SubjectLimits> {
    (
        prop::collection::vec(
            prop::option::weighted(0.4, 1u64..60),
            LimitKind::WINDOWED.len(),
        ),
        prop::option::weighted(0.3, 1u64..4),
    )
        .prop_map(|(windows, max)| {
            let mut pairs: Vec<(LimitKind, u64)> = LimitKind::WINDOWED
                .iter()
                .zip(windows)
                .filter_map(|(&k, l)| l.map(|l| (k, l)))
                .collect();
            if let Some(max) = max {
                pairs.push((LimitKind::MaxConcurrent, max));
            }
            limits(&pairs)
        })
}

/// The final check of a scenario: one or two attempts, a mode, a reservation.
#[derive(Clone, Debug)]
struct Probe {
    attempts: Vec<Attempt>,
    mode: EnforcementMode,
    reserve: bool,
    after_ms: u64,
}

/// A final check whose estimates are below `max`.
fn probe(max: u64) -> impl Strategy<Value = Probe> {
    (
        prop::collection::vec((0..max, 0..max), 1..3),
        prop_oneof![
            Just(EnforcementMode::Block),
            Just(EnforcementMode::Downgrade)
        ],
        any::<bool>(),
        0u64..3_000,
    )
        .prop_map(|(costs, mode, reserve, after_ms)| Probe {
            attempts: costs
                .into_iter()
                .enumerate()
                .map(|(i, (cost, tokens))| Attempt {
                    model: format!("model-{i}"),
                    cost: NanoUsd(cost),
                    tokens,
                    input: tokens,
                    output: tokens,
                    skip: 0,
                })
                .collect(),
            mode,
            reserve,
            after_ms,
        })
}

/// Runs random prior operations over one to three subjects and returns the
/// group, the clock and the next free id.
fn build(subjects: Vec<SubjectLimits>, ops: &[Prior]) -> (Group, Nanos, u64) {
    let mut g = Group::new(subjects);
    let mut now = T0;
    let mut next_id = 1u64;
    let mut reservations = Vec::new();
    let mut leases = Vec::new();
    let block = policy(EnforcementMode::Block);
    for op in ops {
        match *op {
            Prior::Check {
                cost,
                tokens,
                reserve,
            } => {
                let reserve = reserve.then(|| Reserve {
                    id: next_id,
                    expires_at: now.saturating_add(Nanos::from_secs(30)),
                    tag: 0,
                });
                if g.check_with(&attempt(cost, tokens), reserve, &block, now)
                    .reservation()
                    .is_some()
                {
                    reservations.push(next_id);
                }
                next_id += 1;
            }
            Prior::Record {
                cost,
                tokens,
                settle,
            } => {
                let id = settle
                    .filter(|_| !reservations.is_empty())
                    .map(|p| reservations[p % reservations.len()]);
                g.record_with(id, cost, tokens, &block, now);
            }
            Prior::Acquire { ttl_ms } => {
                let expires_at = now.saturating_add(Nanos::from_millis(ttl_ms));
                if g.acquire(next_id, expires_at, now).acquired() {
                    leases.push(next_id);
                }
                next_id += 1;
            }
            Prior::Release { pick } => {
                if !leases.is_empty() {
                    let id = leases.swap_remove(pick % leases.len());
                    g.release(id, now);
                }
            }
            Prior::Jump { by_ms } => now = now.saturating_add(Nanos::from_millis(by_ms)),
        }
    }
    (g, now, next_id)
}

fn final_check(g: &mut Group, p: &Probe, id: u64, now: Nanos) -> limits_core::CheckOutcome {
    let reserve = p.reserve.then(|| Reserve {
        id,
        expires_at: now.saturating_add(Nanos::from_secs(30)),
        tag: 0,
    });
    g.check_with(&p.attempts, reserve, &policy(p.mode), now)
}

proptest! {
    /// (e) A check that some subject denies changes no subject's state. The
    /// check expires what is due first, so the states are compared with
    /// clones expired at the same instant.
    #[test]
    fn a_denied_multi_subject_check_changes_nothing(
        subjects in prop::collection::vec(subject_limits(), 1..4),
        ops in prop::collection::vec(prior(), 0..60),
        p in probe(80),
    ) {
        let (mut g, now, id) = build(subjects, &ops);
        let now = now.saturating_add(Nanos::from_millis(p.after_ms));
        let expected = g.expired_clone(now);
        let out = final_check(&mut g, &p, id, now);
        if !out.allowed() {
            prop_assert_eq!(&g.states, &expected);
            prop_assert_eq!(out.reservation(), None);
            prop_assert!(out.denial().is_some());
            // One attempt: the overall wait is that attempt's wait.
            if p.attempts.len() == 1 {
                prop_assert_eq!(out.retry_after(), out.denial().and_then(|d| d.retry_after));
            }
        }
    }

    /// A denied check's `retry_after` is exact: with nothing else happening,
    /// the same check is still denied one nanosecond earlier and allowed at
    /// `now + retry_after`.
    #[test]
    fn retry_after_is_exact(
        subjects in prop::collection::vec(subject_limits(), 1..4),
        ops in prop::collection::vec(prior(), 0..60),
        // Small estimates, so that most denials can clear with time.
        p in probe(12),
    ) {
        let (mut g, now, id) = build(subjects, &ops);
        let now = now.saturating_add(Nanos::from_millis(p.after_ms));
        let out = final_check(&mut g, &p, id, now);
        if let Some(ra) = out.retry_after() {
            prop_assert!(!out.allowed());
            prop_assert!(ra > Nanos::ZERO);
            let mut early = g.clone();
            let just_before = now.saturating_add(ra).saturating_sub(Nanos(1));
            prop_assert!(!final_check(&mut early, &p, id, just_before).allowed());
            prop_assert!(final_check(&mut g, &p, id, now.saturating_add(ra)).allowed());
        }
    }
}
