//! The mutable state of one subject: its window counters, the reservations
//! held against it and the concurrency leases it has out.

use crate::limits::{LimitKind, Resource, SubjectLimits, WINDOW_KINDS};
use crate::time::Nanos;
use crate::window::RollingWindow;

/// An estimate held against a subject's budgets and token limits by a
/// reserved check, until it is settled or expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub id: u64,
    /// Nano-dollars held.
    pub cost: u64,
    /// Tokens held.
    pub tokens: u64,
    pub expires_at: Nanos,
    /// Settled holds stay, holding nothing, until `expires_at`, so that a
    /// retried RecordUsage for the same reservation charges once.
    pub settled: bool,
}

impl Hold {
    pub fn is_open(&self, now: Nanos) -> bool {
        !self.settled && self.expires_at > now
    }
}

/// One concurrency slot held by a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSlot {
    pub id: u64,
    pub expires_at: Nanos,
}

/// Everything the engine keeps about one subject. Windows exist only for the
/// kinds the subject has (or had) limits for; an idle subject is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectState {
    /// Window counters, at most one per windowed kind, in kind order.
    windows: Vec<(LimitKind, RollingWindow)>,
    holds: Vec<Hold>,
    leases: Vec<LeaseSlot>,
}

impl SubjectState {
    pub fn new() -> SubjectState {
        SubjectState::default()
    }

    /// Rebuilds state from its parts, e.g. when a store decodes it.
    pub fn from_parts(
        mut windows: Vec<(LimitKind, RollingWindow)>,
        holds: Vec<Hold>,
        leases: Vec<LeaseSlot>,
    ) -> SubjectState {
        windows.sort_by_key(|(k, _)| *k);
        windows.dedup_by_key(|(k, _)| *k);
        SubjectState {
            windows,
            holds,
            leases,
        }
    }

    pub fn windows(&self) -> &[(LimitKind, RollingWindow)] {
        &self.windows
    }

    pub fn holds(&self) -> &[Hold] {
        &self.holds
    }

    pub fn leases(&self) -> &[LeaseSlot] {
        &self.leases
    }

    pub fn window(&self, kind: LimitKind) -> Option<&RollingWindow> {
        self.windows
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, w)| w)
    }

    fn window_mut(&mut self, kind: LimitKind) -> &mut RollingWindow {
        let pos = match self.windows.binary_search_by_key(&kind, |(k, _)| *k) {
            Ok(pos) => pos,
            Err(pos) => {
                self.windows.insert(pos, (kind, RollingWindow::new()));
                pos
            }
        };
        &mut self.windows[pos].1
    }

    /// Drops everything that has expired at `now`: window buckets, holds
    /// (settled or not) and leases, and windows that are empty and no longer
    /// limited. Every operation starts with this, so expiry is exact whether
    /// or not a background sweep has run.
    pub fn expire(&mut self, limits: &SubjectLimits, now: Nanos) {
        for (kind, w) in &mut self.windows {
            if let Some(length) = kind.window() {
                w.expire(length, now);
            }
        }
        self.windows
            .retain(|(k, w)| !w.is_empty() || limits.get(*k).is_some());
        self.holds.retain(|h| h.expires_at > now);
        self.leases.retain(|l| l.expires_at > now);
    }

    /// Whether nothing is left that must be remembered: no spend, no holds,
    /// no leases. Such a subject may be dropped by a store.
    pub fn is_idle(&self) -> bool {
        self.windows.iter().all(|(_, w)| w.is_empty())
            && self.holds.is_empty()
            && self.leases.is_empty()
    }

    /// What a window holds, including open holds for cost and token windows.
    pub fn used(&self, kind: LimitKind, now: Nanos) -> u64 {
        let counted = self.window(kind).map_or(0, RollingWindow::total);
        let held = match kind.resource() {
            Resource::Cost => self.held(now).0,
            Resource::Tokens => self.held(now).1,
            Resource::Requests => 0,
            Resource::Leases => return self.live_leases(now) as u64,
        };
        counted.saturating_add(held)
    }

    /// Open holds: `(nano-dollars, tokens)`.
    pub fn held(&self, now: Nanos) -> (u64, u64) {
        self.holds
            .iter()
            .filter(|h| h.is_open(now))
            .fold((0u64, 0u64), |(c, t), h| {
                (c.saturating_add(h.cost), t.saturating_add(h.tokens))
            })
    }

    pub fn live_leases(&self, now: Nanos) -> usize {
        self.leases.iter().filter(|l| l.expires_at > now).count()
    }

    /// When the oldest amount of a window expires (or the oldest lease).
    pub fn reset_at(&self, kind: LimitKind) -> Option<Nanos> {
        match kind.window() {
            Some(length) => self.window(kind).and_then(|w| w.reset_at(length)),
            None => self.leases.iter().map(|l| l.expires_at).min(),
        }
    }

    /// How long until `need` of a window's usage has gone, counting window
    /// expiry and the expiry of open holds (a settlement may free it sooner).
    /// `None` when even everything expiring would not free that much.
    pub fn time_until_freed(&self, kind: LimitKind, now: Nanos, need: u64) -> Option<Nanos> {
        let length = kind.window()?;
        let window = self.window(kind);
        let holds_matter = matches!(kind.resource(), Resource::Cost | Resource::Tokens);
        if !holds_matter || self.holds.iter().all(|h| !h.is_open(now)) {
            return window.and_then(|w| w.time_until_freed(length, now, need));
        }
        // Merge bucket expiries with hold expiries, both in time order.
        let mut events: Vec<(Nanos, u64)> = window
            .map(|w| w.expiries(length).collect())
            .unwrap_or_default();
        events.extend(self.holds.iter().filter(|h| h.is_open(now)).map(|h| {
            let amount = if kind.resource() == Resource::Cost {
                h.cost
            } else {
                h.tokens
            };
            (h.expires_at, amount)
        }));
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
    /// limited on (or already counts).
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
        for kind in LimitKind::WINDOWED {
            if kind.resource() != resource {
                continue;
            }
            let counted = limits.get(kind).is_some() || self.window(kind).is_some();
            if counted {
                let length = kind.window().expect("windowed kind");
                self.window_mut(kind).add(length, now, amount);
            }
        }
    }

    pub(crate) fn push_hold(&mut self, hold: Hold) {
        self.holds.push(hold);
    }

    pub(crate) fn hold_mut(&mut self, id: u64) -> Option<&mut Hold> {
        self.holds.iter_mut().find(|h| h.id == id)
    }

    pub(crate) fn push_lease(&mut self, lease: LeaseSlot) {
        self.leases.push(lease);
    }

    /// Removes a lease; true if it was live at `now`.
    pub(crate) fn remove_lease(&mut self, id: u64, now: Nanos) -> bool {
        match self.leases.iter().position(|l| l.id == id) {
            Some(pos) => self.leases.swap_remove(pos).expires_at > now,
            None => false,
        }
    }

    /// Approximate bytes this state occupies, inline and on the heap.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.windows.capacity() * std::mem::size_of::<(LimitKind, RollingWindow)>()
            + self
                .windows
                .iter()
                .map(|(_, w)| w.heap_bytes())
                .sum::<usize>()
            + self.holds.capacity() * std::mem::size_of::<Hold>()
            + self.leases.capacity() * std::mem::size_of::<LeaseSlot>()
    }
}

// Keep the per-kind array size and the window list in step.
const _: () = assert!(WINDOW_KINDS == LimitKind::WINDOWED.len());
