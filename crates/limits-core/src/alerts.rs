//! Budget alerts: thresholds, and the crossings a decision makes.
//!
//! A budget window *crosses* a threshold when what it holds (spend and open
//! holds) reaches `threshold × limit`. Each crossing is reported once, by
//! the operation that made it, because the subject's state remembers which
//! thresholds of which window have fired ([`Fired`]), and the state is
//! changed atomically with the decision on every store (on Redis, by the
//! one replica whose write wins). A threshold fires again:
//! - for a calendar budget, in the next period (one alert per period);
//! - for a rolling budget, once the window has fallen below 90 % of the
//!   threshold's level and reaches it again: spend ageing out re-arms it,
//!   a budget hovering at the threshold does not alert on every request.

use std::sync::Arc;

use crate::engine::skips;
use crate::limits::{LimitKind, LimitStatus, SubjectLimits};
use crate::state::SubjectState;
use crate::time::Nanos;

/// The most thresholds one budget may have.
pub const MAX_THRESHOLDS: usize = 8;

/// A rolling budget's threshold re-arms below this share of its level, in
/// parts per million.
pub const REARM_PPM: u64 = 900_000;

/// Alert thresholds: fractions of a budget, in parts per million,
/// ascending and distinct, at most [`MAX_THRESHOLDS`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Thresholds(Option<Arc<[u32]>>);

impl Thresholds {
    /// No thresholds.
    pub const NONE: Thresholds = Thresholds(None);

    /// The thresholds from fractions in parts per million (1 to
    /// 1 000 000): sorted, duplicates dropped. `None` when there are more
    /// than [`MAX_THRESHOLDS`] or one is out of range.
    pub fn new(ppm: impl IntoIterator<Item = u32>) -> Option<Thresholds> {
        let mut v: Vec<u32> = ppm.into_iter().collect();
        if v.iter().any(|&p| p == 0 || p > 1_000_000) {
            return None;
        }
        v.sort_unstable();
        v.dedup();
        if v.len() > MAX_THRESHOLDS {
            return None;
        }
        Some(Thresholds((!v.is_empty()).then(|| Arc::from(v))))
    }

    /// The thresholds, ascending.
    pub fn as_slice(&self) -> &[u32] {
        self.0.as_deref().unwrap_or(&[])
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The lowest threshold, if any.
    pub fn lowest(&self) -> Option<u32> {
        self.as_slice().first().copied()
    }
}

/// Which thresholds of one budget window have fired, kept in the subject's
/// state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fired {
    /// The window (a budget kind, or a calendar slot).
    pub slot: LimitKind,
    /// Bit `i`: the `i`-th threshold (ascending) has fired.
    pub bits: u8,
    /// For a calendar slot, the period the bits are of (its last
    /// nanosecond); 0 for a rolling window.
    pub period: u64,
}

/// One threshold crossed by an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crossing {
    /// Index of the subject in the operation.
    pub subject: usize,
    /// The budget window (a calendar slot for a budget on a calendar).
    pub kind: LimitKind,
    /// The threshold crossed, in parts per million.
    pub threshold_ppm: u32,
    /// What the window holds now, nano-dollars.
    pub used: u64,
    /// The budget, nano-dollars.
    pub limit: u64,
    /// For a calendar budget, the period's last nanosecond; 0 when rolling.
    pub period: u64,
}

