//! The mutable state of one subject: its window counters, the reservations
//! held against it and the concurrency leases it has out.

use std::collections::VecDeque;

use crate::alerts::Fired;
use crate::limits::{LimitKind, Resource, SubjectLimits, WINDOW_KINDS};
use crate::time::Nanos;
use crate::window::{RollingWindow, Span, WindowRef};
use crate::window_set::{ByKind, WindowSet, Windows};

/// An estimate held against a subject's budgets and token limits by a
/// reserved check, until it is settled or expires.
///
/// A streamed request's progress records charge the usage so far and take
/// it off what the hold holds; `charged` remembers how much, so that each
/// record (which reports usage so far, not an increment) charges only what
/// is new.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hold {
    /// The reservation's id.
    pub id: u64,
    /// Nano-dollars held.
    pub cost: u64,
    /// Tokens held.
    pub tokens: u64,
    /// Input (prompt) tokens held against input token limits.
    pub input: u64,
    /// Output (completion) tokens held against output token limits.
    pub output: u64,
    /// When the hold lapses unless settled.
    pub expires_at: Nanos,
    /// Settled holds stay, holding nothing, until `expires_at`, so that a
    /// retried RecordUsage for the same reservation charges once.
    pub settled: bool,
    /// An opaque tag the caller gave the reservation, kept with it so that
    /// the caller can rebuild what it handed out (limitsd: a digest of the
    /// subjects the reservation was made for, part of its id).
    pub tag: u32,
    /// What the reservation's records have charged so far.
    pub charged: Held,
    /// The number of the last numbered record applied (0: none).
    pub seq: u32,
    /// A progress record went past the hold into a limit with no room
    /// left: the request was told to stop, and stays told.
    pub stopped: bool,
}

impl Hold {
    /// Whether the hold still holds its estimate at `now`.
    pub fn is_open(&self, now: Nanos) -> bool {
        !self.settled && self.expires_at > now
    }

    /// The estimate the hold holds (all of it, open or not).
    pub fn estimate(&self) -> Held {
        Held {
            cost: self.cost,
            tokens: self.tokens,
            input: self.input,
            output: self.output,
        }
    }

    /// Sets what the hold holds.
    pub(crate) fn set_estimate(&mut self, held: Held) {
        self.cost = held.cost;
        self.tokens = held.tokens;
        self.input = held.input;
        self.output = held.output;
    }
}

/// What a subject's open holds hold, per resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Nano-dollars.
    pub cost: u64,
    /// Tokens.
    pub tokens: u64,
    /// Input tokens.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
}

impl Held {
    /// Each resource of `self` less that of `other`, or zero.
    pub fn saturating_sub(self, other: Held) -> Held {
        Held {
            cost: self.cost.saturating_sub(other.cost),
            tokens: self.tokens.saturating_sub(other.tokens),
            input: self.input.saturating_sub(other.input),
            output: self.output.saturating_sub(other.output),
        }
    }

    /// Each resource of `self` plus that of `other`, saturating.
    pub fn saturating_add(self, other: Held) -> Held {
        Held {
            cost: self.cost.saturating_add(other.cost),
            tokens: self.tokens.saturating_add(other.tokens),
            input: self.input.saturating_add(other.input),
            output: self.output.saturating_add(other.output),
        }
    }

    /// Whether every resource is zero.
    pub fn is_zero(&self) -> bool {
        *self == Held::default()
    }

    /// What is held of a resource (nothing of requests or leases).
    #[inline(always)]
    pub fn of(&self, resource: Resource) -> u64 {
        match resource {
            Resource::Cost => self.cost,
            Resource::Tokens => self.tokens,
            Resource::InputTokens => self.input,
            Resource::OutputTokens => self.output,
            Resource::Requests | Resource::Leases => 0,
        }
    }
}

/// A settled reservation, remembered until its hold would have expired so
/// that a retried record of it charges nothing. Kept apart from the open
/// holds, on one subject of the reservation only, so that a busy subject's
/// settled reservations cost its checks nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    /// The reservation's id.
    pub id: u64,
    /// When it may be forgotten.
    pub expires_at: Nanos,
}

