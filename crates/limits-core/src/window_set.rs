//! All of a subject's window counters packed into one buffer.
//!
//! A check reads every window of every subject it names (each window's
//! total and oldest bucket) and writes the request windows. With one heap
//! buffer per window that is one dependent load per window, each likely a
//! cache miss at scale; here a subject's windows are one allocation whose
//! headers sit together at its front, so every window is found without
//! walking the others and the loads of a check do not wait on each other.
//!
//! Layout: one header per window, in [`STORAGE_ORDER`], then the windows'
//! buckets, oldest first, in the same order. A header is `(meta, total)`,
//! where `meta` packs the window's rank (its place in the storage order),
//! which ranks have a window, and where the window's buckets are; a bucket
//! is `(bucket index, amount)`, as in [`RollingWindow`](crate::RollingWindow).
//! Both are 16 bytes, so the buffer is one `Vec` of pairs. Since headers are
//! in rank order, the header of a kind is the number of ranks below its own
//! that have a window: the first header's mask says where every window is.
//!
//! Expiry only moves a window's start past the buckets that left it: the
//! usual check (buckets leaving the short windows, others arriving) moves
//! no memory. The slots left behind are the room the window before grows
//! into; when a window finds no room after it, the buffer is compacted and
//! the windows after it shift up by half the free capacity.

use std::borrow::Cow;

use crate::limits::{LimitKind, SLOTS, SubjectLimits};
use crate::time::Nanos;
use crate::window::{Span, WindowRef};

type Entry = (u64, u64);

/// The order windows are stored in: the kinds of one resource together (so
/// that charging a resource is one forward walk), and the windows that gain
/// buckets most often — the shortest, and the request windows that every
/// check writes — last, where the buffer's spare capacity is. A calendar
/// slot sits before its rolling budget: a subject has one or the other.
pub(crate) const STORAGE_ORDER: [LimitKind; SLOTS] = [
    LimitKind::CalendarMonthly,
    LimitKind::BudgetMonthly,
    LimitKind::CalendarWeekly,
    LimitKind::BudgetWeekly,
    LimitKind::CalendarDaily,
    LimitKind::BudgetDaily,
    LimitKind::BudgetHourly,
    LimitKind::OutputTokensPerHour,
    LimitKind::OutputTokensPerMinute,
    LimitKind::InputTokensPerHour,
    LimitKind::InputTokensPerMinute,
    LimitKind::TokensPerHour,
    LimitKind::TokensPerMinute,
    LimitKind::RequestsPerHour,
    LimitKind::RequestsPerMinute,
    LimitKind::RequestsPerSecond,
];

/// A kind's place in [`STORAGE_ORDER`].
pub(crate) const fn rank(kind: LimitKind) -> usize {
    match kind {
        LimitKind::CalendarMonthly => 0,
        LimitKind::BudgetMonthly => 1,
        LimitKind::CalendarWeekly => 2,
        LimitKind::BudgetWeekly => 3,
        LimitKind::CalendarDaily => 4,
        LimitKind::BudgetDaily => 5,
        LimitKind::BudgetHourly => 6,
        LimitKind::OutputTokensPerHour => 7,
        LimitKind::OutputTokensPerMinute => 8,
        LimitKind::InputTokensPerHour => 9,
        LimitKind::InputTokensPerMinute => 10,
        LimitKind::TokensPerHour => 11,
        LimitKind::TokensPerMinute => 12,
        LimitKind::RequestsPerHour => 13,
        LimitKind::RequestsPerMinute => 14,
        LimitKind::RequestsPerSecond => 15,
        LimitKind::MaxConcurrent => SLOTS,
    }
}

/// How many ranks a header can name: [`SLOTS`] rounded up to a power of
/// two, so that masking a parsed rank keeps it in bounds.
const RANKS: usize = 16;

/// The ranks as a bit mask.
type Mask = u16;

const _: () = assert!(SLOTS <= RANKS && RANKS.is_power_of_two());
const _: () = assert!(RANKS <= Mask::BITS as usize, "a mask has a bit per rank");

/// Each rank's kind; ranks past [`SLOTS`] are never written and read as
/// the last slot, so that indexing by a masked rank needs no bounds check.
const KIND_AT: [LimitKind; RANKS] = {
    let mut out = [STORAGE_ORDER[SLOTS - 1]; RANKS];
    let mut i = 0;
    while i < SLOTS {
        out[i] = STORAGE_ORDER[i];
        i += 1;
    }
    out
};

