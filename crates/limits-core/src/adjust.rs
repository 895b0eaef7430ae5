//! An operator's changes to a subject's usage: a debit or a credit of one
//! window, or emptying it. Limits do not apply: an adjustment is never
//! refused for being over a limit, and a credit never takes a window below
//! zero.

use crate::limits::{LimitKind, SubjectLimits};
use crate::state::SubjectState;
use crate::time::Nanos;

/// What an operator does to one window of a subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adjustment {
    /// Adds usage, counted from now as a charge is (it leaves the window
    /// when usage charged now would).
    Debit(u64),
    /// Takes usage away, the newest first, never more than the window holds.
    Credit(u64),
    /// Empties the window.
    Reset,
}

/// Applies `change` to the window of `kind` at `now` and returns how much
/// the window gained (a debit) or lost (a credit or a reset). A debit of a
/// kind the subject neither limits nor counts changes nothing (and returns
/// 0); so does anything on the concurrency kind, which has no window.
pub fn adjust(
    state: &mut SubjectState,
    limits: &SubjectLimits,
    kind: LimitKind,
    change: Adjustment,
    now: Nanos,
) -> u64 {
    state.expire(limits, now);
    if kind.window().is_none() {
        return 0;
    }
    let kind = limits.slot(kind);
    match change {
        Adjustment::Debit(amount) => state.add_to(kind, limits, now, amount),
        Adjustment::Credit(amount) => state.take_newest(kind, amount),
        Adjustment::Reset => state.take_newest(kind, u64::MAX),
    }
}

