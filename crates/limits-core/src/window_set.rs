//! All of a subject's window counters packed into one buffer.
//!
//! A check reads every window of every subject it names (each window's
//! total and oldest bucket) and writes the request windows. With one heap
//! buffer per window that is one dependent load per window, each likely a
//! cache miss at scale; here a subject's windows are one allocation, read
//! front to back, so a check touches a few adjacent cache lines per subject
//! and the hardware prefetcher can follow.
//!
//! Layout: windows in [`STORAGE_ORDER`], each a header entry followed by its
//! buckets oldest first. A header is `(storage rank << 32 | bucket count,
//! total)`; a bucket is `(bucket index, amount)`, as in
//! [`RollingWindow`](crate::RollingWindow). Both are 16 bytes, so the buffer
//! is one `Vec` of pairs. A window's oldest bucket sits right after its
//! header, in the same or the next cache line.

use crate::limits::{LimitKind, SubjectLimits, WINDOW_KINDS};
use crate::time::Nanos;
use crate::window::{Span, WindowRef};

type Entry = (u64, u64);

/// The order windows are stored in: the kinds of one resource together (so
/// that charging a resource is one forward walk), and the windows that gain
/// and lose buckets most often — the shortest, and the request windows that
/// every check writes — last, so that few entries move when they change.
pub(crate) const STORAGE_ORDER: [LimitKind; WINDOW_KINDS] = [
    LimitKind::BudgetMonthly,
    LimitKind::BudgetDaily,
    LimitKind::BudgetHourly,
    LimitKind::TokensPerHour,
    LimitKind::TokensPerMinute,
    LimitKind::RequestsPerHour,
    LimitKind::RequestsPerMinute,
    LimitKind::RequestsPerSecond,
];

/// A kind's place in [`STORAGE_ORDER`].
pub(crate) const fn rank(kind: LimitKind) -> usize {
    match kind {
        LimitKind::BudgetMonthly => 0,
        LimitKind::BudgetDaily => 1,
        LimitKind::BudgetHourly => 2,
        LimitKind::TokensPerHour => 3,
        LimitKind::TokensPerMinute => 4,
        LimitKind::RequestsPerHour => 5,
        LimitKind::RequestsPerMinute => 6,
        LimitKind::RequestsPerSecond => 7,
        LimitKind::MaxConcurrent => WINDOW_KINDS,
    }
}

/// Each rank's window length and bucket width, so that walking the buffer
/// does not divide.
const SPANS: [Span; WINDOW_KINDS] = {
    let mut out = [Span::of(Nanos::SECOND); WINDOW_KINDS];
    let mut i = 0;
    while i < WINDOW_KINDS {
        out[i] = match STORAGE_ORDER[i].window() {
            Some(length) => Span::of(length),
            None => panic!("every stored kind is windowed"),
        };
        i += 1;
    }
    out
};

/// Buffers are sized in multiples of this many entries (128 bytes), so that
/// the allocator sees few distinct sizes and a buffer freed when one subject
/// grows fits the next subject that grows to it: with sizes that vary by an
/// entry, resident memory was 45 % above the bytes in use.
const GRAIN: usize = 8;

const fn capacity_for(entries: usize) -> usize {
    entries.div_ceil(GRAIN) * GRAIN
}

const fn header(kind: LimitKind, len: usize, total: u64) -> Entry {
    ((rank(kind) as u64) << 32 | len as u64, total)
}

/// The storage rank and bucket count of a header entry. The rank is masked
/// to the table size (a no-op for a header this module wrote), so that the
/// tables indexed by it need no bounds check on the check path.
#[inline(always)]
fn parse(entry: Entry) -> (usize, usize) {
    const _: () = assert!(WINDOW_KINDS.is_power_of_two());
    (
        (entry.0 >> 32) as usize & (WINDOW_KINDS - 1),
        (entry.0 & u64::from(u32::MAX)) as usize,
    )
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct WindowSet {
    buf: Vec<Entry>,
}

/// Iterates the windows of a [`WindowSet`] in storage order.
#[derive(Clone, Debug)]
pub struct Windows<'a> {
    rest: &'a [Entry],
}

