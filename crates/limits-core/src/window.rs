//! The one windowed-counter primitive: a rolling window of sub-buckets with
//! integer sums, used for budgets, request rates and token rates alike.
//!
//! Time is cut into buckets of `length / BUCKETS`. An amount added at `t`
//! lands in the bucket containing `t` and leaves the window when that bucket
//! ends plus `length` — never before `t + length`, at most one bucket after.
//! This makes the counter conservative: no span of `length` ever admits more
//! than the limit, at the price of expiry lagging by at most `length / 60`.
//!
//! Only non-empty buckets are stored (oldest first), so an idle or sparse
//! subject costs a few bytes, and the running total makes a read O(1) after
//! the expired buckets have been dropped.

use crate::time::Nanos;

/// Sub-buckets per window: expiry lags by at most `length / BUCKETS`.
pub const BUCKETS: u64 = 60;

/// A rolling-window sum. The window's length is not stored: it is a property
/// of the limit kind, passed to each call, so state stays small.
///
/// This is the window on its own; a [`SubjectState`](crate::SubjectState)
/// keeps all of a subject's windows packed in one buffer and lends them out
/// as [`WindowRef`]s. Both share the bucket arithmetic below.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RollingWindow {
    /// Non-empty buckets, oldest first: `(bucket index, amount)`.
    buckets: Vec<(u64, u64)>,
    /// The sum of `buckets`, saturating.
    total: u64,
}

/// A read-only view of one window: its buckets (oldest first) and their sum.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct WindowRef<'a> {
    buckets: &'a [(u64, u64)],
    total: u64,
}

/// Bucket slots an emptied window keeps allocated (the smallest allocation
/// a `Vec` of buckets makes when it first grows).
const KEEP_WHEN_EMPTY: usize = 4;

/// A window's length and its bucket width, in nanoseconds. Computing the
/// width divides; callers that know the kind at compile time, or look it up
/// in a table, avoid the division.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    length: u64,
    width: u64,
}

impl Span {
    pub(crate) const fn of(length: Nanos) -> Span {
        let w = length.0 / BUCKETS;
        Span {
            length: length.0,
            width: if w == 0 { 1 } else { w },
        }
    }

    /// When the amounts of bucket `index` leave the window.
    #[inline(always)]
    pub(crate) fn expiry(self, index: u64) -> Nanos {
        Nanos(
            index
                .saturating_add(1)
                .saturating_mul(self.width)
                .saturating_add(self.length),
        )
    }

    /// How many of `buckets` (oldest first) have expired at `now`. Most
    /// calls find nothing expired: the oldest bucket is tested inline in the
    /// caller, the scan is out of line.
    #[inline(always)]
    pub(crate) fn expired_count(self, buckets: &[(u64, u64)], now: Nanos) -> usize {
        match buckets.first() {
            Some(&(i, _)) if self.expiry(i) <= now => self.expired_count_from_oldest(buckets, now),
            _ => 0,
        }
    }

    #[inline(never)]
    fn expired_count_from_oldest(self, buckets: &[(u64, u64)], now: Nanos) -> usize {
        1 + buckets[1..]
            .iter()
            .take_while(|&&(i, _)| self.expiry(i) <= now)
            .count()
    }

    /// Whether an amount added at `now` lands in the bucket `last` (the
    /// newest): `now` is before that bucket's end. Comparing with the
    /// bucket's end avoids dividing by the width on every add, which showed
    /// in profiles of check. A `now` older than the newest bucket (clocks are
    /// read before locks are taken, so callers may arrive slightly out of
    /// order) lands there too, which expires later: still conservative.
    #[inline(always)]
    pub(crate) fn lands_in(self, last: u64, now: Nanos) -> bool {
        last.checked_add(1)
            .and_then(|n| n.checked_mul(self.width))
            .is_none_or(|end| now.0 < end)
    }

    /// The index of the bucket that contains `now`.
    #[inline(always)]
    pub(crate) fn bucket_at(self, now: Nanos) -> u64 {
        now.0 / self.width
    }
}

