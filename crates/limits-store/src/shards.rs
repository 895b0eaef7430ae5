//! The in-memory state table shared by the embedded backends: subjects
//! spread over many independently locked shards, so concurrent operations on
//! different subjects rarely meet on the same lock.

// What the table shows a journal is read only by the durable backend.
#![cfg_attr(not(feature = "sled"), allow(dead_code))]

use std::sync::atomic::{AtomicUsize, Ordering};

use ahash::AHashMap;
use limits_core::{Dimension, LimitTable, Nanos, Subject, SubjectLimits, SubjectState};
use parking_lot::{Mutex, MutexGuard};

use crate::StoreError;

/// The most subjects one operation may name: a gateway's request names at
/// most four (one per dimension); a rate limit service call may name more.
pub const MAX_SUBJECTS: usize = 8;

/// One shard: a map per dimension. An operation takes its subjects' states
/// out of the maps for its duration, so several may come from one map.
#[derive(Debug, Default)]
pub(crate) struct Shard {
    maps: [AHashMap<Box<str>, SubjectState>; limits_core::limits::DIMENSIONS],
}

/// What an operation over one shard's subjects saw.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ShardSweep {
    pub kept: usize,
    pub dropped: usize,
    pub open_reservations: usize,
}

// Debug is written by hand: subject ids include API keys, which must never
// reach a log line through a `{:?}`.
pub(crate) struct Shards {
    shards: Box<[Mutex<Shard>]>,
    hasher: ahash::RandomState,
    /// Held, and the most kept, per [`Class`].
    entries: [AtomicUsize; 2],
    max: [usize; 2],
}

/// What a stored id is: a gateway's subject, or one of the rate limit
/// service's internal counters. Each class has its own bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Subject = 0,
    Counter = 1,
}

impl Class {
    fn of(dimension: Dimension, id: &str) -> Class {
        if dimension == Dimension::ApiKey && id.starts_with(crate::INTERNAL) {
            Class::Counter
        } else {
            Class::Subject
        }
    }
}

/// One subject's state as an operation left it, shown to the `then` hook of
/// [`Shards::with_states_then`] before it is written back.
#[derive(Debug)]
pub(crate) struct After<'a> {
    pub subject: &'a Subject,
    pub state: &'a SubjectState,
    /// Whether the table held the subject before the operation; a subject
    /// that was not held and is idle after it was never written anywhere.
    pub was_stored: bool,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("shards", &self.shards.len())
            .field("entries", &self.entries)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

/// A subject's state taken out of its map for the length of an operation,
/// with the key it was stored under (kept to reinsert without allocating).
type Taken = (Option<Box<str>>, SubjectState);

impl Shards {
    pub fn new(shards: usize, max_subjects: usize, max_counters: usize) -> Shards {
        Shards {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            hasher: ahash::RandomState::new(),
            entries: Default::default(),
            max: [max_subjects, max_counters],
        }
    }

    /// Subjects and counters held.
    pub fn len(&self) -> usize {
        self.entries.iter().map(|e| e.load(Ordering::Relaxed)).sum()
    }

    fn count(&self, class: Class) -> &AtomicUsize {
        &self.entries[class as usize]
    }

    fn shard_of(&self, s: &Subject) -> usize {
        let h = self.hasher.hash_one((s.dimension as u8, s.id.as_str()));
        (h % self.shards.len() as u64) as usize
    }