/// Notes the thresholds the budget statuses of an operation have crossed,
/// and re-arms those a rolling window has fallen away from. `statuses` are
/// the operation's, after it; each subject's own thresholds, else
/// `default`, apply. Subjects in `skip` are left alone.
pub(crate) fn crossings(
    states: &mut [&mut SubjectState],
    limits: &[&SubjectLimits],
    default: &Thresholds,
    statuses: &[LimitStatus],
    skip: u16,
    now: Nanos,
) -> Vec<Crossing> {
    let mut out = Vec::new();
    if default.is_empty() && limits.iter().all(|l| l.alert_thresholds().is_none()) {
        return out;
    }
    for (i, (state, lim)) in states.iter_mut().zip(limits).enumerate() {
        if skips(skip, i) {
            continue;
        }
        let thresholds = lim.alert_thresholds().unwrap_or(default).as_slice();
        if thresholds.is_empty() {
            continue;
        }
        for s in statuses
            .iter()
            .filter(|s| s.subject == i && s.kind.is_budget())
        {
            let period = if s.kind.period().is_some() {
                lim.calendar_bucket(s.kind, now).unwrap_or(0)
            } else {
                0
            };
            let fired = state.fired_mut(s.kind);
            if fired.period != period {
                *fired = Fired {
                    slot: s.kind,
                    bits: 0,
                    period,
                };
            }
            for (t, &ppm) in thresholds.iter().enumerate() {
                let level = u128::from(s.limit) * u128::from(ppm);
                let used = u128::from(s.used) * 1_000_000;
                let bit = 1u8 << t;
                if used >= level {
                    if fired.bits & bit == 0 {
                        fired.bits |= bit;
                        out.push(Crossing {
                            subject: i,
                            kind: s.kind,
                            threshold_ppm: ppm,
                            used: s.used,
                            limit: s.limit,
                            period,
                        });
                    }
                } else if period == 0 && used * 1_000_000 < level * u128::from(REARM_PPM) {
                    fired.bits &= !bit;
                }
            }
            state.prune_fired();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::*;
    use crate::enforcement::{Attempt, Policy};
    use crate::engine::{CheckRequest, RecordRequest, check, record};
    use crate::money::NanoUsd;

    const T: Nanos = Nanos(1_750_000_000 * 1_000_000_000);

    fn policy(ppm: &[u32]) -> Policy {
        Policy {
            alert_thresholds: Thresholds::new(ppm.iter().copied()).unwrap(),
            ..Policy::default()
        }
    }

    fn spend(
        state: &mut SubjectState,
        limits: &SubjectLimits,
        p: &Policy,
        usd: u64,
        now: Nanos,
    ) -> Vec<Crossing> {
        let attempts = [Attempt {
            model: "m".into(),
            ..Attempt::default()
        }];
        let req = CheckRequest {
            attempts: &attempts,
            reserve: None,
            policy: p,
        };
        let checked = check(&mut [state], &[limits], &req, now);
        assert!(checked.allowed());
        let rec = RecordRequest {
            cost: NanoUsd(usd),
            ..RecordRequest::default()
        };
        let recorded = record(&mut [state], &[limits], &rec, p, now);
        let mut all = checked.crossings;
        all.extend(recorded.crossings);
        all
    }

    #[test]
    fn each_threshold_fires_once_then_re_arms_below_ninety_percent() {
        let limits =
            SubjectLimits::default().with(LimitKind::BudgetHourly, NonZeroU64::new(100).unwrap());
        let p = policy(&[500_000, 800_000]);
        let mut s = SubjectState::new();
        assert!(spend(&mut s, &limits, &p, 40, T).is_empty());
        let c = spend(&mut s, &limits, &p, 45, T);
        assert_eq!(
            c.iter().map(|c| c.threshold_ppm).collect::<Vec<_>>(),
            [500_000, 800_000]
        );
        assert_eq!((c[1].used, c[1].limit), (85, 100));
        // Hovering above: nothing more.
        assert!(spend(&mut s, &limits, &p, 1, T).is_empty());
        // An hour later the spend has aged out: the next spend re-arms
        // both (0 is below 90 % of each level), and crossing 50 % fires it
        // again.
        let later = T.saturating_add(Nanos::from_secs(3_700));
        assert!(spend(&mut s, &limits, &p, 10, later).is_empty());
        let again = spend(&mut s, &limits, &p, 45, later);
        assert_eq!(
            again.iter().map(|c| c.threshold_ppm).collect::<Vec<_>>(),
            [500_000]
        );
    }

    #[test]
    fn thresholds_are_sorted_bounded_and_in_range() {
        assert_eq!(
            Thresholds::new([800_000, 500_000, 800_000])
                .unwrap()
                .as_slice(),
            [500_000, 800_000]
        );
        assert!(Thresholds::new([0]).is_none());
        assert!(Thresholds::new([1_000_001]).is_none());
        assert!(Thresholds::new(1..=9).is_none());
        assert!(Thresholds::new([]).unwrap().is_empty());
    }
}
