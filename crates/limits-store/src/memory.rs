//! The in-memory backend: fastest, nothing survives a restart. `max_entries`
//! bounds the subjects kept (and a separate bound the rate limit service's
//! counters); idle subjects are dropped as soon as they hold nothing, and by
//! the periodic sweep once their windows have emptied.

use limits_core::{LimitTable, Nanos, Subject, SubjectLimits};

use crate::embedded::{Bounds, Embedded, Volatile};
use crate::ids::IdGen;
use crate::secret::Secret;
use crate::{Health, Op, Outcome, Store, StoreError, SweepStats, UsageView};

/// The in-memory store: the embedded body with a journal that keeps nothing.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Embedded<Volatile>,
}

impl MemoryStore {
    /// A store of at most `max_entries` subjects (and as many counters),
    /// with a secret of its own.
    pub fn new(max_entries: usize) -> MemoryStore {
        let bounds = Bounds {
            subjects: max_entries,
            counters: max_entries,
        };
        MemoryStore::with_options(bounds, None)
    }

    /// A store with the given bounds and secret (without one, it makes its
    /// own, for the life of the process).
    pub fn with_options(bounds: Bounds, secret: Option<Secret>) -> MemoryStore {
        let secret = secret.unwrap_or_else(Secret::generate);
        MemoryStore {
            inner: Embedded::new(bounds, secret, IdGen::new(), IdGen::new(), Volatile),
        }
    }

    /// Subjects currently held.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        self.inner.apply(subjects, limits, op, now).await
    }

    async fn release(&self, lease_id: u64, now: Nanos) -> Result<bool, StoreError> {
        self.inner.release(lease_id, now).await
    }

    fn reservation_issued(&self, id: u64) -> bool {
        self.inner.reservation_issued(id)
    }

    async fn usage(
        &self,
        subject: &Subject,
        limits: &SubjectLimits,
        now: Nanos,
    ) -> Result<UsageView, StoreError> {
        Ok(self.inner.usage(subject, limits, now))
    }

    async fn sweep(&self, table: &LimitTable, now: Nanos) -> Result<SweepStats, StoreError> {
        self.inner.sweep(table, now)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn secret(&self) -> Result<std::sync::Arc<Secret>, StoreError> {
        Ok(self.inner.secret().clone())
    }

    fn health(&self) -> Health {
        Health::Writable
    }
}