/// Each rank's bucket arithmetic, so that walking the buffer does not
/// divide.
const SPANS: [Span; RANKS] = {
    let mut out = [Span::of(Nanos::SECOND); RANKS];
    let mut i = 0;
    while i < RANKS {
        out[i] = match KIND_AT[i].lifetime() {
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

/// Buffers up to this many entries (16 cache lines) are read whole by
/// [`WindowSet::touch`].
const TOUCH_ALL: usize = 64;

const fn capacity_for(entries: usize) -> usize {
    entries.div_ceil(GRAIN) * GRAIN
}

/// A header's `meta` word: `rank << 60 | ranks << 44 | start << 22 | len`,
/// where `ranks` has bit `r` set for each rank `r` that has a window (every
/// header carries the same mask, so that the first says how many headers
/// there are and which one holds each kind), and the window's buckets are
/// `buf[start..start + len]`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Meta {
    rank: usize,
    ranks: Mask,
    start: usize,
    len: usize,
}

/// The width of a header's `start` and `len`. A valid window holds at most
/// `BUCKETS + 1` buckets; [`WindowSet::from_windows`] folds longer bucket
/// lists (only a corrupt store could hold one) to fit.
const FIELD_BITS: u32 = 22;
const FIELD: u64 = (1 << FIELD_BITS) - 1;

/// The most buckets [`WindowSet::from_windows`] keeps in one window: with
/// every window and its header, every position fits in [`FIELD`].
const MAX_DECODED_BUCKETS: usize = 1 << 16;

const _: () = assert!(((MAX_DECODED_BUCKETS + 1) * RANKS) as u64 <= FIELD);

impl Meta {
    #[inline(always)]
    const fn pack(self) -> u64 {
        debug_assert!(self.rank < SLOTS);
        debug_assert!(self.start as u64 <= FIELD && self.len as u64 <= FIELD);
        (self.rank as u64) << 60
            | (self.ranks as u64) << 44
            | (self.start as u64 & FIELD) << FIELD_BITS
            | (self.len as u64 & FIELD)
    }

    /// The fields of a header's `meta`. The rank is masked to the number of
    /// ranks (a no-op for a header this module wrote), so that indexing
    /// [`SPANS`] and [`KIND_AT`] by it needs no bounds check.
    #[inline(always)]
    const fn parse(word: u64) -> Meta {
        Meta {
            rank: (word >> 60) as usize & (RANKS - 1),
            ranks: (word >> 44) as Mask,
            start: ((word >> FIELD_BITS) & FIELD) as usize,
            len: (word & FIELD) as usize,
        }
    }

    #[inline(always)]
    const fn end(self) -> usize {
        self.start + self.len
    }
}

/// The number of ranks below `r` that have a window, in a set whose ranks
/// are `ranks`: the header of rank `r`'s window, or where it would go. The
/// default x86-64 target has no popcount instruction, but `count_ones` of
/// a byte still compiles to five register instructions (two
/// multiplications, two shifts and a mask), so no table is needed.
#[inline(always)]
fn headers_below(ranks: Mask, r: usize) -> usize {
    let below = (1u32 << r) - 1;
    (u32::from(ranks) & below).count_ones() as usize
}

/// The header of rank `r`'s window, if the set has one.
#[inline(always)]
fn header_of(ranks: Mask, r: usize) -> Option<usize> {
    (u32::from(ranks) >> r & 1 == 1).then(|| headers_below(ranks, r))
}

#[derive(Clone, Debug, Default)]
pub(crate) struct WindowSet {
    buf: Vec<Entry>,
}

/// Two sets are equal when they hold the same windows with the same
/// buckets; where the buckets sit in the buffer, and the free slots
/// expiry left between them, are not state.
impl PartialEq for WindowSet {
    fn eq(&self, other: &WindowSet) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for WindowSet {}

/// Iterates the windows of a subject's state in storage order (see
/// [`SubjectState::windows`](crate::state::SubjectState::windows)).
#[derive(Clone, Debug)]
pub struct Windows<'a> {
    buf: &'a [Entry],
    next: usize,
    /// The header count, from the first header.
    count: usize,
}

impl<'a> Iterator for Windows<'a> {
    type Item = (LimitKind, WindowRef<'a>);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.count {
            return None;
        }
        let &(word, total) = self.buf.get(self.next)?;
        let m = Meta::parse(word);
        self.next += 1;
        let buckets = self.buf.get(m.start..m.end()).unwrap_or_default();
        Some((KIND_AT[m.rank], WindowRef::new(buckets, total)))
    }
}

/// The windows of a [`WindowSet`] by kind, from [`WindowSet::by_kind`]: the
/// buffer and its mask of ranks, read once for all the kinds a caller asks
/// for.
#[derive(Copy, Clone, Debug)]
pub(crate) struct ByKind<'a> {
    buf: &'a [Entry],
    ranks: Mask,
}

