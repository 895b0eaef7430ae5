//! Reservation and lease ids: unique, cheap, and recognisable as our own.
//!
//! An id is `prefix << 32 | sequence`, with a random prefix per store
//! instance. That tells "issued here, since settled or expired" (harmless to
//! release or record again) from "never issued" (an error) without keeping a
//! tombstone per id.

use std::sync::atomic::{AtomicU64, Ordering};

/// Allocates ids for one store instance.
#[derive(Debug)]
pub struct IdGen {
    prefix: u64,
    next: AtomicU64,
}

/// Whether an id came from this generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issued {
    /// It was issued here (it may since have been settled or expired).
    Yes,
    /// It was never issued here (or by another instance).
    No,
}

impl IdGen {
    /// A generator with a random prefix.
    pub fn new() -> IdGen {
        IdGen::with_prefix(u64::from(rand::random::<u32>() | 1), 1)
    }

    /// A generator that continues from a persisted prefix and sequence.
    pub fn with_prefix(prefix: u64, next: u64) -> IdGen {
        IdGen {
            prefix: prefix & 0xffff_ffff,
            next: AtomicU64::new(next.max(1)),
        }
    }

    /// This instance's 32-bit prefix, the high half of every id it issues.
    pub fn prefix(&self) -> u64 {
        self.prefix
    }

    /// The next sequence number to be handed out.
    pub fn next_sequence(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// A new id: the prefix, then the next sequence number.
    pub fn next_id(&self) -> u64 {
        // The sequence wraps after 2^32 ids; by then the oldest are long
        // expired.
        let seq = self.next.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff;
        self.prefix << 32 | seq
    }

    /// Whether `id` carries this prefix and a sequence number already handed out.
    pub fn issued(&self, id: u64) -> Issued {
        let seq = id & 0xffff_ffff;
        if id >> 32 == self.prefix && seq != 0 && seq < self.next.load(Ordering::Relaxed) {
            Issued::Yes
        } else {
            Issued::No
        }
    }
}

impl Default for IdGen {
    fn default() -> IdGen {
        IdGen::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_its_own_ids() {
        let g = IdGen::with_prefix(7, 1);
        let a = g.next_id();
        assert_eq!(g.issued(a), Issued::Yes);
        assert_eq!(g.issued(a + 1), Issued::No, "not handed out yet");
        assert_eq!(g.issued(8 << 32 | 1), Issued::No, "another instance");
        assert_eq!(g.issued(0), Issued::No);
    }
}
