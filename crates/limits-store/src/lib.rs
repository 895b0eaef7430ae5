//! Where the engine's state lives. The [`Store`] trait has one atomic
//! operation per kind of call over the state of a request's subjects —
//! load their state, apply the engine's pure decision, write back all or
//! nothing — each with its own outcome type, plus what leases, expiry and
//! introspection need.
//!
//! Operations are described as data ([`CheckOp`], [`RecordOp`], a TTL,
//! charges), not as closures, so that a backend that cannot run Rust next
//! to its data (a Redis script) can implement them too; the embedded store
//! ([`Embedded`]: [`MemoryStore`], [`SledStore`]) runs limits-core's
//! functions under its locks.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(any(feature = "sled", feature = "redis"))]
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

use limits_core::hit::{Charge, HitOutcome};
use limits_core::{
    AcquireOutcome, Adjustment, Attempt, CheckOutcome, Hold, LeaseSlot, LimitKind, LimitStatus,
    LimitTable, NanoUsd, Nanos, Policy, RecordOutcome,
};
use limits_core::{Subject, SubjectLimits};

#[cfg(feature = "redis")]
pub use self::redis::{RedisOpenError, RedisOptions, RedisStore};
#[cfg(feature = "sled")]
pub use self::sled::{OpenError, SledJournal, SledOptions, SledStore};
pub use embedded::{Bounds, Embedded, State, Volatile};
pub use ids::{IdGen, Issued};
pub use memory::MemoryStore;
pub use secret::{INTERNAL, MIN_SECRET_BYTES, Secret, SecretTooShort};
pub use shards::MAX_SUBJECTS;

/// One operation: its subjects (1 to [`MAX_SUBJECTS`], distinct, raw ids),
/// their limits in the same order, what it does, and when.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a, O> {
    /// The subjects, in request order.
    pub subjects: &'a [Subject],
    /// Each subject's limits, in the same order.
    pub limits: &'a [&'a SubjectLimits],
    /// What the operation does.
    pub op: O,
    /// The caller's clock (the Redis store reads Redis's own instead).
    pub now: Nanos,
}

/// What a check asks of the store.
#[derive(Debug, Clone, Copy)]
pub struct CheckOp<'a> {
    /// The model asked for and, in downgrade mode, its cheaper alternatives.
    pub attempts: &'a [Attempt],
    /// Hold the estimate this long, if set.
    pub reserve_ttl: Option<Nanos>,
    /// Kept with the hold ([`Hold::tag`]).
    pub tag: u32,
    /// Enforcement mode, alert threshold and grace: how a check decides.
    pub policy: &'a Policy,
}

/// What a usage record asks of the store.
#[derive(Debug, Clone, Copy)]
pub struct RecordOp<'a> {
    /// The reservation being settled, if any.
    pub reservation: Option<u64>,
    /// The actual cost, charged to every budget.
    pub cost: NanoUsd,
    /// The actual tokens, charged to every token limit.
    pub tokens: u64,
    /// The actual input (prompt) tokens, charged to input token limits.
    pub input: u64,
    /// The actual output (completion) tokens, charged to output token
    /// limits.
    pub output: u64,
    /// Set for a progress record of a streamed request: the amounts are the
    /// usage so far and the reservation stays open (see
    /// [`limits_core::record`]).
    pub progress: Option<limits_core::Progress>,
    /// The record's number in its reservation's sequence, or 0.
    pub sequence: u32,
    /// Grace and policy for the windows charged.
    pub policy: &'a Policy,
}

/// An operator's change to one subject's usage (the admin API's adjust
/// and reset): each change applies to one window, all of them or none.
#[derive(Debug, Clone, Copy)]
pub struct AdjustOp<'a> {
    /// The changes, each to the window of its kind.
    pub changes: &'a [(LimitKind, Adjustment)],
    /// The audit event kept with the change, in the same write.
    pub audit: &'a [u8],
    /// How many audit events are kept at most; older ones are dropped.
    pub audit_keep: usize,
}