/// One concurrency slot held by a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseSlot {
    /// The lease's id.
    pub id: u64,
    /// When the slot frees itself unless the lease is released or renewed.
    pub expires_at: Nanos,
}

/// Everything the engine keeps about one subject. Windows exist only for the
/// kinds the subject has (or had) limits for; an idle subject is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectState {
    /// Window counters, at most one per windowed kind, in a fixed storage
    /// order, all in one buffer.
    windows: WindowSet,
    /// Holds and leases, out of line: most subjects have neither, and a
    /// store keeps every subject's inline part in its table.
    extra: Option<Box<Extra>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Extra {
    /// Reservations not settled yet (open, or lapsed and not yet dropped).
    holds: Vec<Hold>,
    /// Settled reservations, in order of expiry: they expire from the
    /// front, one at a time on a busy subject, without moving the rest.
    settled: VecDeque<Settled>,
    leases: Vec<LeaseSlot>,
    /// The alert thresholds that have fired, per budget window.
    fired: Vec<Fired>,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.holds.is_empty()
            && self.settled.is_empty()
            && self.leases.is_empty()
            && self.fired.is_empty()
    }
}

impl SubjectState {
    /// An empty state: no windows, holds or leases.
    pub fn new() -> SubjectState {
        SubjectState::default()
    }

    /// Rebuilds state from its parts, e.g. when a store decodes it.
    /// Windows of a kind given twice keep the first; the concurrency kind,
    /// which has no window, is ignored. Settled holds are kept as
    /// [`Settled`] reservations.
    pub fn from_parts(
        windows: Vec<(LimitKind, RollingWindow)>,
        holds: Vec<Hold>,
        leases: Vec<LeaseSlot>,
    ) -> SubjectState {
        let (settled, mut holds): (Vec<Hold>, Vec<Hold>) =
            holds.into_iter().partition(|h| h.settled);
        holds.sort_by_key(|h| h.id);
        let mut settled: Vec<Settled> = settled
            .into_iter()
            .map(|h| Settled {
                id: h.id,
                expires_at: h.expires_at,
            })
            .collect();
        settled.sort_by_key(|s| s.expires_at);
        let extra = Extra {
            holds,
            settled: settled.into(),
            leases,
            fired: Vec::new(),
        };
        let extra = (!extra.is_empty()).then(|| Box::new(extra));
        SubjectState {
            windows: WindowSet::from_windows(windows.iter().map(|(k, w)| (*k, w.buckets()))),
            extra,
        }
    }

