//! The in-memory backend: fastest, nothing survives a restart. `max_entries`
//! bounds the subjects kept; idle subjects are dropped as soon as they hold
//! nothing, and by the periodic sweep once their windows have emptied.

use std::sync::atomic::{AtomicUsize, Ordering};

use ahash::AHashMap;
use limits_core::engine::{self, CheckRequest, RecordRequest, Reserve};
use limits_core::{LimitTable, Nanos, Subject, SubjectLimits};
use parking_lot::Mutex;

use crate::ids::{IdGen, Issued};
use crate::shards::Shards;
use crate::{Op, Outcome, Store, StoreError, SweepStats, UsageView};

/// Shards of subject state; more shards than cores keeps lock waits rare.
const SHARDS: usize = 256;
/// Shards of the lease index.
const LEASE_SHARDS: usize = 64;

/// Where a lease's slots are, so ReleaseConcurrent needs only the lease id.
#[derive(Debug)]
struct LeaseEntry {
    subjects: Box<[Subject]>,
    expires_at: Nanos,
}

/// The in-memory store.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Shards,
    leases: Box<[Mutex<AHashMap<u64, LeaseEntry>>]>,
    live_leases: AtomicUsize,
    reservations: IdGen,
    lease_ids: IdGen,
}

impl MemoryStore {
    pub fn new(max_entries: usize) -> MemoryStore {
        MemoryStore {
            shards: Shards::new(SHARDS, max_entries),
            leases: (0..LEASE_SHARDS).map(|_| Mutex::new(AHashMap::new())).collect(),
            live_leases: AtomicUsize::new(0),
            reservations: IdGen::new(),
            lease_ids: IdGen::new(),
        }
    }

    /// Subjects currently held.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lease_shard(&self, id: u64) -> &Mutex<AHashMap<u64, LeaseEntry>> {
        &self.leases[(id % LEASE_SHARDS as u64) as usize]
    }

    fn apply_sync(
        &self,
        subjects: &[Subject],
        limits: &[&SubjectLimits],
        op: Op<'_>,
        now: Nanos,
    ) -> Result<Outcome, StoreError> {
        match op {
            Op::Check { attempts, reserve_ttl, policy } => {
                let reserve = reserve_ttl.map(|ttl| Reserve {
                    id: self.reservations.next_id(),
                    expires_at: now.saturating_add(ttl),
                });
                let req = CheckRequest { attempts, reserve, policy };
                self.shards
                    .with_states(subjects, limits, |states| {
                        engine::check(states, limits, &req, now)
                    })
                    .map(Outcome::Check)
            }
            Op::Record { reservation, cost, tokens, policy } => {
                if let Some(id) = reservation
                    && self.reservations.issued(id) == Issued::No
                {
                    return Err(StoreError::UnknownReservation);
                }
                let req = RecordRequest { reservation, cost, tokens };
                self.shards
                    .with_states(subjects, limits, |states| {
                        engine::record(states, limits, &req, policy, now)
                    })
                    .map(Outcome::Record)
            }
            Op::Acquire { ttl } => {
                let id = self.lease_ids.next_id();
                let expires_at = now.saturating_add(ttl);
                let out = self.shards.with_states(subjects, limits, |states| {
                    engine::acquire(states, limits, id, expires_at, now)
                })?;
                let lease = out.acquired.then_some((id, expires_at));
                if out.acquired {
                    let entry = LeaseEntry { subjects: subjects.into(), expires_at };
                    self.lease_shard(id).lock().insert(id, entry);
                    self.live_leases.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Outcome::Acquire(out, lease))
            }
        }
    }
}

impl Store for MemoryStore {
    async fn apply(
        &self,
        subjects: &[Subject],
        limits: &[&SubjectLimits],
        op: Op<'_>,
        now: Nanos,
    ) -> Result<Outcome, StoreError> {
        self.apply_sync(subjects, limits, op, now)
    }

    async fn release(&self, lease_id: u64, now: Nanos) -> Result<bool, StoreError> {
        let entry = self.lease_shard(lease_id).lock().remove(&lease_id);
        let Some(entry) = entry else {
            return match self.lease_ids.issued(lease_id) {
                Issued::Yes => Ok(false),
                Issued::No => Err(StoreError::UnknownLease),
            };
        };
        self.live_leases.fetch_sub(1, Ordering::Relaxed);
        let unlimited = [&SubjectLimits::UNLIMITED; 3];
        let released = self.shards.with_states(
            &entry.subjects,
            &unlimited[..entry.subjects.len()],
            |states| engine::release(states, lease_id, now),
        )?;
        Ok(released && entry.expires_at > now)
    }

    fn reservation_issued(&self, id: u64) -> bool {
        self.reservations.issued(id) == Issued::Yes
    }

    async fn usage(
        &self,
        subject: &Subject,
        limits: &SubjectLimits,
        now: Nanos,
    ) -> Result<UsageView, StoreError> {
        Ok(self.shards.peek(subject, |state| UsageView {
            statuses: engine::usage(state, limits, now),
            holds: state.holds().iter().filter(|h| h.is_open(now)).cloned().collect(),
            leases: state.leases().to_vec(),
        }))
    }

    async fn sweep(&self, table: &LimitTable, now: Nanos) -> Result<SweepStats, StoreError> {
        let swept = self.shards.sweep(table, now);
        let mut expired = 0;
        for shard in self.leases.iter() {
            shard.lock().retain(|_, e| {
                let live = e.expires_at > now;
                expired += usize::from(!live);
                live
            });
        }
        let live = self.live_leases.fetch_sub(expired, Ordering::Relaxed) - expired;
        Ok(SweepStats {
            subjects: swept.kept,
            dropped: swept.dropped,
            open_reservations: swept.open_reservations,
            live_leases: live,
        })
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