impl<'a> Iterator for Windows<'a> {
    type Item = (LimitKind, WindowRef<'a>);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let (&head, after) = self.rest.split_first()?;
        let (rank, len) = parse(head);
        let (buckets, rest) = after.split_at(len);
        self.rest = rest;
        Some((STORAGE_ORDER[rank], WindowRef::new(buckets, head.1)))
    }
}

impl WindowSet {
    /// Builds a set from windows given as bucket lists (oldest first, any
    /// order of kinds, later duplicates ignored), e.g. decoded from a store.
    pub(crate) fn from_windows<'b>(
        windows: impl IntoIterator<Item = (LimitKind, &'b [(u64, u64)])>,
    ) -> WindowSet {
        let mut by_rank: [Option<&[(u64, u64)]>; WINDOW_KINDS] = [None; WINDOW_KINDS];
        for (kind, buckets) in windows {
            if kind.window().is_some() && by_rank[rank(kind)].is_none() {
                by_rank[rank(kind)] = Some(buckets);
            }
        }
        let len = by_rank.iter().flatten().map(|b| 1 + b.len()).sum();
        let mut buf = Vec::with_capacity(capacity_for(len));
        for (kind, buckets) in STORAGE_ORDER.into_iter().zip(by_rank) {
            let Some(buckets) = buckets else { continue };
            let total = buckets
                .iter()
                .fold(0u64, |acc, &(_, a)| acc.saturating_add(a));
            buf.push(header(kind, buckets.len(), total));
            buf.extend_from_slice(buckets);
        }
        WindowSet { buf }
    }