    /// Runs `f` over the states of `subjects` (at most one per dimension)
    /// with their shards locked, then writes back every state that still
    /// holds something and drops the ones that are idle. `f` sees an empty
    /// state for a subject the table does not hold; a subject is only added
    /// if it ends up holding something, and only within `max_entries`.
    ///
    /// Between the two, with the locks still held, `then` sees the result and
    /// every subject's state as `f` left it. A durable backend writes those
    /// states there, so that the writes of one subject reach its log in the
    /// order the operations were applied.
    pub fn with_states_then<R, T>(
        &self,
        subjects: &[Subject],
        limits: &[&SubjectLimits],
        f: impl FnOnce(&mut [&mut SubjectState]) -> R,
        then: impl FnOnce(&R, &[After<'_>]) -> T,
    ) -> Result<(R, T), StoreError> {
        let n = subjects.len();
        assert!(
            (1..=MAX_SUBJECTS).contains(&n),
            "1 to {MAX_SUBJECTS} subjects"
        );
        debug_assert!(
            (0..n).all(|i| (i + 1..n).all(|j| subjects[i] != subjects[j])),
            "subjects must be distinct"
        );

        // Lock the shards in ascending order so that two operations can never
        // wait on each other.
        let mut index = [0usize; MAX_SUBJECTS];
        for (i, s) in subjects.iter().enumerate() {
            index[i] = self.shard_of(s);
        }
        let mut sorted = index;
        sorted[..n].sort_unstable();
        let mut order = [usize::MAX; MAX_SUBJECTS];
        let mut guards: [Option<MutexGuard<'_, Shard>>; MAX_SUBJECTS] =
            std::array::from_fn(|_| None);
        let mut locked = 0;
        for &s in &sorted[..n] {
            if locked == 0 || order[locked - 1] != s {
                guards[locked] = Some(self.shards[s].lock());
                order[locked] = s;
                locked += 1;
            }
        }
        let slot_of = |shard: usize| order[..locked].iter().position(|&s| s == shard).unwrap();

        let mut taken: [Taken; MAX_SUBJECTS] = Default::default();
        for (i, s) in subjects.iter().enumerate() {
            let guard = guards[slot_of(index[i])].as_mut().unwrap();
            if let Some((k, v)) = guard.maps[s.dimension.index()].remove_entry(s.id.as_str()) {
                taken[i] = (Some(k), v);
            }
        }

        let mut new = [0usize; 2];
        for i in 0..n {
            if taken[i].0.is_none() && !limits[i].is_unlimited() {
                new[Class::of(subjects[i].dimension, &subjects[i].id) as usize] += 1;
            }
        }
        for class in [Class::Subject, Class::Counter] {
            let c = class as usize;
            if new[c] > 0 && self.count(class).load(Ordering::Relaxed) + new[c] > self.max[c] {
                self.put_back(subjects, &index, &mut guards, &slot_of, &mut taken);
                return Err(match class {
                    Class::Subject => StoreError::Full(self.max[c]),
                    Class::Counter => StoreError::CountersFull(self.max[c]),
                });
            }
        }

        // The common requests name one to three subjects: pass them without
        // allocating. Rate limit service calls with more descriptors pay for
        // a small vector.
        let out = {
            let [t0, t1, t2, rest @ ..] = &mut taken;
            match n {
                1 => f(&mut [&mut t0.1]),
                2 => f(&mut [&mut t0.1, &mut t1.1]),
                3 => f(&mut [&mut t0.1, &mut t1.1, &mut t2.1]),
                _ => {
                    let mut all: Vec<&mut SubjectState> = vec![&mut t0.1, &mut t1.1, &mut t2.1];
                    all.extend(rest.iter_mut().take(n - 3).map(|t| &mut t.1));
                    f(&mut all)
                }
            }
        };
        let after = {
            let at = |i: usize| After {
                subject: &subjects[i],
                state: &taken[i].1,
                was_stored: taken[i].0.is_some(),
            };
            match n {
                1 => then(&out, &[at(0)]),
                2 => then(&out, &[at(0), at(1)]),
                3 => then(&out, &[at(0), at(1), at(2)]),
                _ => then(&out, &(0..n).map(at).collect::<Vec<_>>()),
            }
        };
        self.put_back(subjects, &index, &mut guards, &slot_of, &mut taken);
        Ok((out, after))
    }

    fn put_back(
        &self,
        subjects: &[Subject],
        index: &[usize; MAX_SUBJECTS],
        guards: &mut [Option<MutexGuard<'_, Shard>>; MAX_SUBJECTS],
        slot_of: &impl Fn(usize) -> usize,
        taken: &mut [Taken; MAX_SUBJECTS],
    ) {
        for (i, s) in subjects.iter().enumerate() {
            let (key, state) = std::mem::take(&mut taken[i]);
            let map = &mut guards[slot_of(index[i])].as_mut().unwrap().maps[s.dimension.index()];
            let count = self.count(Class::of(s.dimension, &s.id));
            match (key, state.is_idle()) {
                (Some(key), false) => {
                    map.insert(key, state);
                }
                (None, false) => {
                    map.insert(s.id.as_str().into(), state);
                    count.fetch_add(1, Ordering::Relaxed);
                }
                (Some(_), true) => {
                    count.fetch_sub(1, Ordering::Relaxed);
                }
                (None, true) => {}
            }
        }
    }

    /// Reads (and expires) one subject's state.
    pub fn peek<R>(&self, subject: &Subject, f: impl FnOnce(&mut SubjectState) -> R) -> R {
        let mut shard = self.shards[self.shard_of(subject)].lock();
        match shard.maps[subject.dimension.index()].get_mut(subject.id.as_str()) {
            Some(state) => f(state),
            None => f(&mut SubjectState::new()),
        }
    }

    /// Calls `f` with the subject's state if the table holds it, with its
    /// shard locked, so that `f` can act on the answer before any operation
    /// changes it.
    pub fn with_present<R>(
        &self,
        subject: &Subject,
        f: impl FnOnce(Option<&SubjectState>) -> R,
    ) -> R {
        let shard = self.shards[self.shard_of(subject)].lock();
        f(shard.maps[subject.dimension.index()].get(subject.id.as_str()))
    }

    /// Expires every subject and drops the idle ones, one shard at a time so
    /// that no lock is held for long. `dropped` is called for each subject
    /// dropped, with its shard still locked, so that a durable backend's
    /// delete cannot overtake a later write of the same subject.
    pub fn sweep(
        &self,
        table: &LimitTable,
        now: Nanos,
        mut dropped: impl FnMut(Dimension, &str),
    ) -> ShardSweep {
        let mut total = ShardSweep::default();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            for d in Dimension::ALL {
                let map = &mut shard.maps[d.index()];
                map.retain(|id, state| {
                    state.expire(table.resolve(d, id), now);
                    if state.is_idle() {
                        total.dropped += 1;
                        self.count(Class::of(d, id)).fetch_sub(1, Ordering::Relaxed);
                        dropped(d, id);
                        false
                    } else {
                        total.kept += 1;
                        total.open_reservations +=
                            state.holds().iter().filter(|h| h.is_open(now)).count();
                        true
                    }
                });
            }
        }
        total
    }

    /// Calls `f` for every stored subject, one shard locked at a time (`f`
    /// runs with it locked): a durable backend writes memory out with this
    /// when it recovers from a failed write.
    pub fn for_each(&self, mut f: impl FnMut(Dimension, &str, &SubjectState)) {
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for d in Dimension::ALL {
                for (id, state) in &shard.maps[d.index()] {
                    f(d, id, state);
                }
            }
        }
    }

    /// Puts a decoded state in place (start-up recovery), counting it.
    pub fn insert(&self, subject: &Subject, state: SubjectState) {
        if state.is_idle() {
            return;
        }
        let mut shard = self.shards[self.shard_of(subject)].lock();
        let prev = shard.maps[subject.dimension.index()].insert(subject.id.as_str().into(), state);
        if prev.is_none() {
            self.count(Class::of(subject.dimension, &subject.id))
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}