impl<'a> WindowRef<'a> {
    pub(crate) const fn new(buckets: &'a [(u64, u64)], total: u64) -> WindowRef<'a> {
        WindowRef { buckets, total }
    }

    /// The stored buckets, oldest first, for persistence and inspection.
    pub fn buckets(&self) -> &'a [(u64, u64)] {
        self.buckets
    }

    /// The sum of the live amounts (as of the last expiry).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether the window holds no buckets.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// When the oldest live amount expires, or `None` for an empty window.
    pub fn reset_at(&self, length: Nanos) -> Option<Nanos> {
        self.buckets
            .first()
            .map(|&(i, _)| Span::of(length).expiry(i))
    }

    /// How long from `now` until at least `need` has expired from the window,
    /// or `None` if the window does not hold that much.
    pub fn time_until_freed(&self, length: Nanos, now: Nanos, need: u64) -> Option<Nanos> {
        if need == 0 {
            return Some(Nanos::ZERO);
        }
        let mut freed = 0u64;
        for &(i, a) in self.buckets {
            freed = freed.saturating_add(a);
            if freed >= need {
                return Some(Span::of(length).expiry(i).saturating_sub(now));
            }
        }
        None
    }

    /// Iterates `(expiry instant, amount)` oldest first, for callers that merge
    /// window expiries with other events.
    pub fn expiries(&self, length: Nanos) -> impl Iterator<Item = (Nanos, u64)> + 'a {
        self.buckets
            .iter()
            .map(move |&(i, a)| (Span::of(length).expiry(i), a))
    }
}

impl RollingWindow {
    /// An empty window.
    pub const fn new() -> RollingWindow {
        RollingWindow {
            buckets: Vec::new(),
            total: 0,
        }
    }

    /// Rebuilds a window from its buckets (oldest first), e.g. when a store
    /// decodes persisted state.
    pub fn from_buckets(buckets: Vec<(u64, u64)>) -> RollingWindow {
        let total = buckets
            .iter()
            .fold(0u64, |acc, &(_, a)| acc.saturating_add(a));
        RollingWindow { buckets, total }
    }