    pub(crate) fn iter(&self) -> Windows<'_> {
        Windows { rest: &self.buf }
    }

    pub(crate) fn get(&self, kind: LimitKind) -> Option<WindowRef<'_>> {
        self.iter().find(|(k, _)| *k == kind).map(|(_, w)| w)
    }

    /// The windows indexed by kind, found in one walk.
    #[inline]
    pub(crate) fn by_kind(&self) -> [Option<WindowRef<'_>>; WINDOW_KINDS] {
        let mut out = [None; WINDOW_KINDS];
        let mut pos = 0;
        while let Some(&head) = self.buf.get(pos) {
            let (rank, len) = parse(head);
            let Some(buckets) = self.buf.get(pos + 1..pos + 1 + len) else {
                break;
            };
            out[STORAGE_ORDER[rank].index()] = Some(WindowRef::new(buckets, head.1));
            pos += 1 + len;
        }
        out
    }

    /// Whether every window is empty (or there are none).
    pub(crate) fn is_idle(&self) -> bool {
        self.iter().all(|(_, w)| w.is_empty())
    }

    /// Drops the buckets that have expired at `now`, and the windows left
    /// empty that are no longer limited. One pass; entries move only after
    /// the first change, and the usual call (nothing expired) writes nothing.
    #[inline]
    pub(crate) fn expire(&mut self, limits: &SubjectLimits, now: Nanos) {
        let n = self.buf.len();
        let mut r = 0;
        while r < n {
            let (rank, len) = parse(self.buf[r]);
            let gone = SPANS[rank].expired_count(&self.buf[r + 1..r + 1 + len], now);
            if gone > 0 || (len == 0 && limits.get(STORAGE_ORDER[rank]).is_none()) {
                self.compact_from(r, limits, now);
                return;
            }
            r += 1 + len;
        }
    }

    /// [`expire`](Self::expire) from the first window that changes.
    #[inline(never)]
    fn compact_from(&mut self, start: usize, limits: &SubjectLimits, now: Nanos) {
        let n = self.buf.len();
        let (mut r, mut w) = (start, start);
        while r < n {
            let (rank, len) = parse(self.buf[r]);
            let kind = STORAGE_ORDER[rank];
            let buckets = r + 1..r + 1 + len;
            let gone = SPANS[rank].expired_count(&self.buf[buckets.clone()], now);
            let keep = len - gone;
            if keep == 0 && limits.get(kind).is_none() {
                r = buckets.end;
                continue;
            }
            let total = if keep == 0 {
                // Saturation can leave a remainder; an empty window is zero.
                0
            } else {
                self.buf[r + 1..r + 1 + gone]
                    .iter()
                    .fold(self.buf[r].1, |t, &(_, a)| t.saturating_sub(a))
            };
            self.buf[w] = header(kind, keep, total);
            if w != r || gone > 0 {
                self.buf.copy_within(r + 1 + gone..buckets.end, w + 1);
            }
            w += 1 + keep;
            r = buckets.end;
        }
        self.buf.truncate(w);
        // Give back what a burst left, keeping some room so that a subject
        // whose windows empty and refill does not reallocate each time.
        let len = self.buf.len();
        if self.buf.capacity() - len > len.max(GRAIN) {
            self.buf.shrink_to(capacity_for(len + len / 4));
        }
    }

    /// Where the window of `kind`, or of the first kind after it in
    /// [`STORAGE_ORDER`], is.
    #[inline(always)]
    pub(crate) fn position_from(&self, kind: LimitKind) -> usize {
        let mut pos = 0;
        while let Some(&entry) = self.buf.get(pos) {
            let (r, len) = parse(entry);
            if r >= rank(kind) {
                break;
            }
            pos += 1 + len;
        }
        pos
    }

    /// Adds `amount` to the window of `kind`, with `pos` at that window or
    /// where it would go, and moves `pos` past it. A window is created only
    /// for a limited kind. The kinds of one resource are consecutive in
    /// [`STORAGE_ORDER`], so one forward walk, in that order, serves all.
    #[inline(always)]
    pub(crate) fn add(
        &mut self,
        pos: &mut usize,
        kind: LimitKind,
        limits: &SubjectLimits,
        now: Nanos,
        amount: u64,
    ) {
        let span = SPANS[rank(kind)];
        match self.buf.get(*pos).copied().map(parse) {
            Some((r, len)) if r == rank(kind) => {
                let newest = *pos + len;
                let len = if len > 0 && span.lands_in(self.buf[newest].0, now) {
                    let a = &mut self.buf[newest].1;
                    *a = a.saturating_add(amount);
                    len
                } else {
                    self.insert(newest + 1, (span.bucket_at(now), amount));
                    len + 1
                };
                let total = self.buf[*pos].1.saturating_add(amount);
                self.buf[*pos] = header(kind, len, total);
                *pos += 1 + len;
            }
            _ if limits.get(kind).is_some() => {
                // Once per kind in a subject's life.
                self.insert(*pos, (span.bucket_at(now), amount));
                self.insert(*pos, header(kind, 1, amount));
                *pos += 2;
            }
            _ => {}
        }
    }

    /// Inserts an entry at `at`, growing the buffer by an eighth or a grain (not
    /// doubling) when full, so that a large subject's slack stays small.
    #[inline(always)]
    fn insert(&mut self, at: usize, entry: Entry) {
        let len = self.buf.len();
        if self.buf.capacity() == len {
            self.buf
                .reserve_exact(capacity_for(len + len / 8 + 1) - len);
        }
        self.buf.insert(at, entry);
    }

    /// Heap bytes held, for memory accounting.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.buf.capacity() * std::mem::size_of::<Entry>()
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::*;
    use crate::RollingWindow;
    use proptest::prelude::*;

    const T: Nanos = Nanos(280_000 * 3_600 * 1_000_000_000);

    fn limited(kinds: &[LimitKind]) -> SubjectLimits {
        kinds.iter().fold(SubjectLimits::default(), |l, &k| {
            l.with(k, NonZeroU64::new(u64::MAX).unwrap())
        })
    }

    proptest! {
        /// The packed set behaves as one `RollingWindow` per kind, for any
        /// sequence of adds and expiries over any kinds, including windows
        /// that stop being limited.
        #[test]
        fn agrees_with_one_rolling_window_per_kind(
            ops in proptest::collection::vec(
                (0usize..WINDOW_KINDS, 0u64..5_000, 0u64..1_000, any::<bool>(), any::<bool>()),
                1..200,
            ),
        ) {
            let mut set = WindowSet::default();
            let mut model: [Option<RollingWindow>; WINDOW_KINDS] = Default::default();
            let mut now = T;
            let mut unlimited = [false; WINDOW_KINDS];
            for (k, gap_ms, amount, expire, drop_limit) in ops {
                now = now.saturating_add(Nanos::from_millis(gap_ms * 7));
                if drop_limit {
                    unlimited[k] = !unlimited[k];
                }
                let kinds: Vec<_> = LimitKind::WINDOWED
                    .into_iter()
                    .filter(|k| !unlimited[k.index()])
                    .collect();
                let limits = limited(&kinds);
                let kind = LimitKind::WINDOWED[k];
                let length = kind.window().unwrap();
                if expire {
                    set.expire(&limits, now);
                    for kind in LimitKind::WINDOWED {
                        let slot = &mut model[kind.index()];
                        if let Some(w) = slot {
                            w.expire(kind.window().unwrap(), now);
                            if w.is_empty() && limits.get(kind).is_none() {
                                *slot = None;
                            }
                        }
                    }
                } else if amount > 0 {
                    let mut pos = set.position_from(kind);
                    set.add(&mut pos, kind, &limits, now, amount);
                    let slot = &mut model[k];
                    if slot.is_none() && limits.get(kind).is_some() {
                        *slot = Some(RollingWindow::new());
                    }
                    if let Some(w) = slot {
                        w.add(length, now, amount);
                    }
                }
                let got: Vec<_> = set
                    .iter()
                    .map(|(k, w)| (k, w.buckets().to_vec(), w.total()))
                    .collect();
                let want: Vec<_> = STORAGE_ORDER
                    .into_iter()
                    .filter_map(|k| {
                        let w = model[k.index()].as_ref()?;
                        Some((k, w.buckets().to_vec(), w.total()))
                    })
                    .collect();
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn storage_order_and_rank_agree_and_keep_resources_together() {
        for (i, kind) in STORAGE_ORDER.into_iter().enumerate() {
            assert_eq!(rank(kind), i);
        }
        let mut seen = STORAGE_ORDER.map(|k| k.index());
        seen.sort_unstable();
        assert_eq!(seen, std::array::from_fn(|i| i), "every kind once");
        let resources = STORAGE_ORDER.map(|k| k.resource());
        for (i, r) in resources.iter().enumerate() {
            // A resource seen before must have been seen just before.
            let earlier = resources[..i].iter().position(|x| x == r);
            assert!(earlier.is_none_or(|_| resources[i - 1] == *r));
        }
    }

    #[test]
    fn from_windows_orders_kinds_and_keeps_the_first_duplicate() {
        let set = WindowSet::from_windows([
            (LimitKind::TokensPerHour, &[(1, 1)][..]),
            (LimitKind::BudgetHourly, &[(1, 2), (2, 3)][..]),
            (LimitKind::TokensPerHour, &[(1, 9)][..]),
            (LimitKind::MaxConcurrent, &[(1, 9)][..]),
        ]);
        let got: Vec<_> = set.iter().map(|(k, w)| (k, w.total())).collect();
        assert_eq!(
            got,
            [(LimitKind::BudgetHourly, 5), (LimitKind::TokensPerHour, 1)]
        );
        assert!(rank(LimitKind::BudgetHourly) < rank(LimitKind::TokensPerHour));
        assert_eq!(set.buf.len(), 5);
    }

    #[test]
    fn a_burst_is_given_back_when_it_expires() {
        let limits = limited(&[LimitKind::RequestsPerMinute]);
        let mut set = WindowSet::default();
        for i in 0..60 {
            let mut pos = set.position_from(LimitKind::RequestsPerMinute);
            let t = T.saturating_add(Nanos::from_secs(i));
            set.add(&mut pos, LimitKind::RequestsPerMinute, &limits, t, 1);
        }
        assert!(set.heap_bytes() >= 61 * 16);
        set.expire(&limits, T.saturating_add(Nanos::HOUR));
        assert!(set.is_idle());
        assert!(set.heap_bytes() <= 16 * 16, "{}", set.heap_bytes());
    }
}
