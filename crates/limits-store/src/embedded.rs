//! The embedded backends' common body: state hot in memory ([`Shards`]), a
//! lease index and the id generators, with a [`Journal`] hook that a durable
//! backend uses to log what each operation changed. The memory backend's
//! journal does nothing, so both backends run the very same code paths.

// What a journal is shown is read only by the durable backend's journal.
#![cfg_attr(not(feature = "sled"), allow(dead_code))]

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use ahash::AHashMap;
use limits_core::engine::{self, CheckRequest, RecordRequest, Reserve};
use limits_core::{
    Dimension, LeaseSlot, LimitTable, Nanos, Subject, SubjectLimits, SubjectState, undo,
};
use parking_lot::Mutex;

use crate::ids::{IdGen, Issued};
use crate::secret::Secret;
use crate::shards::{After, Shards};
use crate::{Op, Outcome, StoreError, SweepStats, UsageView};

/// How many subjects, and how many of the rate limit service's internal
/// counters, an embedded store keeps at most. Separate bounds, so that a
/// flood of one (counters keyed by client address, say) cannot lock out
/// the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub subjects: usize,
    pub counters: usize,
}

/// Shards of subject state; more shards than cores keeps lock waits rare.
const SHARDS: usize = 256;
/// Shards of the lease index.
const LEASE_SHARDS: usize = 64;

/// Which id generator handed out an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdKind {
    Reservation = 0,
    Lease = 1,
}

/// How an operation's change must be treated by a durable journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    /// Spend, holds or leases moved: the caller may hear of it only once it
    /// is durable.
    Durable,
    /// Only request counters moved (an unreserved check): worth keeping, not
    /// worth making a caller wait for.
    Counters,
}

/// What an operation did to the lease index.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LeaseChange<'a> {
    None,
    Added {
        id: u64,
        subjects: &'a [Subject],
        expires_at: Nanos,
    },
    Removed(u64),
}

/// Everything one operation changed, as shown to [`Journal::write`].
#[derive(Debug)]
pub(crate) struct Change<'a> {
    pub subjects: &'a [After<'a>],
    pub lease: LeaseChange<'a>,
    pub kind: ChangeKind,
}

/// How a backend makes changes outlive the process. Every hook runs in the
/// operation's own thread; `write` and `dropped` run with the subjects' shard
/// locks held, which orders the log writes of one subject.
pub(crate) trait Journal: Send + Sync + 'static {
    /// `Ok` while the journal takes writes; otherwise why not, and every
    /// operation is refused before it changes anything.
    fn writable(&self) -> Result<(), StoreError>;

    /// An undo could not be written: what is on disk may be ahead of memory
    /// until the journal has written memory out again.
    fn needs_catch_up(&self);

    /// `ids` has just handed out an id of `kind`; make sure a restarted store
    /// will still recognise it as issued.
    fn issued(&self, kind: IdKind, ids: &IdGen) -> Result<(), StoreError>;

    /// Logs what an operation changed. Returns whether the caller must wait
    /// for [`durable`](Self::durable) before answering.
    fn write(&self, change: &Change<'_>) -> Result<bool, StoreError>;

    /// Resolves once everything logged before the call is durable. `urgent`
    /// asks for a flush now rather than with the next group.
    fn durable(&self, urgent: bool) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A sweep dropped an idle subject.
    fn dropped(&self, dimension: Dimension, id: &str) -> Result<(), StoreError>;

    /// A sweep dropped an expired lease from the index.
    fn lease_expired(&self, id: u64) -> Result<(), StoreError>;
}

/// The journal of the memory backend: nothing outlives the process.
#[derive(Debug, Default)]
pub(crate) struct Volatile;