/// What an adjustment did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adjusted {
    /// What each change moved (added for a debit, taken for a credit or a
    /// reset), in the order of [`AdjustOp::changes`].
    pub applied: Vec<u64>,
    /// The subject after the change.
    pub usage: UsageView,
    /// The audit event's sequence number.
    pub audit_seq: u64,
}

/// A change to one admin record ([`Store::swap_record`]): made only if the
/// record is still what the caller read.
#[derive(Debug, Clone, Copy)]
pub struct RecordSwap<'a> {
    /// The record's key (opaque to the store).
    pub key: &'a str,
    /// What the record must hold now; `None`: it must not exist.
    pub expect: Option<&'a [u8]>,
    /// What it holds afterwards; `None` removes it.
    pub new: Option<&'a [u8]>,
    /// The audit event kept with the change, in the same write (`None`
    /// for housekeeping, such as dropping an entry that has expired).
    pub audit: Option<&'a [u8]>,
    /// How many audit events are kept at most; older ones are dropped.
    pub audit_keep: usize,
}

/// How a [`RecordSwap`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swapped {
    /// Made; the audit event has this sequence number (0 without one).
    Done {
        /// The audit event's sequence number.
        audit_seq: u64,
        /// The records' version this change made: one more than before
        /// it, so a caller whose copy was at the version before knows it
        /// is current without reading the records again.
        version: u64,
    },
    /// Not made: the record holds this instead of what was expected.
    Conflict(Option<Vec<u8>>),
}

/// Every admin record, and the version they are at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    /// Changes whenever a record does (anywhere, for a shared store): a
    /// replica that polls [`Store::records_version`] reloads when it moves.
    pub version: u64,
    /// Key and value of each record, by key.
    pub records: Vec<(String, Vec<u8>)>,
}

/// One audit event as stored: its sequence number (rising) and bytes.
pub type AuditEntry = (u64, Vec<u8>);

/// One subject as an operator sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageView {
    /// Every configured limit: its size, what it holds and when it resets.
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
    /// Writes are accepted.
    Writable,
    /// Every write is refused until the store recovers by itself;
    /// `reason` is a short label (`no_space`, `io`, ...) and `detail` the
    /// error.
    Unwritable {
        /// A short label: `no_space`, `io`, ...
        reason: &'static str,
        /// The error, as the store reported it.
        detail: String,
    },
}