    /// The window counters, in a fixed order (not kind order: see `window_set`).
    pub fn windows(&self) -> Windows<'_> {
        self.windows.iter()
    }

    /// The reservations not settled yet.
    pub fn holds(&self) -> &[Hold] {
        self.extra.as_ref().map_or(&[], |e| &e.holds)
    }

    /// The reservations settled recently (see [`Settled`]), in order of
    /// expiry.
    pub fn settled(&self) -> std::collections::vec_deque::Iter<'_, Settled> {
        static NONE: VecDeque<Settled> = VecDeque::new();
        self.extra.as_ref().map_or(&NONE, |e| &e.settled).iter()
    }

    /// The concurrency slots held.
    pub fn leases(&self) -> &[LeaseSlot] {
        self.extra.as_ref().map_or(&[], |e| &e.leases)
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Which alert thresholds have fired, per budget window.
    pub fn fired(&self) -> &[Fired] {
        self.extra.as_ref().map_or(&[], |e| &e.fired)
    }

    /// Adds settled reservations (when a store decodes the state), kept in
    /// order of expiry.
    pub fn with_settled(mut self, mut settled: Vec<Settled>) -> SubjectState {
        if !settled.is_empty() {
            let list = &mut self.extra_mut().settled;
            settled.extend(list.drain(..));
            settled.sort_by_key(|s| s.expires_at);
            *list = settled.into();
        }
        self
    }

    /// Adds fired alert thresholds (when a store decodes the state).
    pub fn with_fired(mut self, fired: Vec<Fired>) -> SubjectState {
        if !fired.is_empty() {
            self.extra_mut().fired = fired;
        }
        self
    }

    /// The fired thresholds of window `slot`, made empty if it has none.
    pub(crate) fn fired_mut(&mut self, slot: LimitKind) -> &mut Fired {
        let fired = &mut self.extra_mut().fired;
        let at = match fired.iter().position(|f| f.slot == slot) {
            Some(at) => at,
            None => {
                fired.push(Fired {
                    slot,
                    bits: 0,
                    period: 0,
                });
                fired.len() - 1
            }
        };
        &mut fired[at]
    }

    /// Forgets windows none of whose thresholds has fired.
    pub(crate) fn prune_fired(&mut self) {
        if let Some(extra) = &mut self.extra {
            extra.fired.retain(|f| f.bits != 0);
            if extra.is_empty() {
                self.extra = None;
            }
        }
    }

    /// The window of a kind, if the subject has one.
    pub fn window(&self, kind: LimitKind) -> Option<WindowRef<'_>> {
        self.windows.get(kind)
    }

    /// Starts loading this subject's state into the cache without waiting
    /// for it, so that an operation on several subjects pays for their cache
    /// misses at once rather than one after another.
    #[inline]
    pub(crate) fn prefetch(&self) {
        let extra = self.extra.as_ref().map_or(0, |e| e.holds.len());
        std::hint::black_box(self.windows.touch() ^ extra as u64);
    }

    /// Drops everything that has expired at `now`: window buckets, holds
    /// (settled or not) and leases, and windows that are empty and no longer
    /// limited. Every operation starts with this, so expiry is exact whether
    /// or not a background sweep has run.
    pub fn expire(&mut self, limits: &SubjectLimits, now: Nanos) {
        self.windows.expire(limits, now);
        if let Some(extra) = &mut self.extra {
            extra.holds.retain(|h| h.expires_at > now);
            // In order of expiry: only the expired prefix is looked at.
            while extra.settled.front().is_some_and(|s| s.expires_at <= now) {
                extra.settled.pop_front();
            }
            extra.leases.retain(|l| l.expires_at > now);
            // What has fired is kept until a decision sees the window below
            // its re-arm level (or in a new period): open holds count too,
            // so an empty window alone does not re-arm it. An idle subject
            // (nothing counted, nothing held) may be dropped with it.
            if extra.is_empty() {
                self.extra = None;
            }
        }
    }

    /// Whether nothing is left that must be remembered: no spend, no holds,
    /// no leases. Such a subject may be dropped by a store.
    pub fn is_idle(&self) -> bool {
        self.windows.is_idle()
            && self.holds().is_empty()
            && self.settled().len() == 0
            && self.leases().is_empty()
    }

    /// The instant from which nothing in this state counts any more: its
    /// newest window amount has left its window, and its holds and leases
    /// have expired. A store may drop the state then; `None` when it is
    /// idle already.
    pub fn idle_at(&self) -> Option<Nanos> {
        let windows = self.windows().filter_map(|(kind, w)| {
            let &(newest, _) = w.buckets().last()?;
            Some(Span::of(kind.lifetime()?).expiry(newest))
        });
        let holds = self.holds().iter().map(|h| h.expires_at);
        let settled = self.settled().next_back().map(|s| s.expires_at);
        let leases = self.leases().iter().map(|l| l.expires_at);
        windows.chain(holds).chain(settled).chain(leases).max()
    }

    /// What a window holds, including open holds for cost and token windows.
    pub fn used(&self, kind: LimitKind, now: Nanos) -> u64 {
        self.used_with(kind, self.window(kind), self.held(now), now)
    }

    /// The windows indexed by kind, so that a caller reading every limit
    /// finds each window without searching the list again.
    pub(crate) fn windows_by_kind(&self) -> ByKind<'_> {
        self.windows.by_kind()
    }

    /// [`used`](Self::used) given the kind's window (from
    /// [`windows_by_kind`](Self::windows_by_kind)) and the open holds
    /// (`held(now)`), which a caller reading every limit looks up once.
    pub(crate) fn used_with(
        &self,
        kind: LimitKind,
        window: Option<WindowRef<'_>>,
        held: Held,
        now: Nanos,
    ) -> u64 {
        let counted = window.map_or(0, |w| w.total());
        let held = match kind.resource() {
            Resource::Leases => return self.live_leases(now) as u64,
            r => held.of(r),
        };
        counted.saturating_add(held)
    }

    /// What the open holds hold.
    pub fn held(&self, now: Nanos) -> Held {
        self.holds()
            .iter()
            .filter(|h| h.is_open(now))
            .fold(Held::default(), |a, h| Held {
                cost: a.cost.saturating_add(h.cost),
                tokens: a.tokens.saturating_add(h.tokens),
                input: a.input.saturating_add(h.input),
                output: a.output.saturating_add(h.output),
            })
    }

    /// How many leases are live at `now`.
    pub fn live_leases(&self, now: Nanos) -> usize {
        self.leases().iter().filter(|l| l.expires_at > now).count()
    }

    /// When the oldest amount of a window expires (or the oldest lease).
    pub fn reset_at(&self, kind: LimitKind) -> Option<Nanos> {
        self.reset_at_with(kind, self.window(kind))
    }

    /// [`reset_at`](Self::reset_at) given the kind's window.
    pub(crate) fn reset_at_with(
        &self,
        kind: LimitKind,
        window: Option<WindowRef<'_>>,
    ) -> Option<Nanos> {
        match kind.lifetime() {
            Some(length) => window.and_then(|w| w.reset_at(length)),
            None => self.leases().iter().map(|l| l.expires_at).min(),
        }
    }

    /// How long until `need` of a window's usage has gone, counting window
    /// expiry and the expiry of open holds (a settlement may free it sooner).
    /// `None` when even everything expiring would not free that much.
    pub fn time_until_freed(&self, kind: LimitKind, now: Nanos, need: u64) -> Option<Nanos> {
        let length = kind.lifetime()?;
        let window = self.window(kind);
        let holds_matter = !matches!(kind.resource(), Resource::Requests | Resource::Leases);
        if !holds_matter || self.holds().iter().all(|h| !h.is_open(now)) {
            return window.and_then(|w| w.time_until_freed(length, now, need));
        }
        // Merge bucket expiries with hold expiries, both in time order.
        let mut events: Vec<(Nanos, u64)> = window
            .map(|w| w.expiries(length).collect())
            .unwrap_or_default();
        events.extend(
            self.holds()
                .iter()
                .filter(|h| h.is_open(now))
                .map(|h| (h.expires_at, h.estimate().of(kind.resource()))),
        );
        events.sort_unstable_by_key(|&(t, _)| t);
        let mut freed = 0u64;
        for (t, a) in events {
            freed = freed.saturating_add(a);
            if freed >= need {
                return Some(t.saturating_sub(now));
            }
        }
        None
    }

    /// Adds an amount to every window of a resource that the subject is
    /// limited on (or already counts). Always inlined, so that each
    /// caller's resource is a constant: out of line, the compiler shared one
    /// body between the arms below and divided by each window's bucket width
    /// as a variable.
    #[inline(always)]
    pub(crate) fn charge(
        &mut self,
        limits: &SubjectLimits,
        resource: Resource,
        now: Nanos,
        amount: u64,
    ) {
        if amount == 0 {
            return;
        }
        // Each arm names its kinds as constants, so that after inlining each
        // kind's window length (and the bucket width derived from it) is a
        // constant: no division by a runtime width when a bucket is opened.
        match resource {
            Resource::Cost => {
                let [k0, k1, k2, k3, k4, k5, k6] = COST_KINDS;
                let mut pos = self.windows.position_from(k0);
                self.windows.add(&mut pos, k0, limits, now, amount);
                self.windows.add(&mut pos, k1, limits, now, amount);
                self.windows.add(&mut pos, k2, limits, now, amount);
                self.windows.add(&mut pos, k3, limits, now, amount);
                self.windows.add(&mut pos, k4, limits, now, amount);
                self.windows.add(&mut pos, k5, limits, now, amount);
                self.windows.add(&mut pos, k6, limits, now, amount);
            }
            Resource::Requests => {
                let [k0, k1, k2] = REQUEST_KINDS;
                let mut pos = self.windows.position_from(k0);
                self.windows.add(&mut pos, k0, limits, now, amount);
                self.windows.add(&mut pos, k1, limits, now, amount);
                self.windows.add(&mut pos, k2, limits, now, amount);
            }
            Resource::Tokens | Resource::InputTokens | Resource::OutputTokens => {
                let [k0, k1] = match resource {
                    Resource::InputTokens => INPUT_KINDS,
                    Resource::OutputTokens => OUTPUT_KINDS,
                    _ => TOKEN_KINDS,
                };
                let mut pos = self.windows.position_from(k0);
                self.windows.add(&mut pos, k0, limits, now, amount);
                self.windows.add(&mut pos, k1, limits, now, amount);
            }
            Resource::Leases => {}
        }
    }

    /// Takes back what [`charge`](Self::charge) added at `at` (see
    /// `WindowSet::remove` for which bucket it is taken from).
    pub(crate) fn uncharge(
        &mut self,
        limits: &SubjectLimits,
        resource: Resource,
        at: Nanos,
        now: Nanos,
        amount: u64,
    ) {
        for &kind in kinds_counting(resource) {
            self.windows.remove(kind, limits, at, now, amount);
        }
    }

    /// Adds `amount` to the window of one kind, if the subject is limited
    /// on it (or already counts it); returns what the window gained.
    pub(crate) fn add_to(
        &mut self,
        kind: LimitKind,
        limits: &SubjectLimits,
        now: Nanos,
        amount: u64,
    ) -> u64 {
        let before = self.window(kind).map_or(0, |w| w.total());
        let mut pos = self.windows.position_from(kind);
        self.windows.add(&mut pos, kind, limits, now, amount);
        self.window(kind)
            .map_or(0, |w| w.total())
            .saturating_sub(before)
    }

    /// Takes up to `amount` out of the window of one kind, newest first;
    /// returns what was taken.
    pub(crate) fn take_newest(&mut self, kind: LimitKind, amount: u64) -> u64 {
        self.windows.take_newest(kind, amount)
    }

    /// Takes back what [`add_to`](Self::add_to) added at `at`.
    pub(crate) fn remove_from(
        &mut self,
        kind: LimitKind,
        limits: &SubjectLimits,
        at: Nanos,
        now: Nanos,
        amount: u64,
    ) {
        self.windows.remove(kind, limits, at, now, amount);
    }

    /// Removes a hold; true if it was there.
    pub(crate) fn remove_hold(&mut self, id: u64) -> bool {
        let Some(extra) = &mut self.extra else {
            return false;
        };
        let before = extra.holds.len();
        extra.holds.retain(|h| h.id != id);
        let removed = extra.holds.len() != before;
        if extra.is_empty() {
            self.extra = None;
        }
        removed
    }

    /// Remembers a settled reservation, in order of expiry.
    pub(crate) fn push_settled(&mut self, settled: Settled) {
        let list = &mut self.extra_mut().settled;
        let at = list.partition_point(|s| s.expires_at <= settled.expires_at);
        list.insert(at, settled);
    }

    /// Whether a reservation is remembered as settled here.
    pub(crate) fn find_settled(&self, id: u64) -> Option<Settled> {
        self.settled().find(|s| s.id == id).copied()
    }

    /// Forgets a settled reservation; true if it was there.
    pub(crate) fn remove_settled(&mut self, id: u64) -> bool {
        let Some(extra) = &mut self.extra else {
            return false;
        };
        let Some(at) = extra.settled.iter().position(|s| s.id == id) else {
            return false;
        };
        extra.settled.remove(at);
        if extra.is_empty() {
            self.extra = None;
        }
        true
    }

    /// Adds a hold, in order of id (so that a hold taken back and put
    /// again is where it was).
    pub(crate) fn push_hold(&mut self, hold: Hold) {
        let holds = &mut self.extra_mut().holds;
        let at = holds.partition_point(|h| h.id < hold.id);
        holds.insert(at, hold);
    }

    /// The unsettled hold of a reservation, if this subject has one.
    pub fn hold(&self, id: u64) -> Option<&Hold> {
        let holds = self.holds();
        let at = holds.binary_search_by_key(&id, |h| h.id).ok()?;
        Some(&holds[at])
    }

    pub(crate) fn hold_mut(&mut self, id: u64) -> Option<&mut Hold> {
        let holds = &mut self.extra.as_mut()?.holds;
        let at = holds.binary_search_by_key(&id, |h| h.id).ok()?;
        Some(&mut holds[at])
    }

    pub(crate) fn push_lease(&mut self, lease: LeaseSlot) {
        self.extra_mut().leases.push(lease);
    }

    /// Removes a lease; true if it was live at `now`.
    pub(crate) fn remove_lease(&mut self, id: u64, now: Nanos) -> bool {
        let Some(extra) = &mut self.extra else {
            return false;
        };
        let Some(pos) = extra.leases.iter().position(|l| l.id == id) else {
            return false;
        };
        let live = extra.leases.swap_remove(pos).expires_at > now;
        if extra.is_empty() {
            self.extra = None;
        }
        live
    }

    /// Approximate bytes this state occupies, inline and on the heap.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.windows.heap_bytes()
            + self.extra.as_ref().map_or(0, |e| {
                std::mem::size_of::<Extra>()
                    + e.holds.capacity() * std::mem::size_of::<Hold>()
                    + e.settled.capacity() * std::mem::size_of::<Settled>()
                    + e.leases.capacity() * std::mem::size_of::<LeaseSlot>()
                    + e.fired.capacity() * std::mem::size_of::<Fired>()
            })
    }
}

