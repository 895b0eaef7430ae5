//! The in-memory backend: fastest, nothing survives a restart. `max_entries`
//! bounds the subjects kept (and a separate bound the rate limit service's
//! counters); idle subjects are dropped as soon as they hold nothing, and by
//! the periodic sweep once their windows have emptied.

use crate::embedded::{Bounds, Embedded, Volatile};
use crate::ids::IdGen;
use crate::secret::Secret;

/// The in-memory store: the embedded store with a journal that keeps
/// nothing.
pub type MemoryStore = Embedded<Volatile>;

impl Embedded<Volatile> {
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
        Embedded::with_journal(bounds, secret, IdGen::new(), IdGen::new(), |_| Volatile)
    }
}