/// Takes back an [`adjust`] made at `at` that moved `applied` (what it
/// returned). A debit is taken back from the buckets it went to; what a
/// credit or a reset took is put back as usage of `now`, so the window
/// counts it a little longer than it would have, never shorter.
pub fn undo_adjust(
    state: &mut SubjectState,
    limits: &SubjectLimits,
    kind: LimitKind,
    change: Adjustment,
    applied: u64,
    at: Nanos,
    now: Nanos,
) {
    if applied == 0 {
        return;
    }
    let kind = limits.slot(kind);
    match change {
        Adjustment::Debit(_) => state.remove_from(kind, limits, at, now, applied),
        Adjustment::Credit(_) | Adjustment::Reset => {
            state.add_to(kind, limits, now, applied);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::*;
    use crate::limits::Resource;

    fn limits() -> SubjectLimits {
        SubjectLimits::default()
            .with(LimitKind::BudgetDaily, NonZeroU64::new(100).unwrap())
            .with(LimitKind::BudgetHourly, NonZeroU64::new(50).unwrap())
    }

    fn used(state: &SubjectState, kind: LimitKind, now: Nanos) -> u64 {
        state.used(kind, now)
    }

    #[test]
    fn a_debit_counts_and_leaves_with_its_window() {
        let l = limits();
        let mut s = SubjectState::new();
        let t0 = Nanos::from_secs(1_000_000);
        assert_eq!(
            adjust(
                &mut s,
                &l,
                LimitKind::BudgetDaily,
                Adjustment::Debit(30),
                t0
            ),
            30
        );
        assert_eq!(used(&s, LimitKind::BudgetDaily, t0), 30);
        // Only the window named.
        assert_eq!(used(&s, LimitKind::BudgetHourly, t0), 0);
        let later = t0.saturating_add(Nanos(Nanos::DAY.0 * 2));
        s.expire(&l, later);
        assert_eq!(used(&s, LimitKind::BudgetDaily, later), 0);
    }

    #[test]
    fn a_credit_takes_the_newest_usage_and_never_goes_below_zero() {
        let l = limits();
        let mut s = SubjectState::new();
        let t0 = Nanos::from_secs(1_000_000);
        s.charge(&l, Resource::Cost, t0, 40);
        let t1 = t0.saturating_add(Nanos(Nanos::HOUR.0 * 5));
        s.charge(&l, Resource::Cost, t1, 20);
        assert_eq!(used(&s, LimitKind::BudgetDaily, t1), 60);
        // The 20 charged last goes first: once the older 40 expires, nothing
        // of the credited usage comes back.
        assert_eq!(
            adjust(
                &mut s,
                &l,
                LimitKind::BudgetDaily,
                Adjustment::Credit(25),
                t1
            ),
            25
        );
        assert_eq!(used(&s, LimitKind::BudgetDaily, t1), 35);
        let t2 = t0.saturating_add(Nanos(Nanos::DAY.0 + Nanos::HOUR.0));
        s.expire(&l, t2);
        assert_eq!(used(&s, LimitKind::BudgetDaily, t2), 0);
        // More than is there: only what is there.
        let mut s = SubjectState::new();
        s.charge(&l, Resource::Cost, t0, 10);
        assert_eq!(
            adjust(
                &mut s,
                &l,
                LimitKind::BudgetDaily,
                Adjustment::Credit(1_000),
                t0
            ),
            10
        );
        assert_eq!(used(&s, LimitKind::BudgetDaily, t0), 0);
        assert_eq!(used(&s, LimitKind::BudgetHourly, t0), 10);
    }

    #[test]
    fn a_reset_empties_one_window_and_keeps_the_others() {
        let l = limits();
        let mut s = SubjectState::new();
        let t0 = Nanos::from_secs(1_000_000);
        for i in 0..50 {
            s.charge(
                &l,
                Resource::Cost,
                t0.saturating_add(Nanos::from_secs(i * 60)),
                1,
            );
        }
        let now = t0.saturating_add(Nanos::from_secs(50 * 60));
        assert_eq!(
            adjust(&mut s, &l, LimitKind::BudgetHourly, Adjustment::Reset, now),
            50
        );
        assert_eq!(used(&s, LimitKind::BudgetHourly, now), 0);
        assert_eq!(used(&s, LimitKind::BudgetDaily, now), 50);
        // And usage counts again afterwards.
        s.charge(&l, Resource::Cost, now, 7);
        assert_eq!(used(&s, LimitKind::BudgetHourly, now), 7);
        assert_eq!(used(&s, LimitKind::BudgetDaily, now), 57);
    }

    #[test]
    fn nothing_happens_to_what_has_no_window() {
        let l = limits();
        let mut s = SubjectState::new();
        let t0 = Nanos::from_secs(1_000_000);
        assert_eq!(
            adjust(
                &mut s,
                &l,
                LimitKind::TokensPerMinute,
                Adjustment::Debit(5),
                t0
            ),
            0
        );
        assert_eq!(
            adjust(
                &mut s,
                &l,
                LimitKind::MaxConcurrent,
                Adjustment::Debit(5),
                t0
            ),
            0
        );
        assert_eq!(
            adjust(
                &mut s,
                &l,
                LimitKind::BudgetDaily,
                Adjustment::Credit(5),
                t0
            ),
            0
        );
        assert!(s.is_idle());
    }

    #[test]
    fn undo_takes_back_each_kind_of_adjustment() {
        let l = limits();
        let t0 = Nanos::from_secs(1_000_000);
        let mut base = SubjectState::new();
        base.charge(&l, Resource::Cost, t0, 30);
        for change in [
            Adjustment::Debit(12),
            Adjustment::Credit(12),
            Adjustment::Reset,
        ] {
            let mut s = base.clone();
            let applied = adjust(&mut s, &l, LimitKind::BudgetDaily, change, t0);
            assert_ne!(s, base, "{change:?} changed nothing");
            let now = t0.saturating_add(Nanos::from_secs(1));
            undo_adjust(&mut s, &l, LimitKind::BudgetDaily, change, applied, t0, now);
            assert_eq!(used(&s, LimitKind::BudgetDaily, now), 30, "{change:?}");
            assert_eq!(used(&s, LimitKind::BudgetHourly, now), 30, "{change:?}");
        }
    }
}