impl Journal for Volatile {
    fn writable(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn needs_catch_up(&self) {}

    fn issued(&self, _: IdKind, _: &IdGen) -> Result<(), StoreError> {
        Ok(())
    }

    fn write(&self, _: &Change<'_>) -> Result<bool, StoreError> {
        Ok(false)
    }

    fn durable(&self, _: bool) -> impl Future<Output = Result<(), StoreError>> + Send {
        std::future::ready(Ok(()))
    }

    fn dropped(&self, _: Dimension, _: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn lease_expired(&self, _: u64) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Where a lease's slots are, so ReleaseConcurrent needs only the lease id.
#[derive(Debug)]
struct LeaseEntry {
    subjects: Box<[Subject]>,
    expires_at: Nanos,
}

/// State in memory plus a journal: the body of [`MemoryStore`] and
/// [`SledStore`].
///
/// [`MemoryStore`]: crate::MemoryStore
/// [`SledStore`]: crate::SledStore
pub(crate) struct Embedded<J> {
    shards: Shards,
    leases: Box<[Mutex<AHashMap<u64, LeaseEntry>>]>,
    live_leases: AtomicUsize,
    reservations: IdGen,
    lease_ids: IdGen,
    secret: std::sync::Arc<Secret>,
    journal: J,
}

// By hand, like `Shards`: the lease index names subjects, API keys among
// them.
impl<J: std::fmt::Debug> std::fmt::Debug for Embedded<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded")
            .field("shards", &self.shards)
            .field("live_leases", &self.live_leases)
            .field("reservations", &self.reservations)
            .field("lease_ids", &self.lease_ids)
            .field("journal", &self.journal)
            .finish()
    }
}

impl<J: Journal> Embedded<J> {
    pub fn new(
        limits: Bounds,
        secret: Secret,
        reservations: IdGen,
        lease_ids: IdGen,
        journal: J,
    ) -> Self {
        Embedded {
            shards: Shards::new(SHARDS, limits.subjects, limits.counters),
            leases: (0..LEASE_SHARDS)
                .map(|_| Mutex::new(AHashMap::new()))
                .collect(),
            live_leases: AtomicUsize::new(0),
            reservations,
            lease_ids,
            secret: std::sync::Arc::new(secret),
            journal,
        }
    }

    pub fn journal(&self) -> &J {
        &self.journal
    }

    pub fn secret(&self) -> &std::sync::Arc<Secret> {
        &self.secret
    }

    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    /// Subjects currently held.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Puts recovered state in place (start-up only); `subject` is already
    /// in its stored form.
    pub fn restore_subject(&self, subject: &Subject, state: SubjectState) {
        self.shards.insert(subject, state);
    }