// Keep the per-kind array size and the window list in step.
const _: () = assert!(WINDOW_KINDS == LimitKind::WINDOWED.len());
const _: () = assert!(crate::limits::SLOTS == LimitKind::SLOTS.len());

// The kinds of each resource in storage order, so that charging one
// resource is one forward walk over the window buffer.
const COST_KINDS: [LimitKind; 7] = [
    LimitKind::CalendarMonthly,
    LimitKind::BudgetMonthly,
    LimitKind::CalendarWeekly,
    LimitKind::BudgetWeekly,
    LimitKind::CalendarDaily,
    LimitKind::BudgetDaily,
    LimitKind::BudgetHourly,
];
const REQUEST_KINDS: [LimitKind; 3] = [
    LimitKind::RequestsPerHour,
    LimitKind::RequestsPerMinute,
    LimitKind::RequestsPerSecond,
];
const TOKEN_KINDS: [LimitKind; 2] = [LimitKind::TokensPerHour, LimitKind::TokensPerMinute];
const INPUT_KINDS: [LimitKind; 2] = [
    LimitKind::InputTokensPerHour,
    LimitKind::InputTokensPerMinute,
];
const OUTPUT_KINDS: [LimitKind; 2] = [
    LimitKind::OutputTokensPerHour,
    LimitKind::OutputTokensPerMinute,
];