    /// This window as a view.
    pub fn view(&self) -> WindowRef<'_> {
        WindowRef::new(&self.buckets, self.total)
    }

    /// The stored buckets, oldest first, for persistence and inspection.
    pub fn buckets(&self) -> &[(u64, u64)] {
        &self.buckets
    }

    /// Drops the buckets that have expired at `now`.
    #[inline]
    pub fn expire(&mut self, length: Nanos, now: Nanos) {
        let gone = Span::of(length).expired_count(&self.buckets, now);
        if gone == 0 {
            return;
        }
        for &(_, a) in &self.buckets[..gone] {
            self.total = self.total.saturating_sub(a);
        }
        self.buckets.drain(..gone);
        if self.buckets.is_empty() {
            // Saturation can leave a remainder; an empty window is zero.
            self.total = 0;
            // A short window emptying and refilling keeps one small
            // allocation; a larger one, left by a burst, is given back.
            self.buckets.shrink_to(KEEP_WHEN_EMPTY);
        }
    }

    /// The sum of the live amounts. Call [`expire`](Self::expire) first.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether the window holds no buckets.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Adds `amount` at `now`. An arrival older than the newest bucket lands
    /// in the newest bucket (see `Span::lands_in`).
    pub fn add(&mut self, length: Nanos, now: Nanos, amount: u64) {
        if amount == 0 {
            return;
        }
        let span = Span::of(length);
        match self.buckets.last_mut() {
            Some((last, a)) if span.lands_in(*last, now) => *a = a.saturating_add(amount),
            _ => self.buckets.push((span.bucket_at(now), amount)),
        }
        self.total = self.total.saturating_add(amount);
    }

    /// When the oldest live amount expires, or `None` for an empty window.
    pub fn reset_at(&self, length: Nanos) -> Option<Nanos> {
        self.view().reset_at(length)
    }

    /// How long from `now` until at least `need` has expired from the window,
    /// or `None` if the window does not hold that much.
    pub fn time_until_freed(&self, length: Nanos, now: Nanos, need: u64) -> Option<Nanos> {
        self.view().time_until_freed(length, now, need)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: Nanos = Nanos::MINUTE;

    #[test]
    fn sums_and_expires() {
        let mut w = RollingWindow::new();
        let t0 = Nanos::from_secs(1_000_000);
        w.add(MIN, t0, 5);
        w.add(MIN, t0.saturating_add(Nanos::from_secs(30)), 7);
        w.expire(MIN, t0.saturating_add(Nanos::from_secs(59)));
        assert_eq!(w.total(), 12);
        // The first amount is gone at most one bucket (1 s) after t0 + 60 s.
        w.expire(MIN, t0.saturating_add(Nanos::from_secs(61)));
        assert_eq!(w.total(), 7);
        w.expire(MIN, t0.saturating_add(Nanos::from_secs(91)));
        assert_eq!(w.total(), 0);
        assert!(w.is_empty());
    }

    #[test]
    fn reset_and_time_until_freed() {
        let mut w = RollingWindow::new();
        let t0 = Nanos::from_secs(1_000_000); // on a bucket boundary
        w.add(MIN, t0, 3);
        w.add(MIN, t0.saturating_add(Nanos::from_secs(10)), 4);
        let now = t0.saturating_add(Nanos::from_secs(20));
        assert_eq!(
            w.reset_at(MIN),
            Some(t0.saturating_add(Nanos::from_secs(61)))
        );
        assert_eq!(w.time_until_freed(MIN, now, 3), Some(Nanos::from_secs(41)));
        assert_eq!(w.time_until_freed(MIN, now, 4), Some(Nanos::from_secs(51)));
        assert_eq!(w.time_until_freed(MIN, now, 8), None);
        assert_eq!(w.time_until_freed(MIN, now, 0), Some(Nanos::ZERO));
    }

    #[test]
    fn late_arrivals_land_in_the_newest_bucket() {
        let mut w = RollingWindow::new();
        let t0 = Nanos::from_secs(1_000_000);
        w.add(MIN, t0.saturating_add(Nanos::from_secs(5)), 1);
        w.add(MIN, t0, 1);
        assert_eq!(w.buckets().len(), 1);
        assert_eq!(w.total(), 2);
    }

    proptest! {
        /// An amount leaves its window no earlier than `length` and no later
        /// than `length + length / BUCKETS` after it was added.
        #[test]
        fn expiry_is_conservative_and_bounded(
            start in 0u64..1_000_000_000_000_000,
            length_ms in 1u64..100_000_000,
            probe in 0u64..1_000_000,
        ) {
            let length = Nanos::from_millis(length_ms);
            let mut w = RollingWindow::new();
            w.add(length, Nanos(start), 1);
            // Still present at any instant strictly before start + length.
            let before = start + (probe % length.0);
            let mut a = w.clone();
            a.expire(length, Nanos(before));
            prop_assert_eq!(a.total(), 1);
            // Gone at start + length + length / BUCKETS.
            let mut b = w.clone();
            b.expire(length, Nanos(start + length.0 + length.0 / BUCKETS + 1));
            prop_assert_eq!(b.total(), 0);
        }

        /// For random arrival sequences of random amounts admitted by
        /// "total + amount <= limit", no span of `length` ever holds more than
        /// the limit.
        #[test]
        fn no_window_admits_more_than_the_limit(
            limit in 1u64..100,
            arrivals in proptest::collection::vec((0u64..3_000, 1u64..40), 1..300),
        ) {
            let length = Nanos::from_millis(1_000);
            let mut w = RollingWindow::new();
            let mut now = Nanos::from_secs(1_000);
            let mut admitted: Vec<(u64, u64)> = Vec::new();
            for (gap_ms, amount) in arrivals {
                now = now.saturating_add(Nanos::from_millis(gap_ms % 300));
                w.expire(length, now);
                if w.total() + amount <= limit {
                    w.add(length, now, amount);
                    admitted.push((now.0, amount));
                }
            }
            // Every span [t, t + length) starting at an admission holds at most
            // the limit (a span's maximum is reached starting at an admission).
            for (i, &(t, _)) in admitted.iter().enumerate() {
                let sum: u64 = admitted[i..]
                    .iter()
                    .take_while(|&&(u, _)| u < t + length.0)
                    .map(|&(_, a)| a)
                    .sum();
                prop_assert!(sum <= limit, "span at {} holds {} > {}", t, sum, limit);
            }
        }
    }
}
