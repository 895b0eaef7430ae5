//! The embedded store: state hot in memory ([`Shards`]), a lease index and
//! the id generators, with a [`Journal`] that a durable backend uses to log
//! what each operation changed. The memory backend ([`MemoryStore`]) is this
//! store with a journal that keeps nothing, the sled backend
//! ([`SledStore`]) the same with sled's: both run the very same code, and
//! the journal is the only difference.
//!
//! [`MemoryStore`]: crate::MemoryStore
//! [`SledStore`]: crate::SledStore

// What a journal is shown is read only by the durable backend's journal.
#![cfg_attr(not(feature = "sled"), allow(dead_code))]

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use limits_core::engine::{self, CheckRequest, RecordRequest, Reserve};
use limits_core::hit::{Charge, HitOutcome};
use limits_core::{
    AcquireOutcome, CheckOutcome, Dimension, LeaseSlot, LimitTable, Nanos, RecordOutcome, Subject,
    SubjectLimits, SubjectState, undo,
};
use parking_lot::Mutex;

use ahash::AHashMap;

use crate::ids::{IdGen, Issued};
use crate::secret::Secret;
use crate::shards::{After, Shards};
use crate::{
    AdjustOp, Adjusted, AuditEntry, Call, CheckOp, Health, RecordOp, RecordSwap, Records, Store,
    StoreError, Swapped, SweepStats, UsageView,
};

/// How many subjects, and how many of the rate limit service's internal
/// counters, an embedded store keeps at most. Separate bounds, so that a
/// flood of one (counters keyed by client address, say) cannot lock out
/// the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The most API keys, users and teams held at once.
    pub subjects: usize,
    /// The most rate limit service counters held at once.
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
    /// A lease taken or released: written like `Durable`, but the caller is
    /// answered without waiting for the flush. A crash can then lose the
    /// leases taken since the last flush (their slots are freed early) and
    /// bring back the ones released since (held until their TTL).
    Lease,
}

/// Everything one operation changed, as shown to [`Journal::write`].
#[derive(Debug)]
pub(crate) struct Change<'a> {
    pub subjects: &'a [After<'a>],
    pub kind: ChangeKind,
}