impl<'a> ByKind<'a> {
    #[inline(always)]
    pub(crate) fn get(&self, kind: LimitKind) -> Option<WindowRef<'a>> {
        let h = header_of(self.ranks, rank(kind))?;
        let &(word, total) = self.buf.get(h)?;
        let m = Meta::parse(word);
        let buckets = self.buf.get(m.start..m.end()).unwrap_or_default();
        Some(WindowRef::new(buckets, total))
    }
}

/// `buckets` with at most [`MAX_DECODED_BUCKETS`]: the oldest are added
/// into one bucket with the index of the newest of them, so that nothing is
/// lost and nothing leaves the window sooner than it would have.
fn fold_oldest(buckets: &[Entry]) -> Cow<'_, [Entry]> {
    if buckets.len() <= MAX_DECODED_BUCKETS {
        return Cow::Borrowed(buckets);
    }
    let (old, kept) = buckets.split_at(buckets.len() - (MAX_DECODED_BUCKETS - 1));
    let amount = old.iter().fold(0u64, |t, &(_, a)| t.saturating_add(a));
    let index = old.last().map_or(0, |&(i, _)| i);
    let mut out = Vec::with_capacity(MAX_DECODED_BUCKETS);
    out.push((index, amount));
    out.extend_from_slice(kept);
    Cow::Owned(out)
}

impl WindowSet {
    /// Builds a set from windows given as bucket lists (oldest first, any
    /// order of kinds, later duplicates ignored), e.g. decoded from a store.
    pub(crate) fn from_windows<'b>(
        windows: impl IntoIterator<Item = (LimitKind, &'b [(u64, u64)])>,
    ) -> WindowSet {
        let mut lists: [Option<Cow<'b, [Entry]>>; SLOTS] = Default::default();
        for (kind, buckets) in windows {
            if kind.window().is_some() && lists[rank(kind)].is_none() {
                lists[rank(kind)] = Some(fold_oldest(buckets));
            }
        }
        WindowSet::build(lists.each_ref().map(|l| l.as_deref()), 0)
    }

    /// A compact buffer holding the windows given by rank, with `spare`
    /// more entries of capacity.
    fn build(by_rank: [Option<&[Entry]>; SLOTS], spare: usize) -> WindowSet {
        let count = by_rank.iter().flatten().count();
        let ranks = by_rank.iter().enumerate().fold(
            0,
            |m: Mask, (r, b)| if b.is_some() { m | 1 << r } else { m },
        );
        let len = count + by_rank.iter().flatten().map(|b| b.len()).sum::<usize>();
        let mut buf = Vec::with_capacity(capacity_for(len + spare));
        let mut start = count;
        for (rank, buckets) in by_rank.iter().enumerate() {
            let Some(buckets) = buckets else { continue };
            let total = buckets
                .iter()
                .fold(0u64, |acc, &(_, a)| acc.saturating_add(a));
            let meta = Meta {
                rank,
                ranks,
                start,
                len: buckets.len(),
            };
            buf.push((meta.pack(), total));
            start += buckets.len();
        }
        for buckets in by_rank.iter().flatten() {
            buf.extend_from_slice(buckets);
        }
        WindowSet { buf }
    }

    /// The number of windows (and of headers at the buffer's front).
    #[inline(always)]
    fn count(&self) -> usize {
        self.ranks().count_ones() as usize
    }

    #[inline(always)]
    fn meta(&self, header: usize) -> Meta {
        Meta::parse(self.buf[header].0)
    }

    #[inline(always)]
    fn set_meta(&mut self, header: usize, meta: Meta) {
        self.buf[header].0 = meta.pack();
    }

    pub(crate) fn iter(&self) -> Windows<'_> {
        Windows {
            buf: &self.buf,
            next: 0,
            count: self.count(),
        }
    }

