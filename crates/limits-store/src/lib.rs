//! Where the engine's state lives. The [`Store`] trait is one narrow atomic
//! operation over the state of the 1–3 subjects of a request — load their
//! state, apply the engine's pure decision, write back all or nothing — plus
//! what reservations, leases, expiry and introspection need.
//!
//! The operation is described as data ([`Op`]), not as a closure, so that a
//! backend that cannot run Rust next to its data (a Redis script) can
//! implement it too; the embedded backends run limits-core's functions under
//! their locks.

#![forbid(unsafe_code)]

#[cfg(feature = "sled")]
mod codec;
mod embedded;
mod ids;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
mod secret;
mod shards;
#[cfg(feature = "sled")]
pub mod sled;

use std::future::Future;
use std::sync::Arc;

use limits_core::engine::{AcquireOutcome, CheckOutcome, RecordOutcome};
use limits_core::hit::{Charge, HitOutcome};
use limits_core::{Attempt, Hold, LeaseSlot, LimitStatus, LimitTable, NanoUsd, Nanos, Policy};
use limits_core::{Subject, SubjectLimits};

#[cfg(feature = "redis")]
pub use self::redis::{RedisOpenError, RedisOptions, RedisStore};
#[cfg(feature = "sled")]
pub use self::sled::{OpenError, SledOptions, SledStore};
pub use embedded::Bounds;
pub use ids::{IdGen, Issued};
pub use memory::MemoryStore;
pub use secret::{INTERNAL, MIN_SECRET_BYTES, Secret, SecretTooShort};
pub use shards::MAX_SUBJECTS;

/// What one store call does to the subjects of a request.
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    /// Decide a request; with `reserve_ttl`, hold its estimate that long,
    /// keeping `tag` with the hold ([`Hold::tag`]).
    Check {
        attempts: &'a [Attempt],
        reserve_ttl: Option<Nanos>,
        tag: u32,
        policy: &'a Policy,
    },
    /// Charge actual usage, settling a reservation if one is named.
    Record {
        reservation: Option<u64>,
        cost: NanoUsd,
        tokens: u64,
        policy: &'a Policy,
    },
    /// Take a concurrency slot on every limited subject for `ttl`.
    Acquire { ttl: Nanos },
    /// Charge each subject requests (all or nothing) and tokens (always), one
    /// charge per subject in order: the rate limit service path.
    Hit { charges: &'a [Charge] },
}

/// The result of an [`Op`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Check(CheckOutcome),
    Record(RecordOutcome),
    /// With the lease id and its expiry when acquired.
    Acquire(AcquireOutcome, Option<(u64, Nanos)>),
    Hit(HitOutcome),
}

/// One subject as an operator sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageView {
    pub statuses: Vec<LimitStatus>,
    /// Open (unsettled, unexpired) reservations.
    pub holds: Vec<Hold>,
    /// Live leases.
    pub leases: Vec<LeaseSlot>,
}

/// What a sweep found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Subjects kept after the sweep.
    pub subjects: usize,
    /// Idle subjects dropped.
    pub dropped: usize,
    /// Open reservations (counted per subject holding them).
    pub open_reservations: usize,
    /// Live leases (counted once per lease).
    pub live_leases: usize,
}

/// Why a store call failed. Each says whether retrying can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The reservation id was never issued by this store.
    #[error("unknown reservation id")]
    UnknownReservation,
    /// The lease id was never issued by this store.
    #[error("unknown lease id")]
    UnknownLease,
    /// Keeping another subject would exceed `max_entries`; nothing is dropped
    /// to make room, because dropping a subject would forget its spend.
    #[error("the store already holds its maximum of {0} subjects")]
    Full(usize),
    /// Keeping another of the rate limit service's counters would exceed
    /// their own bound (kept apart from subjects, so that a flood of
    /// counters cannot lock out budgets).
    #[error("the store already holds its maximum of {0} rate limit counters")]
    CountersFull(usize),
    /// The backend cannot take writes or reads right now (I/O error, full
    /// disk, unreachable server). Transient: a retry may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend answered something this build cannot understand (a reply
    /// that does not decode, an invariant broken). Not transient, and never
    /// a reason to allow: a caller configured to fail open on an outage
    /// still fails here.
    #[error("store error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Full(_) | StoreError::CountersFull(_)
        )
    }
}