/// The windowed kinds that count a resource.
fn kinds_counting(resource: Resource) -> &'static [LimitKind] {
    match resource {
        Resource::Cost => &COST_KINDS,
        Resource::Requests => &REQUEST_KINDS,
        Resource::Tokens => &TOKEN_KINDS,
        Resource::InputTokens => &INPUT_KINDS,
        Resource::OutputTokens => &OUTPUT_KINDS,
        Resource::Leases => &[],
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::*;
    use crate::window_set::STORAGE_ORDER;

    /// A whole number of hours, so bucket boundaries fall on `T`.
    const T: Nanos = Nanos(280_000 * 3_600 * 1_000_000_000);

    fn nz(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).unwrap()
    }

    fn hold(id: u64, cost: u64, tokens: u64, expires_at: Nanos) -> Hold {
        Hold {
            id,
            cost,
            tokens,
            expires_at,
            settled: false,
            tag: 0,
            ..Default::default()
        }
    }

    #[test]
    fn removing_the_last_hold_or_lease_keeps_fired_alert_thresholds() {
        // A budget past a threshold (fired), with a reservation and a lease
        // out: settling and releasing them must not forget what fired, or
        // the next decision above the threshold would alert again.
        let mut s = SubjectState::new();
        s.fired_mut(LimitKind::BudgetDaily).bits = 0b1;
        s.push_hold(hold(2, 10, 0, T.saturating_add(Nanos::SECOND)));
        s.push_lease(LeaseSlot {
            id: 1,
            expires_at: T.saturating_add(Nanos::SECOND),
        });
        assert!(s.remove_hold(2));
        assert!(s.remove_lease(1, T));
        assert_eq!(s.fired().len(), 1);
        assert_eq!(s.fired()[0].bits, 0b1);
        // A settled reservation forgotten leaves them too.
        s.push_settled(Settled {
            id: 3,
            expires_at: T.saturating_add(Nanos::SECOND),
        });
        assert!(s.remove_settled(3));
        assert_eq!(s.fired()[0].bits, 0b1);
    }

    #[test]
    fn an_empty_state_is_idle_and_costs_only_its_inline_size() {
        let s = SubjectState::new();
        assert!(s.is_idle());
        assert_eq!(s.memory_bytes(), std::mem::size_of::<SubjectState>());
    }

    #[test]
    fn charge_counts_only_limited_or_already_counting_windows() {
        let lim = SubjectLimits::default().with(LimitKind::TokensPerMinute, nz(100));
        let mut s = SubjectState::new();
        s.charge(&lim, Resource::Tokens, T, 7);
        s.charge(&lim, Resource::Cost, T, 7);
        let kinds: Vec<_> = s.windows().map(|(k, _)| k).collect();
        assert_eq!(kinds, [LimitKind::TokensPerMinute]);
        // A window whose limit was removed keeps counting until it empties,
        // so a limit put back by a reload sees the recent usage.
        let unlimited = SubjectLimits::default();
        s.charge(&unlimited, Resource::Tokens, T, 3);
        assert_eq!(s.used(LimitKind::TokensPerMinute, T), 10);
    }

    #[test]
    fn expire_drops_empty_windows_only_when_no_longer_limited() {
        let lim = SubjectLimits::default()
            .with(LimitKind::RequestsPerSecond, nz(5))
            .with(LimitKind::RequestsPerHour, nz(5));
        let mut s = SubjectState::new();
        s.charge(&lim, Resource::Requests, T, 1);
        let later = T.saturating_add(Nanos::from_secs(2));
        s.expire(&lim, later);
        // The per-second window is empty but still limited: it stays.
        assert_eq!(s.windows().count(), 2);
        s.expire(&SubjectLimits::default(), later);
        let kinds: Vec<_> = s.windows().map(|(k, _)| k).collect();
        assert_eq!(kinds, [LimitKind::RequestsPerHour]);
        s.expire(
            &SubjectLimits::default(),
            T.saturating_add(Nanos::from_secs(7_200)),
        );
        assert!(s.windows().next().is_none() && s.is_idle());
    }

    #[test]
    fn used_counts_open_holds_on_cost_and_token_windows_only() {
        let lim = SubjectLimits::default()
            .with(LimitKind::BudgetDaily, nz(1_000))
            .with(LimitKind::TokensPerMinute, nz(1_000))
            .with(LimitKind::RequestsPerMinute, nz(1_000));
        let mut s = SubjectState::new();
        s.charge(&lim, Resource::Cost, T, 10);
        s.push_hold(hold(1, 100, 50, T.saturating_add(Nanos::SECOND)));
        let mut settled = hold(2, 1_000, 1_000, T.saturating_add(Nanos::SECOND));
        settled.settled = true;
        s.push_hold(settled);
        assert_eq!(s.used(LimitKind::BudgetDaily, T), 110);
        assert_eq!(s.used(LimitKind::TokensPerMinute, T), 50);
        assert_eq!(s.used(LimitKind::RequestsPerMinute, T), 0);
        // At its expiry instant a hold no longer counts.
        let at = T.saturating_add(Nanos::SECOND);
        assert_eq!(s.used(LimitKind::BudgetDaily, at), 10);
        assert_eq!(s.held(at), Held::default());
    }

    #[test]
    fn time_until_freed_merges_bucket_and_hold_expiries() {
        let kind = LimitKind::BudgetHourly;
        let lim = SubjectLimits::default().with(kind, nz(1_000));
        let mut s = SubjectState::new();
        // T is a whole number of minutes, so this bucket expires at T + 61 min.
        s.charge(&lim, Resource::Cost, T, 40);
        s.push_hold(hold(1, 30, 0, T.saturating_add(Nanos::from_secs(600))));
        s.push_hold(hold(2, 20, 0, T.saturating_add(Nanos::from_secs(7_200))));
        assert_eq!(s.time_until_freed(kind, T, 30), Some(Nanos::from_secs(600)));
        assert_eq!(
            s.time_until_freed(kind, T, 31),
            Some(Nanos::from_secs(3_660))
        );
        assert_eq!(
            s.time_until_freed(kind, T, 90),
            Some(Nanos::from_secs(7_200))
        );
        assert_eq!(s.time_until_freed(kind, T, 91), None);
        // Request windows ignore holds.
        assert_eq!(s.time_until_freed(LimitKind::RequestsPerHour, T, 1), None);
        assert_eq!(s.time_until_freed(LimitKind::MaxConcurrent, T, 1), None);
    }

    #[test]
    fn from_parts_sorts_and_deduplicates_windows() {
        let w = |a| RollingWindow::from_buckets(vec![(1, a)]);
        let s = SubjectState::from_parts(
            vec![
                (LimitKind::TokensPerHour, w(1)),
                (LimitKind::BudgetHourly, w(2)),
                (LimitKind::TokensPerHour, w(3)),
            ],
            Vec::new(),
            Vec::new(),
        );
        let kinds: Vec<_> = s.windows().map(|(k, w)| (k, w.total())).collect();
        assert_eq!(
            kinds,
            [(LimitKind::BudgetHourly, 2), (LimitKind::TokensPerHour, 1)]
        );
    }

    #[test]
    fn memory_stays_small_as_windows_fill_and_empty() {
        let lim = SubjectLimits::default()
            .with(LimitKind::BudgetDaily, nz(u64::MAX))
            .with(LimitKind::BudgetMonthly, nz(u64::MAX))
            .with(LimitKind::RequestsPerSecond, nz(u64::MAX))
            .with(LimitKind::RequestsPerMinute, nz(u64::MAX))
            .with(LimitKind::TokensPerMinute, nz(u64::MAX));
        let mut s = SubjectState::new();
        s.charge(&lim, Resource::Requests, T, 1);
        s.charge(&lim, Resource::Cost, T, 1);
        s.charge(&lim, Resource::Tokens, T, 1);
        assert_eq!(s.windows().count(), 5);
        // Five windows of one bucket each are ten 16-byte entries in one
        // buffer, rounded up to whole 128-byte grains: sixteen.
        let entry = std::mem::size_of::<(u64, u64)>();
        let fresh = std::mem::size_of::<SubjectState>() + 16 * entry;
        assert!(s.memory_bytes() <= fresh, "{} > {fresh}", s.memory_bytes());

        // A burst grows the per-minute windows to 60 buckets; once it has
        // expired, the buffer is given back down to a small one.
        for i in 0..60 {
            let t = T.saturating_add(Nanos::from_secs(i));
            s.charge(&lim, Resource::Requests, t, 1);
            s.charge(&lim, Resource::Tokens, t, 1);
        }
        assert!(s.memory_bytes() > fresh);
        s.expire(&lim, T.saturating_add(Nanos(31 * Nanos::DAY.0)));
        assert!(s.windows().all(|(_, w)| w.is_empty()));
        assert!(s.memory_bytes() <= fresh, "{} > {fresh}", s.memory_bytes());
    }

    #[test]
    fn kinds_counting_a_resource_agree_with_each_kinds_resource() {
        for resource in [
            Resource::Cost,
            Resource::Requests,
            Resource::Tokens,
            Resource::Leases,
        ] {
            let expected: Vec<_> = STORAGE_ORDER
                .into_iter()
                .filter(|k| k.resource() == resource)
                .collect();
            assert_eq!(kinds_counting(resource), expected.as_slice());
        }
    }

    #[test]
    fn remove_lease_reports_only_a_live_lease() {
        let mut s = SubjectState::new();
        s.push_lease(LeaseSlot {
            id: 1,
            expires_at: T,
        });
        s.push_lease(LeaseSlot {
            id: 2,
            expires_at: T.saturating_add(Nanos::SECOND),
        });
        assert!(!s.remove_lease(1, T), "an expired lease is not live");
        assert!(s.remove_lease(2, T));
        assert!(!s.remove_lease(2, T));
        assert!(s.leases().is_empty());
        // With no holds or leases left, the out-of-line part is freed.
        assert_eq!(s, SubjectState::new());
        assert_eq!(s.memory_bytes(), std::mem::size_of::<SubjectState>());
    }
}