    pub(crate) fn get(&self, kind: LimitKind) -> Option<WindowRef<'_>> {
        self.by_kind().get(kind)
    }

    /// The windows indexed by kind; a window's view is made when asked for.
    #[inline]
    pub(crate) fn by_kind(&self) -> ByKind<'_> {
        ByKind {
            buf: &self.buf,
            ranks: self.ranks(),
        }
    }

    /// The ranks that have a window, as a bit mask.
    #[inline(always)]
    fn ranks(&self) -> Mask {
        self.buf.first().map_or(0, |&(w, _)| Meta::parse(w).ranks)
    }

    /// Reads one word of each cache line a check will use. The loads do not
    /// depend on each other, so the processor has all of them in flight at
    /// once, and the work that follows finds the lines arriving instead of
    /// missing them one after another. A buffer of up to [`TOUCH_ALL`]
    /// entries is read whole; in a larger one, the headers and each window's
    /// oldest and newest bucket. Returns a value made of the loads, for the
    /// caller to sink.
    #[inline(always)]
    pub(crate) fn touch(&self) -> u64 {
        const PER_LINE: usize = 64 / std::mem::size_of::<Entry>();
        if self.buf.len() <= TOUCH_ALL {
            return self
                .buf
                .iter()
                .step_by(PER_LINE)
                .fold(0, |acc, e| acc ^ e.1);
        }
        let count = self.count();
        self.buf.iter().take(count).fold(0, |acc, &(word, _)| {
            let m = Meta::parse(word);
            let oldest = self.buf.get(m.start).map_or(0, |e| e.1);
            let newest = self.buf.get(m.end().wrapping_sub(1)).map_or(0, |e| e.1);
            acc ^ oldest ^ newest
        })
    }

    /// Whether every window is empty (or there are none).
    pub(crate) fn is_idle(&self) -> bool {
        self.iter().all(|(_, w)| w.is_empty())
    }

    /// Drops the buckets that have expired at `now`, and the windows left
    /// empty that are no longer limited. The usual call moves no memory: a
    /// window's start moves past its expired buckets.
    #[inline]
    pub(crate) fn expire(&mut self, limits: &SubjectLimits, now: Nanos) {
        let count = self.count();
        let mut live = count;
        let mut drop_any = false;
        for h in 0..count {
            let (word, total) = self.buf[h];
            let mut m = Meta::parse(word);
            let span = SPANS[m.rank];
            let gone = match self.buf.get(m.start..m.end()) {
                Some(buckets) => span.expired_count(buckets, now),
                None => 0,
            };
            if gone > 0 {
                let total = if gone == m.len {
                    // Saturation can leave a remainder; an empty window is zero.
                    0
                } else {
                    self.buf[m.start..m.start + gone]
                        .iter()
                        .fold(total, |t, &(_, a)| t.saturating_sub(a))
                };
                m.start += gone;
                m.len -= gone;
                self.buf[h] = (m.pack(), total);
            }
            live += m.len;
            drop_any |= m.len == 0 && limits.limit_in(KIND_AT[m.rank]).is_none();
        }
        if drop_any {
            self.rebuild(
                |k, w| !w.is_empty() || limits.limit_in(k).is_some(),
                None,
                0,
            );
        } else if self.buf.capacity() - live > live.max(GRAIN) {
            // Give back what a burst left, keeping some room so that a
            // subject whose windows empty and refill does not reallocate
            // each time.
            self.shrink(live + live / 4);
        }
    }

    /// Closes the gaps and gives back the capacity beyond `keep` entries
    /// (rounded up to a grain) in place, with `realloc`, rather than by
    /// [`rebuild`](Self::rebuild)ing into a new buffer. The two give the
    /// same capacity but not the same heap: with glibc, in the
    /// `state_size` example, a new buffer here led each subject's buffer to
    /// end up between long-lived small allocations (the map's keys), so
    /// that the chunk it left on its next growth could neither merge with a
    /// neighbour nor fit any later growth, and stayed resident: 30 % more
    /// RSS for the same capacity.
    #[inline(never)]
    fn shrink(&mut self, keep: usize) {
        let len = self.close_gaps();
        self.buf.shrink_to(capacity_for(keep.max(len)));
    }

    /// Rebuilds the buffer compactly with the windows `keep` accepts, plus
    /// a new empty window of rank `add`, with room for `spare` more entries.
    /// Runs when a window comes or goes: rarely.
    #[inline(never)]
    fn rebuild(
        &mut self,
        keep: impl Fn(LimitKind, WindowRef<'_>) -> bool,
        add: Option<usize>,
        spare: usize,
    ) {
        let mut by_rank: [Option<&[Entry]>; SLOTS] = [None; SLOTS];
        for (kind, w) in self.iter() {
            if keep(kind, w) {
                by_rank[rank(kind)] = Some(w.buckets());
            }
        }
        if let Some(r) = add {
            by_rank[r].get_or_insert(&[]);
        }
        *self = WindowSet::build(by_rank, spare);
    }

    /// The header of the window of `kind`, or of the first kind after it in
    /// [`STORAGE_ORDER`], or the header count if none follows.
    #[inline(always)]
    pub(crate) fn position_from(&self, kind: LimitKind) -> usize {
        headers_below(self.ranks(), rank(kind))
    }

    /// Adds `amount` to the window of `kind`, with `pos` at that window's
    /// header or where it would go, and moves `pos` past it. A window is
    /// created only for a limited kind. The kinds of one resource are
    /// consecutive in [`STORAGE_ORDER`], so one forward walk, in that order,
    /// serves all.
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
        let here = *pos < self.count() && self.meta(*pos).rank == rank(kind);
        // A calendar slot left from when the subject's budgets followed a
        // calendar counts nothing new: without the calendar there is no
        // period to open a bucket for (its spend ages out by itself).
        if kind.period().is_some() && limits.calendar().is_none() {
            *pos += usize::from(here);
            return;
        }
        if !here {
            if limits.limit_in(kind).is_none() {
                return;
            }
            // Once per kind in a subject's life (or after it emptied and its
            // limit went away): the headers move, so rebuild.
            let spare = 1 + self.buf.len() / 8;
            self.rebuild(|_, _| true, Some(rank(kind)), spare);
            *pos = self.position_from(kind);
        }
        let h = *pos;
        let m = self.meta(h);
        if m.len > 0 && span.lands_in(self.buf[m.end() - 1].0, now) {
            let a = &mut self.buf[m.end() - 1].1;
            *a = a.saturating_add(amount);
        } else {
            let bucket = match limits.calendar_bucket(kind, now) {
                Some(end) if kind.period().is_some() => end,
                _ => span.bucket_at(now),
            };
            self.append(h, (bucket, amount));
        }
        let total = &mut self.buf[h].1;
        *total = total.saturating_add(amount);
        *pos += 1;
    }

    /// Takes back `amount` that [`add`](Self::add) put in the window of
    /// `kind` at `at` (an operation that was not made durable is undone).
    /// The amount went to the window's newest bucket of the time, whose
    /// index is at least `at`'s; it is taken from the oldest such bucket
    /// onwards. That is the right bucket unless an older one at or after
    /// `at`'s existed too, and then one that expires sooner: the window
    /// counts the amount a little longer, never shorter. At `now`, a window
    /// `at` has left entirely is not touched, since its buckets from then
    /// may be gone and the ones left belong to later operations.
    ///
    /// A calendar slot's amount went to the bucket of the period containing
    /// `at` and is taken from that bucket only, unless that period is over.
    pub(crate) fn remove(
        &mut self,
        kind: LimitKind,
        limits: &SubjectLimits,
        at: Nanos,
        now: Nanos,
        amount: u64,
    ) {
        let span = SPANS[rank(kind)];
        let Some(length) = kind.window() else { return };
        if amount == 0 {
            return;
        }
        let (first, last) = match kind.period() {
            None if at.saturating_add(length) <= now => return,
            None => (span.bucket_at(at), u64::MAX),
            Some(_) => match limits.calendar_bucket(kind, at) {
                Some(b) if b >= now.0 => (b, b),
                _ => return,
            },
        };
        let Some(h) = header_of(self.ranks(), rank(kind)) else {
            return;
        };
        let mut m = self.meta(h);
        let mut left = amount;
        let mut i = m.start;
        while left > 0 && i < m.end() {
            let (index, a) = self.buf[i];
            if index > last {
                break;
            }
            if index < first {
                i += 1;
                continue;
            }
            let taken = a.min(left);
            left -= taken;
            if taken == a {
                // An empty bucket is not kept: close it up.
                self.buf.copy_within(i + 1..m.end(), i);
                m.len -= 1;
            } else {
                self.buf[i].1 = a - taken;
                i += 1;
            }
        }
        let removed = amount - left;
        self.set_meta(h, m);
        if h + 1 == self.count() {
            // The last window ends the buffer.
            self.buf.truncate(m.end().max(self.count()));
        }
        let total = &mut self.buf[h].1;
        *total = if m.len == 0 {
            0
        } else {
            total.saturating_sub(removed)
        };
    }

    /// Takes up to `amount` out of the window of `kind`, newest buckets
    /// first (an operator's credit: the usage it refunds is the most
    /// recent), and returns how much was taken: at most what the window
    /// holds, so a window never goes below zero.
    pub(crate) fn take_newest(&mut self, kind: LimitKind, amount: u64) -> u64 {
        let Some(h) = header_of(self.ranks(), rank(kind)) else {
            return 0;
        };
        let mut m = self.meta(h);
        let mut left = amount;
        while left > 0 && m.len > 0 {
            let i = m.end() - 1;
            let a = self.buf[i].1;
            let taken = a.min(left);
            left -= taken;
            if taken == a {
                m.len -= 1;
            } else {
                self.buf[i].1 = a - taken;
            }
        }
        let removed = amount - left;
        self.set_meta(h, m);
        if h + 1 == self.count() {
            // The last window ends the buffer.
            self.buf.truncate(m.end().max(self.count()));
        }
        let total = &mut self.buf[h].1;
        *total = if m.len == 0 {
            0
        } else {
            total.saturating_sub(removed)
        };
        removed
    }

    /// Puts `bucket` after the newest bucket of the window of header `h`:
    /// into the free slot there if there is one, otherwise after making one.
    #[inline(always)]
    fn append(&mut self, h: usize, bucket: Entry) {
        let count = self.count();
        let mut m = self.meta(h);
        let room_until = if h + 1 < count {
            self.meta(h + 1).start
        } else {
            self.buf.capacity()
        };
        if m.end() >= room_until {
            self.make_room(h);
            m = self.meta(h);
        }
        if m.end() == self.buf.len() {
            self.buf.push(bucket);
        } else {
            self.buf[m.end()] = bucket;
        }
        m.len += 1;
        self.set_meta(h, m);
    }

    /// Frees room after the newest bucket of header `h`'s window: closes
    /// every gap (growing the buffer by an eighth or a grain, not doubling,
    /// when that leaves none), then shifts the windows after it up by half
    /// the free capacity.
    #[inline(never)]
    fn make_room(&mut self, h: usize) {
        let count = self.count();
        let w = self.close_gaps();
        if self.buf.capacity() == w {
            self.buf.reserve_exact(capacity_for(w + w / 8 + 1) - w);
        }
        // The window of `h` is now followed directly by the next one (or is
        // last, with capacity after it). Shift the ones after it up by half
        // the free capacity, so that it has room for its next buckets too,
        // and the last window keeps the other half.
        if h + 1 < count {
            let gap = ((self.buf.capacity() - w) / 2).max(1);
            let from = self.meta(h + 1).start;
            self.buf.resize(w + gap, (0, 0));
            self.buf.copy_within(from..w, from + gap);
            for i in h + 1..count {
                let mut m = self.meta(i);
                m.start += gap;
                self.set_meta(i, m);
            }
        }
    }

    /// Moves every window's buckets down to follow the previous window's
    /// directly (front to back, so entries only move down), truncates the
    /// buffer after the last one and returns its new length.
    fn close_gaps(&mut self) -> usize {
        let count = self.count();
        let mut w = count;
        for i in 0..count {
            let mut m = self.meta(i);
            if m.start != w {
                self.buf.copy_within(m.start..m.end(), w);
                m.start = w;
                self.set_meta(i, m);
            }
            w += m.len;
        }
        self.buf.truncate(w);
        w
    }

    /// Heap bytes held, for memory accounting.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.buf.capacity() * std::mem::size_of::<Entry>()
    }

    /// Panics unless the layout holds: every header carries the ranks
    /// present, ranks rise, bucket ranges follow the headers in
    /// order without overlapping, the last one ends the buffer, and totals
    /// match.
    #[cfg(test)]
    fn assert_layout(&self) {
        let count = self.count();
        let ranks = (0..count).fold(0, |mask: Mask, h| mask | 1 << self.meta(h).rank);
        assert_eq!(ranks.count_ones() as usize, count, "one header per rank");
        let mut prev_rank = None;
        let mut prev_end = count;
        for h in 0..count {
            let m = self.meta(h);
            assert_eq!(m.ranks, ranks, "header {h} ranks");
            assert!(prev_rank.is_none_or(|r| r < m.rank), "ranks rise");
            assert!(m.start >= prev_end, "header {h} overlaps the one before");
            let total = self.buf[m.start..m.end()]
                .iter()
                .fold(0u64, |t, &(_, a)| t.saturating_add(a));
            assert_eq!(self.buf[h].1, total, "header {h} total");
            prev_rank = Some(m.rank);
            prev_end = m.end();
        }
        assert_eq!(
            prev_end,
            self.buf.len().max(count),
            "the last window ends the buffer"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::*;
    use crate::RollingWindow;
    use crate::limits::WINDOW_KINDS;
    use proptest::prelude::*;

    const T: Nanos = Nanos(280_000 * 3_600 * 1_000_000_000);

    fn limited(kinds: &[LimitKind]) -> SubjectLimits {
        kinds.iter().fold(SubjectLimits::default(), |l, &k| {
            l.with(k, NonZeroU64::new(u64::MAX).unwrap())
        })
    }

    #[test]
    fn remove_takes_back_an_add_and_never_a_later_window() {
        let lim = limited(&LimitKind::WINDOWED);
        let kind = LimitKind::RequestsPerMinute;
        let mut set = WindowSet::default();
        let add = |set: &mut WindowSet, at: Nanos, amount| {
            let mut pos = set.position_from(kind);
            set.add(&mut pos, kind, &lim, at, amount);
        };
        add(&mut set, T, 3);
        let before = set.clone();
        let at = T.saturating_add(Nanos::from_secs(5));
        add(&mut set, at, 4);
        set.remove(kind, &lim, at, at, 4);
        set.assert_layout();
        assert_eq!(set, before, "the add is gone, the earlier amount stays");
        // An amount in the same bucket as an earlier one leaves the rest.
        add(&mut set, T, 2);
        set.remove(kind, &lim, T, T, 2);
        assert_eq!(set, before);
        // More than the window holds from `at` on takes only what is there.
        set.remove(kind, &lim, T, T, 10);
        set.assert_layout();
        assert!(set.get(kind).is_some_and(|w| w.is_empty()));
        // Once a window has passed since `at`, nothing is taken.
        add(&mut set, T, 5);
        let later = T.saturating_add(Nanos::MINUTE);
        set.remove(kind, &lim, T, later, 5);
        assert_eq!(set.get(kind).unwrap().total(), 5);
        // A kind without a window is left alone.
        set.remove(LimitKind::BudgetDaily, &lim, T, T, 5);
        set.assert_layout();
    }

    proptest! {
        /// Undoing the last add of any sequence gives back the state before
        /// it (when nothing expired in between).
        #[test]
        fn remove_undoes_the_last_add(
            ops in proptest::collection::vec((0usize..WINDOW_KINDS, 0u64..2_000, 1u64..1_000), 1..60),
            last in (0usize..WINDOW_KINDS, 0u64..2_000, 1u64..1_000),
        ) {
            let lim = limited(&LimitKind::WINDOWED);
            let mut set = WindowSet::default();
            let mut now = T;
            for (k, gap_ms, amount) in ops {
                now = now.saturating_add(Nanos::from_millis(gap_ms));
                let kind = LimitKind::WINDOWED[k];
                let mut pos = set.position_from(kind);
                set.add(&mut pos, kind, &lim, now, amount);
            }
            let kind = LimitKind::WINDOWED[last.0];
            let at = now.saturating_add(Nanos::from_millis(last.1));
            let before = set.clone();
            let mut pos = set.position_from(kind);
            set.add(&mut pos, kind, &lim, at, last.2);
            set.remove(kind, &lim, at, at, last.2);
            set.assert_layout();
            // A window the add created stays, empty: equality compares
            // windows, so drop empty ones before comparing.
            let windows = |s: &WindowSet| -> Vec<_> {
                s.iter().filter(|(_, w)| !w.is_empty()).map(|(k, w)| (k, w.buckets().to_vec())).collect()
            };
            prop_assert_eq!(windows(&set), windows(&before));
        }

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
                        let w = model.get(k.index())?.as_ref()?;
                        Some((k, w.buckets().to_vec(), w.total()))
                    })
                    .collect();
                prop_assert_eq!(got, want);
                set.assert_layout();
            }
        }
    }

    #[test]
    fn equality_ignores_where_buckets_sit() {
        let limits = limited(&[LimitKind::RequestsPerMinute, LimitKind::RequestsPerSecond]);
        let mut a = WindowSet::default();
        for (kind, secs) in [
            (LimitKind::RequestsPerMinute, 0),
            (LimitKind::RequestsPerSecond, 0),
            (LimitKind::RequestsPerSecond, 2),
        ] {
            let mut pos = a.position_from(kind);
            a.add(
                &mut pos,
                kind,
                &limits,
                T.saturating_add(Nanos::from_secs(secs)),
                1,
            );
        }
        a.expire(&limits, T.saturating_add(Nanos::from_secs(4)));
        // `a` has free slots where the per-second buckets were; a rebuilt
        // copy has none, and is still equal.
        let b = WindowSet::from_windows(a.iter().map(|(k, w)| (k, w.buckets())));
        assert_ne!(a.buf.len(), b.buf.len());
        assert_eq!(a, b);
        let mut c = b.clone();
        let mut pos = c.position_from(LimitKind::RequestsPerSecond);
        let t = T.saturating_add(Nanos::from_secs(4));
        c.add(&mut pos, LimitKind::RequestsPerSecond, &limits, t, 1);
        assert_ne!(a, c);
    }

    #[test]
    fn storage_order_and_rank_agree_and_keep_resources_together() {
        for (i, kind) in STORAGE_ORDER.into_iter().enumerate() {
            assert_eq!(rank(kind), i);
        }
        let mut seen = STORAGE_ORDER.map(|k| k.index());
        seen.sort_unstable();
        assert_eq!(seen, LimitKind::SLOTS.map(|k| k.index()), "every slot once");
        let resources = STORAGE_ORDER.map(|k| k.resource());
        for (i, r) in resources.iter().enumerate() {
            // A resource seen before must have been seen just before.
            let earlier = resources[..i].iter().position(|x| x == r);
            assert!(earlier.is_none_or(|_| resources[i - 1] == *r));
        }
    }

    #[test]
    fn every_kind_finds_its_header() {
        // Each subset of the windowed kinds: `by_kind` and `position_from`
        // agree with a walk over the headers.
        for mask in 0u32..1 << SLOTS {
            let kinds: Vec<LimitKind> = (0..SLOTS)
                .filter(|r| mask & 1 << r != 0)
                .map(|r| STORAGE_ORDER[r])
                .collect();
            let set = WindowSet::from_windows(kinds.iter().map(|&k| (k, &[(1, 1)][..])));
            set.assert_layout();
            let by_kind = set.by_kind();
            for kind in LimitKind::SLOTS {
                let walked = set.iter().position(|(k, _)| k == kind);
                assert_eq!(
                    by_kind.get(kind).is_some(),
                    walked.is_some(),
                    "{mask:#b} {kind:?}"
                );
                let after = set.iter().position(|(k, _)| rank(k) >= rank(kind));
                assert_eq!(set.position_from(kind), after.unwrap_or(kinds.len()));
            }
        }
    }

    #[test]
    fn a_corrupt_window_is_folded_to_fit() {
        // More buckets than a window can hold: the oldest are added into
        // one, at the newest of their indices, and nothing is lost.
        let n = MAX_DECODED_BUCKETS as u64 + 1_000;
        let buckets: Vec<Entry> = (0..n).map(|i| (i, 2)).collect();
        let set = WindowSet::from_windows([(LimitKind::BudgetMonthly, &buckets[..])]);
        set.assert_layout();
        let w = set.get(LimitKind::BudgetMonthly).expect("window");
        assert_eq!(w.buckets().len(), MAX_DECODED_BUCKETS);
        assert_eq!(w.total(), 2 * n);
        assert_eq!(w.buckets()[0], (1_000, 2 * 1_001));
        assert_eq!(w.buckets()[1], (1_001, 2));
    }

    #[test]
    fn a_bucket_is_never_read_as_a_header() {
        // The first bucket after the headers has every bit of a header's
        // `meta` set: iteration must still stop after the one real window.
        let set = WindowSet::from_windows([(LimitKind::BudgetDaily, &[(u64::MAX, 1)][..])]);
        let kinds: Vec<_> = set.iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, [LimitKind::BudgetDaily]);
        assert!(set.by_kind().get(LimitKind::BudgetDaily).is_some());
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
    fn expiry_leaves_room_that_the_window_before_grows_into() {
        let (rpm, rps) = (LimitKind::RequestsPerMinute, LimitKind::RequestsPerSecond);
        let limits = limited(&[rpm, rps]);
        let mut set = WindowSet::default();
        let add = |set: &mut WindowSet, kind, t: Nanos| {
            let mut pos = set.position_from(kind);
            set.add(&mut pos, kind, &limits, t, 1);
            set.assert_layout();
        };
        add(&mut set, rpm, T);
        add(&mut set, rps, T);
        // No room after the per-minute window: the per-second one shifts,
        // leaving a gap of half the free capacity.
        let t1 = T.saturating_add(Nanos::SECOND);
        add(&mut set, rpm, t1);
        let rps_start = set.meta(1).start;
        assert_eq!(set.meta(0).end(), 4);
        assert!(rps_start > 4, "{rps_start}");
        // The per-second bucket expires; its slot joins the free room...
        let t2 = T.saturating_add(Nanos::from_secs(3));
        set.expire(&limits, t2);
        let len = set.buf.len();
        assert_eq!((set.meta(1).start, set.meta(1).len), (rps_start + 1, 0));
        // ...and the per-minute window's next bucket goes into the room after
        // it, with nothing moved.
        add(&mut set, rpm, t2);
        assert_eq!(set.buf.len(), len);
        let got: Vec<_> = set
            .iter()
            .map(|(k, w)| (k, w.buckets().len(), w.total()))
            .collect();
        assert_eq!(got, [(rpm, 3, 3), (rps, 0, 0)]);
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
        set.assert_layout();
        assert!(set.is_idle());
        assert!(set.heap_bytes() <= 16 * 16, "{}", set.heap_bytes());
    }
}