/// Whether a store can take writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Writable,
    /// Every write is refused until the store recovers by itself;
    /// `reason` is a short label (`no_space`, `io`, ...) and `detail` the
    /// error.
    Unwritable {
        reason: &'static str,
        detail: String,
    },
}

/// The engine's state, behind one narrow atomic operation.
///
/// Every method takes `now` from the caller (a backend with its own clock may
/// substitute it). Implementations must apply an [`Op`] to all its subjects
/// or to none, and must return only once the change is as durable as the
/// backend promises.
pub trait Store: Send + Sync + 'static {
    /// Applies `op` to the subjects (1 to [`MAX_SUBJECTS`], all distinct)
    /// atomically.
    fn apply(
        &self,
        subjects: &[Subject],
        limits: &[&SubjectLimits],
        op: Op<'_>,
        now: Nanos,
    ) -> impl Future<Output = Result<Outcome, StoreError>> + Send;

    /// Gives back a lease's slots. `Ok(false)` when the lease was issued here
    /// but already released or expired; `UnknownLease` when it never was.
    fn release(
        &self,
        lease_id: u64,
        now: Nanos,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Whether a reservation id was issued by this store (it may have been
    /// settled or expired since).
    fn reservation_issued(&self, id: u64) -> bool;

    /// One subject's windows, open reservations and live leases.
    fn usage(
        &self,
        subject: &Subject,
        limits: &SubjectLimits,
        now: Nanos,
    ) -> impl Future<Output = Result<UsageView, StoreError>> + Send;

    /// Expires what has expired and drops idle subjects. Expiry is also
    /// applied lazily by every operation, so a sweep only reclaims memory and
    /// refreshes counts; it never changes a decision.
    fn sweep(
        &self,
        table: &LimitTable,
        now: Nanos,
    ) -> impl Future<Output = Result<SweepStats, StoreError>> + Send;

    /// Makes everything acknowledged so far durable (a no-op where nothing is).
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The server secret the store's subjects are keyed with, for the
    /// caller's own derived keys (reservation and lease ids).
    /// May change at runtime: a Redis store that finds Redis has lost its
    /// data settles again, so callers ask each time rather than keep it.
    fn secret(&self) -> impl Future<Output = Result<Arc<Secret>, StoreError>> + Send;

    /// Whether the store can take writes now.
    fn health(&self) -> Health;
}

/// The backend chosen at start-up. The server is written against [`Store`];
/// this enum lets it pick a backend from config without dynamic dispatch.
#[derive(Debug)]
// One per process, made once: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum AnyStore {
    Memory(MemoryStore),
    #[cfg(feature = "sled")]
    Sled(SledStore),
    #[cfg(feature = "redis")]
    Redis(RedisStore),
}

/// `$e` with `$s` bound to the backend inside `$store` (an [`AnyStore`]).
macro_rules! dispatch {
    ($store:expr, $s:ident => $e:expr) => {
        match $store {
            AnyStore::Memory($s) => $e,
            #[cfg(feature = "sled")]
            AnyStore::Sled($s) => $e,
            #[cfg(feature = "redis")]
            AnyStore::Redis($s) => $e,
        }
    };
}

impl Store for AnyStore {
    async fn apply(
        &self,
        subjects: &[Subject],
        limits: &[&SubjectLimits],
        op: Op<'_>,
        now: Nanos,
    ) -> Result<Outcome, StoreError> {
        dispatch!(self, s => s.apply(subjects, limits, op, now).await)
    }

    async fn release(&self, lease_id: u64, now: Nanos) -> Result<bool, StoreError> {
        dispatch!(self, s => s.release(lease_id, now).await)
    }

    fn reservation_issued(&self, id: u64) -> bool {
        dispatch!(self, s => s.reservation_issued(id))
    }

    async fn usage(
        &self,
        subject: &Subject,
        limits: &SubjectLimits,
        now: Nanos,
    ) -> Result<UsageView, StoreError> {
        dispatch!(self, s => s.usage(subject, limits, now).await)
    }

    async fn sweep(&self, table: &LimitTable, now: Nanos) -> Result<SweepStats, StoreError> {
        dispatch!(self, s => s.sweep(table, now).await)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.flush().await)
    }

    async fn secret(&self) -> Result<Arc<Secret>, StoreError> {
        dispatch!(self, s => s.secret().await)
    }

    fn health(&self) -> Health {
        dispatch!(self, s => s.health())
    }
}