/// One write of admin data, as shown to [`Journal::admin_write`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum AdminWrite<'a> {
    /// A record now holds this (`None`: it is gone).
    Record(&'a str, Option<&'a [u8]>),
    /// An audit event now holds this (`None`: it was dropped).
    Audit(u64, Option<&'a [u8]>),
    /// An outbox entry now holds this (`None`: it was delivered).
    Outbox(&'a str, Option<&'a [u8]>),
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
    /// will still recognise it as issued (and never hand it out again).
    /// Returns whether that took a write the caller must wait for before
    /// answering (whatever its own change is).
    fn issued(&self, kind: IdKind, ids: &IdGen) -> Result<bool, StoreError>;

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

    /// Logs admin data (records and audit events), all or nothing. Runs
    /// with the admin lock held, which orders them. Returns whether the
    /// caller must wait for [`durable`](Self::durable).
    fn admin_write(&self, writes: &[AdminWrite<'_>]) -> Result<bool, StoreError>;

    /// Whether the journal can take writes now.
    fn health(&self) -> Health;
}

/// The journal of the memory backend: nothing outlives the process.
#[derive(Debug, Default)]
pub struct Volatile;

impl Journal for Volatile {
    fn writable(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn needs_catch_up(&self) {}

    fn issued(&self, _: IdKind, _: &IdGen) -> Result<bool, StoreError> {
        Ok(false)
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

    fn admin_write(&self, _: &[AdminWrite<'_>]) -> Result<bool, StoreError> {
        Ok(false)
    }

    fn health(&self) -> Health {
        Health::Writable
    }
}

/// The admin data an embedded store holds: records by key, and the audit
/// trail, oldest first. Memory is the truth; a durable journal follows it.
#[derive(Debug, Default)]
pub(crate) struct Admin {
    pub records: BTreeMap<String, Vec<u8>>,
    /// Moves with every change of a record.
    pub version: u64,
    pub audit: VecDeque<AuditEntry>,
    /// The sequence number the next audit event gets.
    pub next_audit: u64,
    /// Alert events waiting for delivery, by key.
    pub outbox: BTreeMap<String, Vec<u8>>,
}

/// Where a lease's slots are, so ReleaseConcurrent needs only the lease id.
#[derive(Debug)]
struct LeaseEntry {
    subjects: Box<[Subject]>,
    expires_at: Nanos,
}

/// What an embedded store holds in memory. Shared with the journal's own
/// work: sled's flusher writes it out after a failed write.
pub struct State {
    shards: Shards,
    leases: Box<[Mutex<AHashMap<u64, LeaseEntry>>]>,
    live_leases: AtomicUsize,
    reservations: IdGen,
    lease_ids: IdGen,
    secret: Arc<Secret>,
    admin: Mutex<Admin>,
}

// By hand, like `Shards`: the lease index names subjects, API keys among
// them.
impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("shards", &self.shards)
            .field("live_leases", &self.live_leases)
            .field("reservations", &self.reservations)
            .field("lease_ids", &self.lease_ids)
            .finish_non_exhaustive()
    }
}

impl State {
    /// Subjects currently held.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Whether no subject is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn shards(&self) -> &Shards {
        &self.shards
    }

    /// Puts recovered state in place (start-up only); `subject` is already
    /// in its stored form.
    pub(crate) fn restore_subject(&self, subject: &Subject, state: SubjectState) {
        self.shards.insert(subject, state);
    }

    /// Puts a recovered lease in the index (start-up only).
    pub(crate) fn restore_lease(&self, id: u64, subjects: Box<[Subject]>, expires_at: Nanos) {
        let entry = LeaseEntry {
            subjects,
            expires_at,
        };
        if self.lease_shard(id).lock().insert(id, entry).is_none() {
            self.live_leases.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The admin data, locked (start-up recovery, and a journal writing
    /// memory out).
    pub(crate) fn admin(&self) -> parking_lot::MutexGuard<'_, Admin> {
        self.admin.lock()
    }

    /// The id generators, for a journal that persists their high-water
    /// marks.
    pub(crate) fn id_generators(&self) -> [&IdGen; 2] {
        [&self.reservations, &self.lease_ids]
    }

    fn lease_shard(&self, id: u64) -> &Mutex<AHashMap<u64, LeaseEntry>> {
        &self.leases[(id % LEASE_SHARDS as u64) as usize]
    }

    fn add_lease(&self, id: u64, subjects: &[Subject], expires_at: Nanos) {
        let entry = LeaseEntry {
            subjects: subjects.into(),
            expires_at,
        };
        if self.lease_shard(id).lock().insert(id, entry).is_none() {
            self.live_leases.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn remove_lease(&self, id: u64) -> Option<LeaseEntry> {
        let entry = self.lease_shard(id).lock().remove(&id);
        if entry.is_some() {
            self.live_leases.fetch_sub(1, Ordering::Relaxed);
        }
        entry
    }

    /// The subjects as they are stored: API keys by their keyed hash.
    fn stored(&self, subjects: &[Subject]) -> Vec<Subject> {
        subjects
            .iter()
            .map(|s| self.secret.stored_subject(s))
            .collect()
    }
}

/// The embedded store: decisions on state in memory, changes logged by the
/// journal `J` ([`Volatile`] for memory, sled's for the durable store).
pub struct Embedded<J> {
    // The journal first, so that it is dropped first: a durable one makes
    // its last flush (and stops its thread) while the state is still there.
    journal: J,
    state: Arc<State>,
}

impl<J: std::fmt::Debug> std::fmt::Debug for Embedded<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded")
            .field("state", &self.state)
            .field("journal", &self.journal)
            .finish()
    }
}

// The journal is how this crate's backends differ; it is not for other
// crates to implement, so the bound names a crate-private trait.
#[allow(private_bounds)]
impl<J: Journal> Embedded<J> {
    /// A store with these bounds, secret and id generators, and a journal
    /// made with the state it will log (`journal` sees it first).
    pub(crate) fn with_journal(
        bounds: Bounds,
        secret: Secret,
        reservations: IdGen,
        lease_ids: IdGen,
        journal: impl FnOnce(&Arc<State>) -> J,
    ) -> Self {
        let state = Arc::new(State {
            shards: Shards::new(SHARDS, bounds.subjects, bounds.counters),
            leases: (0..LEASE_SHARDS)
                .map(|_| Mutex::new(AHashMap::new()))
                .collect(),
            live_leases: AtomicUsize::new(0),
            reservations,
            lease_ids,
            secret: Arc::new(secret),
            admin: Mutex::new(Admin {
                next_audit: 1,
                ..Admin::default()
            }),
        });
        Embedded {
            journal: journal(&state),
            state,
        }
    }

    pub(crate) fn journal(&self) -> &J {
        &self.journal
    }

    pub(crate) fn journal_mut(&mut self) -> &mut J {
        &mut self.journal
    }

    pub(crate) fn state_arc(&self) -> &Arc<State> {
        &self.state
    }

    /// What the store holds.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Subjects currently held.
    pub fn len(&self) -> usize {
        self.state.len()
    }

    /// Whether no subject is held.
    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// Answers a call once its change is as durable as the journal makes
    /// it: when the write asked for it, waits for the journal; when that
    /// fails (or the write itself did), takes the operation back (`undo`,
    /// given the instant it is undone at) before answering the error, so
    /// that a call answered with an error leaves no trace.
    /// What every subject operation starts with: a store that cannot write
    /// refuses at once, changing nothing; then the subjects as stored, and
    /// the operation's start (the durability wait is measured from it).
    fn begin(
        &self,
        subjects: &[Subject],
    ) -> Result<(Vec<Subject>, std::time::Instant), StoreError> {
        self.journal.writable()?;
        Ok((self.state.stored(subjects), std::time::Instant::now()))
    }

    async fn settle<T>(
        &self,
        out: T,
        written: Result<bool, StoreError>,
        now: Nanos,
        started: std::time::Instant,
        undo: impl FnOnce(&T, Nanos),
    ) -> Result<T, StoreError> {
        let result = match written {
            Ok(true) => self.journal.durable(false).await,
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => Ok(out),
            Err(e) => {
                undo(&out, now.saturating_add(Nanos::from(started.elapsed())));
                Err(e)
            }
        }
    }

    /// Runs an undo over `subjects` (their limits do not matter: nothing is
    /// added) and logs the result; a journal that cannot take it catches up
    /// when it recovers.
    fn undo_with(&self, subjects: &[Subject], f: impl FnOnce(&mut [&mut SubjectState])) {
        let unlimited = [&SubjectLimits::UNLIMITED; crate::MAX_SUBJECTS];
        let undone = self.state.shards.with_states_then(
            subjects,
            &unlimited[..subjects.len()],
            f,
            |_, after| {
                self.journal.write(&Change {
                    subjects: after,
                    kind: ChangeKind::Durable,
                })
            },
        );
        if !matches!(undone, Ok((_, Ok(_)))) {
            self.journal.needs_catch_up();
        }
    }

    /// Appends an audit event (and drops the oldest beyond `keep`) to the
    /// admin data locked in `admin`, written together with `with`: all of
    /// it is in memory and in the journal, or none of it. Returns the
    /// event's sequence number and whether to wait for durability.
    fn admin_change(
        &self,
        admin: &mut Admin,
        with: Option<AdminWrite<'_>>,
        event: Option<&[u8]>,
        keep: usize,
    ) -> Result<(u64, bool), StoreError> {
        let Some(event) = event else {
            let wait = self.journal.admin_write(&Vec::from_iter(with))?;
            return Ok((0, wait));
        };
        let seq = admin.next_audit;
        let excess = (admin.audit.len() + 1).saturating_sub(keep.max(1));
        let mut writes: Vec<AdminWrite<'_>> = with.into_iter().collect();
        writes.push(AdminWrite::Audit(seq, Some(event)));
        writes.extend(
            admin
                .audit
                .iter()
                .take(excess)
                .map(|(s, _)| AdminWrite::Audit(*s, None)),
        );
        let wait = self.journal.admin_write(&writes)?;
        admin.next_audit += 1;
        admin.audit.push_back((seq, event.to_vec()));
        admin.audit.drain(..excess);
        Ok((seq, wait))
    }

    /// Takes back what [`admin_change`](Self::admin_change) did, but for
    /// the events it dropped: the record goes back to `previous` if it still
    /// holds `new`, and the audit event goes. A journal that cannot take it
    /// catches up when it recovers.
    fn admin_undo(&self, record: Option<RecordUndo<'_>>, seq: u64) {
        let mut admin = self.state.admin.lock();
        let mut writes = Vec::with_capacity(2);
        if let Some((key, new, previous)) = record
            && admin.records.get(key).map(Vec::as_slice) == new
        {
            match previous {
                Some(v) => admin.records.insert(key.to_owned(), v.to_vec()),
                None => admin.records.remove(key),
            };
            admin.version += 1;
            writes.push(AdminWrite::Record(key, previous));
        }
        if seq > 0 {
            admin.audit.retain(|(s, _)| *s != seq);
            writes.push(AdminWrite::Audit(seq, None));
        }
        if self.journal.admin_write(&writes).is_err() {
            self.journal.needs_catch_up();
        }
    }
}

/// A record to put back: its key, what the change wrote, and what it held
/// before.
type RecordUndo<'a> = (&'a str, Option<&'a [u8]>, Option<&'a [u8]>);

/// A subject as an operator sees it, from its state (expired by `now`).
pub(crate) fn view(state: &SubjectState, limits: &SubjectLimits, now: Nanos) -> UsageView {
    UsageView {
        statuses: engine::statuses(&[state], &[limits], &[], now),
        holds: state
            .holds()
            .iter()
            .filter(|h| h.is_open(now))
            .cloned()
            .collect(),
        leases: state.leases().to_vec(),
    }
}

#[allow(private_bounds)]
impl<J: Journal> Store for Embedded<J> {
    async fn check(&self, call: Call<'_, CheckOp<'_>>) -> Result<CheckOutcome, StoreError> {
        let (stored, started) = self.begin(call.subjects)?;
        let (state, limits, op, now) = (&*self.state, call.limits, call.op, call.now);
        let reserve = match op.reserve_ttl {
            Some(ttl) => {
                let id = state.reservations.next_id();
                // A reservation's own write is waited for whenever it holds
                // something; an id block taken for a denied one need not be.
                self.journal
                    .issued(IdKind::Reservation, &state.reservations)?;
                Some(Reserve {
                    id,
                    expires_at: now.saturating_add(ttl),
                    tag: op.tag,
                })
            }
            None => None,
        };
        let req = CheckRequest {
            attempts: op.attempts,
            reserve,
            policy: op.policy,
        };
        let (out, written) = state.shards.with_states_then(
            &stored,
            limits,
            |states| engine::check(states, limits, &req, now),
            |out, after| {
                if !out.allowed() {
                    // A denial moves nothing but expiry, which a restart
                    // re-applies anyway.
                    return Ok(false);
                }
                let kind = if out.reservation().is_some() {
                    ChangeKind::Durable
                } else {
                    ChangeKind::Counters
                };
                self.journal.write(&Change {
                    subjects: after,
                    kind,
                })
            },
        )?;
        self.settle(out, written, now, started, |out, later| {
            self.undo_with(&stored, |states| undo::undo_check(states, out, now, later))
        })
        .await
    }

    async fn record(&self, call: Call<'_, RecordOp<'_>>) -> Result<RecordOutcome, StoreError> {
        let (stored, started) = self.begin(call.subjects)?;
        let (state, limits, op, now) = (&*self.state, call.limits, call.op, call.now);
        if let Some(id) = op.reservation
            && state.reservations.issued(id) == Issued::No
        {
            return Err(StoreError::UnknownReservation);
        }
        let req = RecordRequest {
            reservation: op.reservation,
            cost: op.cost,
            tokens: op.tokens,
            input: op.input,
            output: op.output,
            progress: op.progress,
            sequence: op.sequence,
        };
        let (out, written) = state.shards.with_states_then(
            &stored,
            limits,
            |states| engine::record(states, limits, &req, op.policy, now),
            |out, after| {
                if out.duplicate {
                    // Nothing changed, but the first record of this
                    // reservation may not be durable yet: a retry must not
                    // be acknowledged before it is.
                    return Ok(true);
                }
                self.journal.write(&Change {
                    subjects: after,
                    kind: ChangeKind::Durable,
                })
            },
        )?;
        self.settle(out, written, now, started, |out, later| {
            self.undo_with(&stored, |states| {
                undo::undo_record(states, limits, &req, out, now, later)
            })
        })
        .await
    }

    async fn acquire(&self, call: Call<'_, Nanos>) -> Result<AcquireOutcome, StoreError> {
        let (stored, started) = self.begin(call.subjects)?;
        let (state, limits, ttl, now) = (&*self.state, call.limits, call.op, call.now);
        let id = state.lease_ids.next_id();
        // A lease is answered before its flush, but never before the block
        // its id came from is on disk: a restarted store must not hand the
        // id out again, or a holder's release would free another's slot.
        let block_taken = self.journal.issued(IdKind::Lease, &state.lease_ids)?;
        let expires_at = now.saturating_add(ttl);
        let (out, written) = state.shards.with_states_then(
            &stored,
            limits,
            |states| engine::acquire(states, limits, id, expires_at, now),
            |out, after| {
                if !out.acquired() {
                    return Ok(false);
                }
                self.journal.write(&Change {
                    subjects: after,
                    kind: ChangeKind::Lease,
                })
            },
        )?;
        let written = written.map(|wait| wait || block_taken);
        if out.acquired() {
            state.add_lease(id, &stored, expires_at);
        }
        self.settle(out, written, now, started, |out, _| {
            if let Some(lease) = out.lease() {
                state.remove_lease(lease.id);
                self.undo_with(&stored, |states| undo::undo_acquire(states, lease.id));
            }
        })
        .await
    }

    async fn hit(&self, call: Call<'_, &[Charge]>) -> Result<HitOutcome, StoreError> {
        let (stored, started) = self.begin(call.subjects)?;
        let (state, limits, charges, now) = (&*self.state, call.limits, call.op, call.now);
        let tokens = charges.iter().any(|c| c.tokens > 0);
        let (out, written) = state.shards.with_states_then(
            &stored,
            limits,
            |states| limits_core::hit::hit(states, limits, charges, now),
            |out, after| {
                // Tokens are usage and always charged: like a RecordUsage,
                // the caller hears of them once durable. Requests alone are
                // counters, like an unreserved check.
                let kind = if tokens {
                    ChangeKind::Durable
                } else if out.allowed() {
                    ChangeKind::Counters
                } else {
                    return Ok(false);
                };
                self.journal.write(&Change {
                    subjects: after,
                    kind,
                })
            },
        )?;
        self.settle(out, written, now, started, |out, later| {
            self.undo_with(&stored, |states| {
                undo::undo_hit(states, charges, out, now, later)
            })
        })
        .await
    }

    async fn release(&self, lease_id: u64, now: Nanos) -> Result<bool, StoreError> {
        self.journal.writable()?;
        let state = &*self.state;
        let Some(entry) = state.remove_lease(lease_id) else {
            return match state.lease_ids.issued(lease_id) {
                Issued::Yes => Ok(false),
                Issued::No => Err(StoreError::UnknownLease),
            };
        };
        let n = entry.subjects.len();
        let unlimited = [&SubjectLimits::UNLIMITED; crate::MAX_SUBJECTS];
        let mut held = [false; crate::MAX_SUBJECTS];
        let started = std::time::Instant::now();
        let (released, written) = state.shards.with_states_then(
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
                    kind: ChangeKind::Lease,
                })
            },
        )?;
        let slot = LeaseSlot {
            id: lease_id,
            expires_at: entry.expires_at,
        };
        let released = released && entry.expires_at > now;
        self.settle(released, written, now, started, |_, later| {
            // Not released: the lease and its slots come back, so that the
            // caller's retry releases them durably.
            if entry.expires_at > later {
                state.add_lease(lease_id, &entry.subjects, entry.expires_at);
            }
            self.undo_with(&entry.subjects, |states| {
                undo::undo_release(states, &slot, &held[..n], later)
            })
        })
        .await
    }

    async fn usage(
        &self,
        subject: &Subject,
        limits: &SubjectLimits,
        now: Nanos,
    ) -> Result<UsageView, StoreError> {
        let stored = self.state.secret.stored_subject(subject);
        self.usage_stored(&stored, limits, now).await
    }

    async fn usage_stored(
        &self,
        subject: &Subject,
        limits: &SubjectLimits,
        now: Nanos,
    ) -> Result<UsageView, StoreError> {
        Ok(self.state.shards.peek(subject, |state| {
            state.expire(limits, now);
            view(state, limits, now)
        }))
    }

    /// Expires everything, drops idle subjects and expired leases, and tells
    /// the journal what was dropped. A journal error does not stop the sweep;
    /// the first one is returned once it is done.
    async fn sweep(&self, table: &LimitTable, now: Nanos) -> Result<SweepStats, StoreError> {
        let state = &*self.state;
        let mut first_error = None;
        let mut note = |r: Result<(), StoreError>| {
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        };
        let swept = state
            .shards
            .sweep(table, now, |d, id| note(self.journal.dropped(d, id)));
        let mut expired = 0;
        for shard in state.leases.iter() {
            shard.lock().retain(|&id, e| {
                let live = e.expires_at > now;
                if !live {
                    expired += 1;
                    note(self.journal.lease_expired(id));
                }
                live
            });
        }
        let live = state.live_leases.fetch_sub(expired, Ordering::Relaxed) - expired;
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

    async fn flush(&self) -> Result<(), StoreError> {
        self.journal.durable(true).await
    }

    async fn secret(&self) -> Result<Arc<Secret>, StoreError> {
        Ok(self.state.secret.clone())
    }

    async fn adjust(
        &self,
        subject: &Subject,
        limits: &SubjectLimits,
        op: AdjustOp<'_>,
        now: Nanos,
    ) -> Result<Adjusted, StoreError> {
        self.journal.writable()?;
        let started = std::time::Instant::now();
        let subjects = std::slice::from_ref(subject);
        let (applied, written) = self.state.shards.with_states_then(
            subjects,
            &[limits],
            |states| {
                op.changes
                    .iter()
                    .map(|&(kind, change)| {
                        limits_core::adjust(states[0], limits, kind, change, now)
                    })
                    .collect::<Vec<u64>>()
            },
            |_, after| {
                let wait = self.journal.write(&Change {
                    subjects: after,
                    kind: ChangeKind::Durable,
                })?;
                Ok::<_, StoreError>((wait, view(after[0].state, limits, now)))
            },
        )?;
        let undo_state = |later: Nanos| {
            self.undo_with(subjects, |states| {
                for (&(kind, change), &moved) in op.changes.iter().zip(&applied).rev() {
                    limits_core::undo_adjust(states[0], limits, kind, change, moved, now, later);
                }
            })
        };
        let later = || now.saturating_add(Nanos::from(started.elapsed()));
        let (wait, usage) = match written {
            Ok(w) => w,
            Err(e) => {
                undo_state(later());
                return Err(e);
            }
        };
        let logged = {
            let mut admin = self.state.admin.lock();
            self.admin_change(&mut admin, None, Some(op.audit), op.audit_keep)
        };
        let (seq, audit_wait) = match logged {
            Ok(l) => l,
            Err(e) => {
                undo_state(later());
                return Err(e);
            }
        };
        if (wait || audit_wait)
            && let Err(e) = self.journal.durable(false).await
        {
            undo_state(later());
            self.admin_undo(None, seq);
            return Err(e);
        }
        Ok(Adjusted {
            applied,
            usage,
            audit_seq: seq,
        })
    }

    async fn records(&self) -> Result<Records, StoreError> {
        let admin = self.state.admin.lock();
        Ok(Records {
            version: admin.version,
            records: admin
                .records
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    async fn records_version(&self) -> Result<u64, StoreError> {
        Ok(self.state.admin.lock().version)
    }

    async fn swap_record(&self, swap: RecordSwap<'_>) -> Result<Swapped, StoreError> {
        self.journal.writable()?;
        let (seq, wait, version) = {
            let mut admin = self.state.admin.lock();
            let current = admin.records.get(swap.key).map(Vec::as_slice);
            if current != swap.expect {
                return Ok(Swapped::Conflict(current.map(<[u8]>::to_vec)));
            }
            let (seq, wait) = self.admin_change(
                &mut admin,
                Some(AdminWrite::Record(swap.key, swap.new)),
                swap.audit,
                swap.audit_keep,
            )?;
            match swap.new {
                Some(v) => admin.records.insert(swap.key.to_owned(), v.to_vec()),
                None => admin.records.remove(swap.key),
            };
            admin.version += 1;
            (seq, wait, admin.version)
        };
        if wait && let Err(e) = self.journal.durable(false).await {
            self.admin_undo(Some((swap.key, swap.new, swap.expect)), seq);
            return Err(e);
        }
        Ok(Swapped::Done {
            audit_seq: seq,
            version,
        })
    }

    async fn outbox(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let admin = self.state.admin.lock();
        Ok(admin
            .outbox
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn outbox_write(&self, entries: &[(String, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.journal.writable()?;
        let wait = {
            let mut admin = self.state.admin.lock();
            let writes: Vec<AdminWrite<'_>> = entries
                .iter()
                .map(|(k, v)| AdminWrite::Outbox(k, v.as_deref()))
                .collect();
            let wait = self.journal.admin_write(&writes)?;
            for (k, v) in entries {
                match v {
                    Some(v) => admin.outbox.insert(k.clone(), v.clone()),
                    None => admin.outbox.remove(k),
                };
            }
            wait
        };
        if wait {
            // Memory is ahead of the disk until this flush: a failed flush
            // is reported, and the next write (or recovery) writes memory
            // out again.
            self.journal.durable(false).await?;
        }
        Ok(())
    }

    async fn audit(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let admin = self.state.admin.lock();
        Ok(admin
            .audit
            .iter()
            .rev()
            .filter(|(seq, _)| before.is_none_or(|b| *seq < b))
            .take(limit)
            .cloned()
            .collect())
    }

    fn health(&self) -> Health {
        self.journal.health()
    }
}