/// The engine's state, behind one atomic operation per kind of call.
///
/// Each operation (a [`Call`]) names 1 to [`MAX_SUBJECTS`] distinct
/// subjects (raw ids: the store keys API keys by their hash itself) with
/// their limits, and applies to all of them or to none. Every method takes `now` from the
/// caller (a backend with its own clock may substitute it), and returns only
/// once the change is as durable as the backend promises; an operation
/// answered with an error changed nothing.
pub trait Store: Send + Sync + 'static {
    /// Decides a request and, if allowed, counts it (and holds its
    /// estimate, with `reserve_ttl`).
    fn check(
        &self,
        call: Call<'_, CheckOp<'_>>,
    ) -> impl Future<Output = Result<CheckOutcome, StoreError>> + Send;

    /// Charges actual usage, settling a reservation if one is named.
    fn record(
        &self,
        call: Call<'_, RecordOp<'_>>,
    ) -> impl Future<Output = Result<RecordOutcome, StoreError>> + Send;

    /// Takes a concurrency slot on every limited subject for the TTL given.
    fn acquire(
        &self,
        call: Call<'_, Nanos>,
    ) -> impl Future<Output = Result<AcquireOutcome, StoreError>> + Send;

    /// Charges each subject requests (all or nothing) and tokens (always),
    /// one charge per subject in order: the rate limit service path.
    fn hit(
        &self,
        call: Call<'_, &[Charge]>,
    ) -> impl Future<Output = Result<HitOutcome, StoreError>> + Send;

    /// Gives back a lease's slots. `Ok(false)` when the lease was issued here
    /// but already released or expired; `UnknownLease` when it never was.
    fn release(
        &self,
        lease_id: u64,
        now: Nanos,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// One subject's windows, open reservations and live leases.
    fn usage(
        &self,
        subject: &Subject,
        limits: &SubjectLimits,
        now: Nanos,
    ) -> impl Future<Output = Result<UsageView, StoreError>> + Send;

    /// [`usage`](Self::usage) of a subject named in its stored form (an
    /// API key by its keyed hash), as the admin API may name it.
    fn usage_stored(
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

    /// Adjusts one subject's usage, as an operator asks (all changes or
    /// none), and keeps the audit event with it. `subject` is in its stored
    /// form ([`Secret::stored_subject`]): the admin API may name an API key
    /// by its keyed hash only.
    fn adjust(
        &self,
        subject: &Subject,
        limits: &SubjectLimits,
        op: AdjustOp<'_>,
        now: Nanos,
    ) -> impl Future<Output = Result<Adjusted, StoreError>> + Send;

    /// Every admin record (runtime limits, budget increases), opaque to the
    /// store, with their version.
    fn records(&self) -> impl Future<Output = Result<Records, StoreError>> + Send;

    /// The version of the admin records: cheap, for polling.
    fn records_version(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Changes one admin record if it still holds what the caller read
    /// (compare and swap), keeping the audit event with it; acknowledged
    /// only once durable.
    fn swap_record(
        &self,
        swap: RecordSwap<'_>,
    ) -> impl Future<Output = Result<Swapped, StoreError>> + Send;

    /// Up to `limit` audit events, newest first, older than `before` (a
    /// sequence number) when given.
    fn audit(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, StoreError>> + Send;

    /// Alert events waiting for delivery (opaque values by key), in key
    /// order. The sled store keeps them across restarts and `kill -9`, the
    /// memory store while it runs; Redis keeps none (the replica whose
    /// decision made an event delivers it).
    fn outbox(&self) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>, StoreError>> + Send;

    /// Keeps (`Some`) or forgets (`None`) outbox entries, all or nothing;
    /// answered once durable where the store is durable.
    fn outbox_write(
        &self,
        entries: &[(String, Option<Vec<u8>>)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether the store can take writes now.
    fn health(&self) -> Health;
}

/// The backend chosen at start-up. The server is written against [`Store`];
/// this enum lets it pick a backend from config without dynamic dispatch.
#[derive(Debug)]
// One per process, made once: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum AnyStore {
    /// The in-memory store (`backend: memory`).
    Memory(MemoryStore),
    #[cfg(feature = "sled")]
    /// The durable embedded store (`backend: sled`).
    Sled(SledStore),
    #[cfg(feature = "redis")]
    /// The shared store (`backend: redis`).
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

/// Implements [`Store`] for [`AnyStore`] by handing each call to the backend
/// inside: one line per method.
macro_rules! forward {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $out:ty;)*) => {
        impl Store for AnyStore {
            $(
                async fn $name(&self, $($arg: $ty),*) -> Result<$out, StoreError> {
                    dispatch!(self, s => s.$name($($arg),*).await)
                }
            )*

            fn health(&self) -> Health {
                dispatch!(self, s => s.health())
            }
        }
    };
}

forward! {
    check(call: Call<'_, CheckOp<'_>>) -> CheckOutcome;
    record(call: Call<'_, RecordOp<'_>>) -> RecordOutcome;
    acquire(call: Call<'_, Nanos>) -> AcquireOutcome;
    hit(call: Call<'_, &[Charge]>) -> HitOutcome;
    release(lease_id: u64, now: Nanos) -> bool;
    usage(subject: &Subject, limits: &SubjectLimits, now: Nanos) -> UsageView;
    usage_stored(subject: &Subject, limits: &SubjectLimits, now: Nanos) -> UsageView;
    sweep(table: &LimitTable, now: Nanos) -> SweepStats;
    flush() -> ();
    secret() -> Arc<Secret>;
    adjust(subject: &Subject, limits: &SubjectLimits, op: AdjustOp<'_>, now: Nanos) -> Adjusted;
    records() -> Records;
    records_version() -> u64;
    swap_record(swap: RecordSwap<'_>) -> Swapped;
    audit(before: Option<u64>, limit: usize) -> Vec<AuditEntry>;
    outbox() -> Vec<(String, Vec<u8>)>;
    outbox_write(entries: &[(String, Option<Vec<u8>>)]) -> ();
}