    /// Puts a recovered lease in the index (start-up only).
    pub fn restore_lease(&self, id: u64, subjects: Box<[Subject]>, expires_at: Nanos) {
        let entry = LeaseEntry {
            subjects,
            expires_at,
        };
        if self.lease_shard(id).lock().insert(id, entry).is_none() {
            self.live_leases.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Calls `f` with every lease index entry, one index shard locked at a
    /// time (`f` runs with it locked).
    pub fn for_each_lease(&self, mut f: impl FnMut(u64, &[Subject], Nanos)) {
        for shard in self.leases.iter() {
            for (&id, e) in shard.lock().iter() {
                f(id, &e.subjects, e.expires_at);
            }
        }
    }

    /// Calls `f` with whether lease `id` is in the index, with its index
    /// shard locked.
    pub fn with_lease_present<R>(&self, id: u64, f: impl FnOnce(bool) -> R) -> R {
        let shard = self.lease_shard(id).lock();
        f(shard.contains_key(&id))
    }

    /// The id generators, for a journal that persists their high-water
    /// marks.
    pub fn id_generators(&self) -> [&IdGen; 2] {
        [&self.reservations, &self.lease_ids]
    }

    fn lease_shard(&self, id: u64) -> &Mutex<AHashMap<u64, LeaseEntry>> {
        &self.leases[(id % LEASE_SHARDS as u64) as usize]
    }

    /// The subjects as they are stored: API keys by their keyed hash.
    fn stored(&self, subjects: &[Subject]) -> Vec<Subject> {
        subjects
            .iter()
            .map(|s| self.secret.stored_subject(s))
            .collect()
    }

    pub async fn apply(
        &self,
        subjects: &[Subject],
        limits: &[&SubjectLimits],
        op: Op<'_>,
        now: Nanos,
    ) -> Result<Outcome, StoreError> {
        // A store that cannot write refuses at once, changing nothing.
        self.journal.writable()?;
        let stored = self.stored(subjects);
        let started = std::time::Instant::now();
        let (outcome, written) = self.apply_now(&stored, limits, op, now)?;
        let result = match written {
            Ok(true) => self.journal.durable(false).await,
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => Ok(outcome),
            Err(e) => {
                // The caller hears that the call failed, so it must leave no
                // trace: a retried RecordUsage may not be charged twice.
                let elapsed = Nanos::from(started.elapsed());
                self.undo(
                    &stored,
                    limits,
                    op,
                    &outcome,
                    now,
                    now.saturating_add(elapsed),
                );
                Err(e)
            }
        }
    }

    /// The synchronous part of [`apply`](Self::apply): the decision and the
    /// journal write. The write's result says whether to wait for
    /// durability before answering; when it failed, the operation has been
    /// applied in memory and must be undone.
    fn apply_now(
        &self,
        subjects: &[Subject],
        limits: &[&SubjectLimits],
        op: Op<'_>,
        now: Nanos,
    ) -> Result<(Outcome, Result<bool, StoreError>), StoreError> {
        let journal = &self.journal;
        match op {
            Op::Check {
                attempts,
                reserve_ttl,
                tag,
                policy,
            } => {
                let reserve = match reserve_ttl {
                    Some(ttl) => {
                        let id = self.reservations.next_id();
                        journal.issued(IdKind::Reservation, &self.reservations)?;
                        Some(Reserve {
                            id,
                            expires_at: now.saturating_add(ttl),
                            tag,
                        })
                    }
                    None => None,
                };
                let req = CheckRequest {
                    attempts,
                    reserve,
                    policy,
                };
                let (out, wait) = self.shards.with_states_then(
                    subjects,
                    limits,
                    |states| engine::check(states, limits, &req, now),
                    |out, after| {
                        if !out.allowed {
                            // A denial moves nothing but expiry, which a
                            // restart re-applies anyway.
                            return Ok(false);
                        }
                        let kind = if out.reservation.is_some() {
                            ChangeKind::Durable
                        } else {
                            ChangeKind::Counters
                        };
                        journal.write(&Change {
                            subjects: after,
                            lease: LeaseChange::None,
                            kind,
                        })
                    },
                )?;
                Ok((Outcome::Check(out), wait))
            }
            Op::Record {
                reservation,
                cost,
                tokens,
                policy,
            } => {
                if let Some(id) = reservation
                    && self.reservations.issued(id) == Issued::No
                {
                    return Err(StoreError::UnknownReservation);
                }
                let req = RecordRequest {
                    reservation,
                    cost,
                    tokens,
                };
                let (out, wait) = self.shards.with_states_then(
                    subjects,
                    limits,
                    |states| engine::record(states, limits, &req, policy, now),
                    |out, after| {
                        if out.duplicate {
                            // Nothing changed, but the first record of this
                            // reservation may not be durable yet: a retry must
                            // not be acknowledged before it is.
                            return Ok(true);
                        }
                        journal.write(&Change {
                            subjects: after,
                            lease: LeaseChange::None,
                            kind: ChangeKind::Durable,
                        })
                    },
                )?;
                Ok((Outcome::Record(out), wait))
            }
            Op::Acquire { ttl } => {
                let id = self.lease_ids.next_id();
                journal.issued(IdKind::Lease, &self.lease_ids)?;
                let expires_at = now.saturating_add(ttl);
                let (out, wait) = self.shards.with_states_then(
                    subjects,
                    limits,
                    |states| engine::acquire(states, limits, id, expires_at, now),
                    |out, after| {
                        if !out.acquired {
                            return Ok(false);
                        }
                        journal.write(&Change {
                            subjects: after,
                            lease: LeaseChange::Added {
                                id,
                                subjects,
                                expires_at,
                            },
                            kind: ChangeKind::Durable,
                        })
                    },
                )?;
                let lease = out.acquired.then_some((id, expires_at));
                if out.acquired {
                    let entry = LeaseEntry {
                        subjects: subjects.into(),
                        expires_at,
                    };
                    self.lease_shard(id).lock().insert(id, entry);
                    self.live_leases.fetch_add(1, Ordering::Relaxed);
                }
                Ok((Outcome::Acquire(out, lease), wait))
            }
            Op::Hit { charges } => {
                let tokens = charges.iter().any(|c| c.tokens > 0);
                let (out, wait) = self.shards.with_states_then(
                    subjects,
                    limits,
                    |states| limits_core::hit::hit(states, limits, charges, now),
                    |out, after| {
                        // Tokens are usage and always charged: like a
                        // RecordUsage, the caller hears of them once durable.
                        // Requests alone are counters, like an unreserved
                        // check.
                        let kind = if tokens {
                            ChangeKind::Durable
                        } else if out.allowed {
                            ChangeKind::Counters
                        } else {
                            return Ok(false);
                        };
                        journal.write(&Change {
                            subjects: after,
                            lease: LeaseChange::None,
                            kind,
                        })
                    },
                )?;
                Ok((Outcome::Hit(out), wait))
            }
        }
    }

    /// Takes back an operation whose write failed: each subject loses what
    /// the operation added (see `limits_core::undo`), the lease index the
    /// lease it took, and the journal is told of the result. A journal that
    /// cannot write now catches up when it recovers.
    fn undo(
        &self,
        subjects: &[Subject],
        limits: &[&SubjectLimits],
        op: Op<'_>,
        outcome: &Outcome,
        at: Nanos,
        now: Nanos,
    ) {
        let lease = match (op, outcome) {
            (Op::Acquire { .. }, Outcome::Acquire(_, Some((id, _)))) => {
                if self.lease_shard(*id).lock().remove(id).is_some() {
                    self.live_leases.fetch_sub(1, Ordering::Relaxed);
                }
                LeaseChange::Removed(*id)
            }
            _ => LeaseChange::None,
        };
        let undone = self.shards.with_states_then(
            subjects,
            limits,
            |states| match (op, outcome) {
                (Op::Check { .. }, Outcome::Check(out)) => undo::undo_check(states, out, at, now),
                (
                    Op::Record {
                        reservation,
                        cost,
                        tokens,
                        ..
                    },
                    Outcome::Record(out),
                ) => {
                    let req = RecordRequest {
                        reservation,
                        cost,
                        tokens,
                    };
                    undo::undo_record(states, &req, out, at, now);
                }
                (Op::Acquire { .. }, Outcome::Acquire(_, Some((id, _)))) => {
                    undo::undo_acquire(states, *id);
                }
                (Op::Hit { charges }, Outcome::Hit(out)) => {
                    undo::undo_hit(states, charges, out, at, now);
                }
                _ => {}
            },
            |_, after| {
                self.journal.write(&Change {
                    subjects: after,
                    lease,
                    kind: ChangeKind::Durable,
                })
            },
        );
        if !matches!(undone, Ok((_, Ok(_)))) {
            self.journal.needs_catch_up();
        }
    }

    pub async fn release(&self, lease_id: u64, now: Nanos) -> Result<bool, StoreError> {
        self.journal.writable()?;
        let entry = self.lease_shard(lease_id).lock().remove(&lease_id);
        let Some(entry) = entry else {
            return match self.lease_ids.issued(lease_id) {
                Issued::Yes => Ok(false),
                Issued::No => Err(StoreError::UnknownLease),
            };
        };
        self.live_leases.fetch_sub(1, Ordering::Relaxed);
        let n = entry.subjects.len();
        let unlimited = [&SubjectLimits::UNLIMITED; crate::MAX_SUBJECTS];
        let mut held = [false; crate::MAX_SUBJECTS];
        let started = std::time::Instant::now();
        let (released, written) = self.shards.with_states_then(
            &entry.subjects,
            &unlimited[..n],
            |states| {
                for (h, state) in held.iter_mut().zip(states.iter()) {
                    *h = undo::holds_lease(state, lease_id);
                }
                engine::release(states, lease_id, now)
            },
            |_, after| {
                self.journal.write(&Change {
                    subjects: after,
                    lease: LeaseChange::Removed(lease_id),
                    kind: ChangeKind::Durable,
                })
            },
        )?;
        let result = match written {
            Ok(true) => self.journal.durable(false).await,
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            // Not released: the lease and its slots come back, so that the
            // caller's retry releases them durably.
            let later = now.saturating_add(Nanos::from(started.elapsed()));
            let slot = LeaseSlot {
                id: lease_id,
                expires_at: entry.expires_at,
            };
            let undone = self.shards.with_states_then(
                &entry.subjects,
                &unlimited[..n],
                |states| undo::undo_release(states, &slot, &held[..n], later),
                |_, after| {
                    self.journal.write(&Change {
                        subjects: after,
                        lease: LeaseChange::Added {
                            id: lease_id,
                            subjects: &entry.subjects,
                            expires_at: entry.expires_at,
                        },
                        kind: ChangeKind::Durable,
                    })
                },
            );
            if entry.expires_at > later
                && self
                    .lease_shard(lease_id)
                    .lock()
                    .insert(lease_id, entry)
                    .is_none()
            {
                self.live_leases.fetch_add(1, Ordering::Relaxed);
            }
            if !matches!(undone, Ok((_, Ok(_)))) {
                self.journal.needs_catch_up();
            }
            return Err(e);
        }
        Ok(released && entry.expires_at > now)
    }

    pub fn reservation_issued(&self, id: u64) -> bool {
        self.reservations.issued(id) == Issued::Yes
    }

    pub fn usage(&self, subject: &Subject, limits: &SubjectLimits, now: Nanos) -> UsageView {
        let stored = self.secret.stored_subject(subject);
        self.shards.peek(&stored, |state| UsageView {
            statuses: engine::usage(state, limits, now),
            holds: state
                .holds()
                .iter()
                .filter(|h| h.is_open(now))
                .cloned()
                .collect(),
            leases: state.leases().to_vec(),
        })
    }

    /// Expires everything, drops idle subjects and expired leases, and tells
    /// the journal what was dropped. A journal error does not stop the sweep;
    /// the first one is returned once it is done.
    pub fn sweep(&self, table: &LimitTable, now: Nanos) -> Result<SweepStats, StoreError> {
        let mut first_error = None;
        let mut note = |r: Result<(), StoreError>| {
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        };
        let swept = self
            .shards
            .sweep(table, now, |d, id| note(self.journal.dropped(d, id)));
        let mut expired = 0;
        for shard in self.leases.iter() {
            shard.lock().retain(|&id, e| {
                let live = e.expires_at > now;
                if !live {
                    expired += 1;
                    note(self.journal.lease_expired(id));
                }
                live
            });
        }
        let live = self.live_leases.fetch_sub(expired, Ordering::Relaxed) - expired;
        match first_error {
            Some(e) => Err(e),
            None => Ok(SweepStats {
                subjects: swept.kept,
                dropped: swept.dropped,
                open_reservations: swept.open_reservations,
                live_leases: live,
            }),
        }
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.journal.durable(true).await
    }
}
