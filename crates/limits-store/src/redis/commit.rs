//! The commit loop: every state-changing operation of one replica goes
//! through one task, which decides a batch of them with limits-core over
//! its copies of the subjects' states and writes the batch back with one
//! compare-and-swap script call per hash slot (`state.lua`).
//!
//! # A batch
//!
//! Operations that arrive together are decided together and written in one
//! round trip (group commit), so under load a round trip carries many
//! decisions, and an idle replica answers one operation in one round trip.
//! Up to [`MAX_IN_FLIGHT`] batches are in flight at once, over disjoint
//! subjects: an operation whose subject is in a batch in flight waits for
//! it (and so does every later operation on that subject), so each
//! subject's operations are decided one after another in the order they
//! arrived, and a replica never races itself. A batch's operations run in
//! arrival order over the same working states: each sees what the ones
//! before it did, exactly as on the embedded store.
//!
//! Every state an operation read is checked by the script, whether the
//! operation changed it or not: a denial is never decided on a state that
//! another replica has changed since. A state read from the cache that is
//! no longer current fails its slot's script, whose reply carries the
//! current states; the batch is decided again on them. A state not in the
//! cache is taken to be absent (version 0), which costs one such retry the
//! first time a replica meets a subject that exists.
//!
//! # Several slots
//!
//! When a batch's subjects sit in several slots (Redis Cluster), the slots
//! are written at once, each atomically. An operation whose slots all
//! committed is answered. One whose slot failed (a conflict, a full slot,
//! another replica's turn, an error) was written to its other slots: there
//! its effect is taken back with limits-core's `undo` (which removes
//! exactly what the operation added, whatever else happened since), in the
//! next round, and the operation is decided again (or answered with the
//! error). In between, another caller may see the operation on one slot
//! and not on the other: a false denial at worst, never an admission past
//! a limit, because every slot's state only ever moves by decisions that
//! limits-core made on its current version.
//!
//! What a state change also writes outside the subjects' slots (a lease's
//! index entry, an audit event) is written after them, in the slot of the
//! key prefix, only for operations whose subjects all committed; if that
//! fails the subjects' change is taken back.
//!
//! # Contention
//!
//! A replica whose batch keeps losing the race for a slot to other
//! replicas (a team every request shares) claims the slot's turn after a
//! few rounds: for a few milliseconds the script refuses every other
//! replica's write there, and they wait and retry. The rounds a batch may
//! take are bounded; past the bound its operations are answered
//! `Unavailable`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use limits_core::engine::{
    AcquireOutcome, CheckOutcome, CheckRequest, RecordOutcome, RecordRequest, Reserve,
};
use limits_core::hit::{Charge, HitOutcome};
use limits_core::{
    Adjustment, Attempt, LimitKind, Nanos, Policy, Subject, SubjectLimits, SubjectState, engine,
    undo,
};
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::{Inner, internal};
use crate::codec;
use crate::{Adjusted, StoreError};

/// Operations decided in one round trip at most.
const MAX_BATCH: usize = 256;
/// Batches in flight at once; each holds subjects no other one holds.
const MAX_IN_FLIGHT: usize = 4;
/// Rounds one batch may take before its operations are answered
/// `Unavailable`.
const MAX_ROUNDS: u32 = 24;
/// From this round on, a batch that loses a slot's race claims its turn.
const CLAIM_FROM: u32 = 3;
/// States kept between batches; past it the cache starts again empty (each
/// dropped state costs one conflict when next used). A state is a few
/// hundred bytes, so this stays within a few MiB.
const CACHE_MAX: usize = 16_384;
/// Undo work kept for slots that cannot be written (Redis down): past it,
/// the oldest is dropped (its amounts then expire with their windows).
const MAX_LEFTOVER: usize = 4_096;

/// What an operation does.
pub(super) enum Work {
    Check {
        attempts: Vec<Attempt>,
        /// The reservation's id, TTL and tag.
        reserve: Option<(u64, Nanos, u32)>,
        policy: Policy,
    },
    Record {
        req: RecordRequest,
        policy: Policy,
    },
    Acquire {
        id: u64,
        ttl: Nanos,
    },
    Hit {
        charges: Vec<Charge>,
    },
    Release {
        id: u64,
        expires_at: Nanos,
    },
    Adjust {
        changes: Vec<(LimitKind, Adjustment)>,
        audit: Vec<u8>,
        keep: usize,
    },
}

/// What an operation answers.
#[derive(Debug)]
pub(super) enum Done {
    Check(CheckOutcome),
    Record(RecordOutcome),
    Acquire(AcquireOutcome),
    Hit(HitOutcome),
    Release(bool),
    Adjust(Adjusted),
}

/// One operation on the subjects of one request.
pub(super) struct Op {
    /// The subjects as stored (API keys by their keyed hash).
    pub subjects: Vec<Subject>,
    pub limits: Vec<SubjectLimits>,
    /// The caller's clock, used under a fake clock.
    pub now: Nanos,
    pub work: Work,
}

type Reply = oneshot::Sender<Result<Done, StoreError>>;

/// An operation in the commit task's queue, with when it arrived.
type Queued = (Op, Reply, std::time::Instant);

/// Something written in the key prefix's slot with an operation.
#[derive(Debug, Clone)]
enum Extra {
    Lease {
        id: u64,
        value: Vec<u8>,
        px: u64,
        score: u64,
    },
    LeaseGone {
        id: u64,
    },
    Audit {
        event: Vec<u8>,
        keep: usize,
    },
}

/// An operation decided over the working states.
struct Decided {
    done: Done,
    /// Whether it changed its subjects' states (beyond expiry).
    wrote: bool,
    extra: Option<Extra>,
    /// For a release: which subjects held the lease.
    held: Vec<bool>,
    at: Nanos,
}

/// Takes back one operation's effect on some of its subjects.
type UndoFn = Box<dyn Fn(&mut [&mut SubjectState], Nanos) + Send>;

/// An operation's effect to take back in one slot.
struct Piece {
    slot: u32,
    /// The state keys it applies to, in the operation's order.
    keys: Vec<(String, bool)>,
    undo: UndoFn,
    /// The operation's own `now`, used under a fake clock.
    now: Nanos,
}

/// A subject's state as this replica last saw it.
struct Cached {
    version: u64,
    state: SubjectState,
}

/// What the commit task's batches share: the cache (each batch reads and
/// writes only its own subjects' entries, which no other batch in flight
/// touches) and undo work left for later.
#[derive(Default)]
struct Shared {
    cache: parking_lot::Mutex<Cache>,
    /// Undo work not yet written (its slot could not be reached).
    leftover: parking_lot::Mutex<Vec<Piece>>,
}

#[derive(Default)]
struct Cache {
    states: HashMap<String, Cached>,
    /// The secret generation the cache belongs to.
    generation: u64,
}

/// Sends operations to the commit task, starting it on first use.
pub(super) struct Committer {
    tx: parking_lot::Mutex<Option<mpsc::UnboundedSender<Queued>>>,
}

impl Committer {
    pub(super) fn new() -> Committer {
        Committer {
            tx: parking_lot::Mutex::new(None),
        }
    }

    /// Runs `op` in the next batch and waits for its answer.
    pub(super) async fn run(&self, inner: &Arc<Inner>, op: Op) -> Result<Done, StoreError> {
        let (tx, rx) = oneshot::channel();
        let op = (op, tx, std::time::Instant::now());
        {
            let mut sender = self.tx.lock();
            let op = match sender.as_ref() {
                Some(s) => match s.send(op) {
                    Ok(()) => None,
                    Err(mpsc::error::SendError(op)) => Some(op),
                },
                None => Some(op),
            };
            if let Some(op) = op {
                // First use, or the task's runtime has gone.
                let (stx, srx) = mpsc::unbounded_channel();
                tokio::spawn(run_task(inner.clone(), srx));
                let _ = stx.send(op);
                *sender = Some(stx);
            }
        }
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "redis: the commit task stopped".into(),
            ))
        })
    }
}

/// An operation waiting for a batch, with its subjects' tags and keys.
struct Waiting {
    op: Op,
    reply: Reply,
    queued: std::time::Instant,
    keys: Vec<(u32, String)>,
}

/// Takes, in arrival order, the waiting operations none of whose subjects
/// is in a batch in flight or in an earlier operation left waiting (so
/// that each subject's operations are decided in the order they came),
/// and marks their subjects busy.
fn take_batch(waiting: &mut VecDeque<Waiting>, busy: &mut HashSet<String>) -> Vec<Waiting> {
    let mut batch = Vec::new();
    let mut mine: HashSet<String> = HashSet::new();
    let mut held: HashSet<String> = HashSet::new();
    let mut left = VecDeque::with_capacity(waiting.len());
    while let Some(w) = waiting.pop_front() {
        let free = batch.len() < MAX_BATCH
            && w.keys
                .iter()
                .all(|(_, k)| !held.contains(k) && (mine.contains(k) || !busy.contains(k)));
        if free {
            mine.extend(w.keys.iter().map(|(_, k)| k.clone()));
            batch.push(w);
        } else {
            held.extend(w.keys.iter().map(|(_, k)| k.clone()));
            left.push_back(w);
        }
    }
    busy.extend(mine);
    *waiting = left;
    batch
}

async fn run_task(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Queued>) {
    let shared = Shared::default();
    let wait = metrics::histogram!(super::WAIT_METRIC);
    let size = metrics::histogram!(super::BATCH_METRIC);
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    let mut busy: HashSet<String> = HashSet::new();
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    let mut open = true;
    let arrived = |(op, reply, queued): Queued| Waiting {
        keys: op
            .subjects
            .iter()
            .map(|s| inner.layout.state_key(s))
            .collect(),
        op,
        reply,
        queued,
    };
    loop {
        while let Ok(q) = rx.try_recv() {
            waiting.push_back(arrived(q));
        }
        while in_flight.len() < MAX_IN_FLIGHT {
            let batch = take_batch(&mut waiting, &mut busy);
            if batch.is_empty() {
                break;
            }
            // Undo work left by a batch that could not reach Redis goes
            // with the next batch that can take its subjects.
            let undo: Vec<Piece> = shared
                .leftover
                .lock()
                .extract_if(.., |p| {
                    let free = p.keys.iter().all(|(k, _)| !busy.contains(k));
                    if free {
                        busy.extend(p.keys.iter().map(|(k, _)| k.clone()));
                    }
                    free
                })
                .collect();
            let started = std::time::Instant::now();
            for w in &batch {
                wait.record(started.duration_since(w.queued).as_secs_f64());
            }
            size.record(batch.len() as f64);
            let mut keys: Vec<String> = batch
                .iter()
                .flat_map(|w| w.keys.iter().map(|(_, k)| k.clone()))
                .collect();
            keys.extend(
                undo.iter()
                    .flat_map(|p| p.keys.iter().map(|(k, _)| k.clone())),
            );
            let (inner, shared) = (&inner, &shared);
            in_flight.push(async move {
                inner.commit(shared, batch, undo).await;
                keys
            });
        }
        if !open && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            Some(keys) = futures_util::StreamExt::next(&mut in_flight), if !in_flight.is_empty() => {
                for k in keys {
                    busy.remove(&k);
                }
            }
            q = rx.recv(), if open => match q {
                Some(q) => waiting.push_back(arrived(q)),
                None => open = false,
            },
        }
    }
}

/// One operation within a batch.
struct Pending {
    op: Op,
    reply: Reply,
    /// Its subjects' tags and state keys.
    keys: Vec<(u32, String)>,
    /// Its subjects' indexes in the working set.
    entries: Vec<usize>,
    decided: Option<Decided>,
    failed: Option<StoreError>,
    /// Whether `decided` or `failed` is its answer.
    answered: bool,
}

/// A state in the working set of one round.
struct Entry {
    key: String,
    slot: u32,
    counter: bool,
    version: u64,
    state: SubjectState,
    /// Absent when the round started.
    absent: bool,
    /// Absent, and named by an operation with limits: counted against the
    /// slot's bound, as a new subject.
    needs_room: bool,
    /// Changed in this round.
    dirty: bool,
}

/// How one slot's script call ended.
enum Outcome {
    Committed { versions: Vec<u64>, seqs: Vec<u64> },
    Conflict(Vec<(usize, u64, Vec<u8>)>),
    Full { subjects: i64, counters: i64 },
    Busy,
    Failed(StoreError),
}

impl Outcome {
    fn committed(&self) -> bool {
        matches!(self, Outcome::Committed { .. })
    }
}

/// What one slot's call writes.
#[derive(Default)]
struct SlotWrite {
    /// Working-set indexes.
    entries: Vec<usize>,
    /// (pending index, extra).
    extras: Vec<(usize, Extra)>,
}

impl Inner {
    async fn commit(&self, shared: &Shared, ops: Vec<Waiting>, mut undo_work: Vec<Piece>) {
        {
            let generation = self.generation();
            let mut cache = shared.cache.lock();
            if cache.generation != generation {
                cache.states.clear();
                cache.generation = generation;
            }
        }
        let mut pending: Vec<Pending> = ops
            .into_iter()
            .map(
                |Waiting {
                     op, reply, keys, ..
                 }| Pending {
                    keys,
                    op,
                    reply,
                    entries: Vec::new(),
                    decided: None,
                    failed: None,
                    answered: false,
                },
            )
            .collect();
        let mut room: HashMap<u32, (i64, i64)> = HashMap::new();
        let one_slot = self.layout.groups() == 1;
        let mut waited = false;
        for round in 0..MAX_ROUNDS {
            let open: Vec<usize> = (0..pending.len())
                .filter(|&i| !pending[i].answered)
                .collect();
            if open.is_empty() && undo_work.is_empty() {
                break;
            }
            if waited {
                // Another replica holds a slot's turn: give it a moment.
                tokio::time::sleep(Duration::from_micros(200 * u64::from(round.min(10)))).await;
            }
            let now = self.clock();
            let (mut work, index) = self.working_set(shared, &pending, &open, &undo_work);
            for piece in &undo_work {
                let idx: Vec<usize> = piece.keys.iter().map(|(k, _)| index[k]).collect();
                let at = if self.fake_clock { piece.now } else { now };
                with_states(&mut work, &idx, |states| (piece.undo)(states, at));
                for &i in &idx {
                    work[i].dirty = true;
                }
            }
            for &p in &open {
                let entries: Vec<usize> = pending[p].keys.iter().map(|(_, k)| index[k]).collect();
                // A subject it would create needs room in its slot.
                if let Some(e) =
                    self.take_room(&mut room, &mut work, &entries, &pending[p].op.limits)
                {
                    pending[p].failed = Some(e);
                    pending[p].answered = true;
                    continue;
                }
                let op_now = if self.fake_clock {
                    pending[p].op.now
                } else {
                    now
                };
                let decided = with_states(&mut work, &entries, |states| {
                    decide(&pending[p].op, states, op_now)
                });
                if decided.wrote {
                    for &e in &entries {
                        work[e].dirty = true;
                    }
                }
                pending[p].entries = entries;
                pending[p].decided = Some(decided);
            }

            // Every state read is checked; the changed ones are written. On
            // one server, the extras go in the same call.
            let mut slots: BTreeMap<u32, SlotWrite> = BTreeMap::new();
            for (i, e) in work.iter().enumerate() {
                slots.entry(e.slot).or_default().entries.push(i);
            }
            let mut extras = SlotWrite::default();
            for &p in &open {
                if let Some(Decided { extra: Some(x), .. }) = &pending[p].decided {
                    extras.extras.push((p, x.clone()));
                }
            }
            if one_slot && !extras.extras.is_empty() {
                let w = slots.entry(self.layout.meta()).or_default();
                w.extras = std::mem::take(&mut extras.extras);
            }
            let claim = round >= CLAIM_FROM;
            let results = self.write_slots(&slots, &work, claim).await;
            waited = results.values().any(|r| matches!(r, Outcome::Busy));

            // Several slots: the extras of the operations whose subjects all
            // committed, in the prefix's slot.
            let all_committed = |p: usize| {
                pending[p]
                    .entries
                    .iter()
                    .all(|&e| results[&work[e].slot].committed())
            };
            extras.extras.retain(|&(p, _)| all_committed(p));
            let extra_result = if extras.extras.is_empty() {
                None
            } else {
                let mut one = BTreeMap::new();
                one.insert(self.layout.meta(), extras);
                let r = self.write_slots(&one, &work, false).await;
                let extras = one.into_values().next().unwrap_or_default();
                r.into_values().next().map(|r| (extras, r))
            };
            let seqs = |w: &SlotWrite, r: &Outcome, p: usize| -> Option<u64> {
                let Outcome::Committed { seqs, .. } = r else {
                    return None;
                };
                let mut audits = w
                    .extras
                    .iter()
                    .filter(|(_, x)| matches!(x, Extra::Audit { .. }));
                let at = audits.position(|(q, _)| *q == p)?;
                seqs.get(at).copied()
            };

            // Settle the round: what each slot now holds.
            let mut broken = vec![false; work.len()];
            for (&slot, outcome) in &results {
                match outcome {
                    Outcome::Committed { versions, .. } => {
                        for (&i, &v) in slots[&slot].entries.iter().zip(versions) {
                            work[i].version = v;
                            work[i].dirty = false;
                        }
                    }
                    Outcome::Conflict(fresh) => {
                        for (i, version, bytes) in fresh {
                            let at = slots[&slot].entries[*i];
                            let e = &mut work[at];
                            e.version = *version;
                            e.dirty = false;
                            e.state = if *version == 0 {
                                SubjectState::new()
                            } else {
                                match codec::decode_state(bytes) {
                                    Ok(s) => s,
                                    Err(_) => {
                                        broken[at] = true;
                                        SubjectState::new()
                                    }
                                }
                            };
                        }
                    }
                    Outcome::Full { subjects, counters } => {
                        room.insert(slot, (*subjects, *counters));
                    }
                    Outcome::Busy | Outcome::Failed(_) => {}
                }
            }
            // Undo pieces are done where their slot committed.
            undo_work.retain(|piece| !results.get(&piece.slot).is_some_and(Outcome::committed));

            for &p in &open {
                let Some(mut d) = pending[p].decided.take() else {
                    continue;
                };
                let entries = std::mem::take(&mut pending[p].entries);
                let mut error = None;
                let mut retry = false;
                for &e in &entries {
                    match &results[&work[e].slot] {
                        Outcome::Committed { .. } => {}
                        Outcome::Failed(err) => error = Some(err.clone()),
                        Outcome::Conflict(_) | Outcome::Busy | Outcome::Full { .. } => retry = true,
                    }
                    if broken[e] {
                        error = Some(internal("a stored state this build cannot read"));
                    }
                }
                if error.is_none() && !retry && d.extra.is_some() {
                    let seq = if one_slot {
                        let slot = self.layout.meta();
                        seqs(&slots[&slot], &results[&slot], p)
                    } else {
                        match &extra_result {
                            Some((w, r @ Outcome::Committed { .. })) => seqs(w, r, p),
                            Some((_, Outcome::Failed(err))) => {
                                error = Some(err.clone());
                                None
                            }
                            _ => {
                                retry = true;
                                None
                            }
                        }
                    };
                    if let (Done::Adjust(a), Some(seq)) = (&mut d.done, seq) {
                        a.audit_seq = seq;
                    }
                }
                if error.is_none() && !retry {
                    pending[p].decided = Some(d);
                    pending[p].answered = true;
                    continue;
                }
                // Take it back where it was written; decide it again, or
                // answer the error.
                if d.wrote {
                    let mut by_slot: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
                    for (k, &e) in entries.iter().enumerate() {
                        if results[&work[e].slot].committed() {
                            by_slot.entry(work[e].slot).or_default().push(k);
                        }
                    }
                    for (slot, ks) in by_slot {
                        undo_work.push(Piece {
                            slot,
                            keys: ks
                                .iter()
                                .map(|&k| (work[entries[k]].key.clone(), work[entries[k]].counter))
                                .collect(),
                            undo: undo_fn(&pending[p].op, &d, Some(&ks)),
                            now: pending[p].op.now,
                        });
                    }
                }
                if let Some(err) = error {
                    pending[p].failed = Some(err);
                    pending[p].answered = true;
                }
            }

            // Keep what this round learnt: a committed slot's states and a
            // conflicting slot's current ones; a slot that refused (full,
            // busy) still holds what the cache has; one that failed, who
            // knows.
            let mut cache = shared.cache.lock();
            if cache.states.len() > CACHE_MAX {
                cache.states.clear();
            }
            let mut work: Vec<Option<Entry>> = work.into_iter().map(Some).collect();
            for (slot, outcome) in &results {
                let fresh: Vec<usize> = match outcome {
                    Outcome::Committed { .. } => slots[slot].entries.clone(),
                    Outcome::Conflict(c) => {
                        c.iter().map(|(i, ..)| slots[slot].entries[*i]).collect()
                    }
                    Outcome::Failed(_) => {
                        for &i in &slots[slot].entries {
                            if let Some(e) = &work[i] {
                                cache.states.remove(&e.key);
                            }
                        }
                        continue;
                    }
                    Outcome::Full { .. } | Outcome::Busy => continue,
                };
                for i in fresh {
                    let Some(e) = work[i].take() else { continue };
                    if broken[i] {
                        cache.states.remove(&e.key);
                    } else {
                        let cached = Cached {
                            version: e.version,
                            state: e.state,
                        };
                        cache.states.insert(e.key, cached);
                    }
                }
            }
            if results.values().all(|r| matches!(r, Outcome::Failed(_)))
                && pending.iter().all(|p| p.answered)
            {
                // Redis does not answer: undo work waits for the next batch.
                break;
            }
        }
        for p in &mut pending {
            if !p.answered {
                p.failed = Some(StoreError::Unavailable(
                    "redis: too much contention on these subjects; try again".into(),
                ));
            }
        }
        if !undo_work.is_empty() {
            let mut leftover = shared.leftover.lock();
            leftover.extend(undo_work);
            if leftover.len() > MAX_LEFTOVER {
                let excess = leftover.len() - MAX_LEFTOVER;
                leftover.drain(..excess);
            }
        }
        for p in pending {
            let answer = match (p.failed, p.decided) {
                (Some(e), _) => Err(e),
                (None, Some(d)) => Ok(d.done),
                (None, None) => Err(internal("an operation left undecided")),
            };
            let _ = p.reply.send(answer);
        }
    }

    /// Counts the subjects an operation may create (absent, with limits)
    /// against its slots' room, as the embedded stores do, once a slot has
    /// said how much it has left; the error when one has none.
    fn take_room(
        &self,
        room: &mut HashMap<u32, (i64, i64)>,
        work: &mut [Entry],
        entries: &[usize],
        limits: &[SubjectLimits],
    ) -> Option<StoreError> {
        let new: Vec<usize> = entries
            .iter()
            .zip(limits)
            .filter(|&(&e, l)| work[e].absent && !work[e].needs_room && !l.is_unlimited())
            .map(|(&e, _)| e)
            .collect();
        let mut want: HashMap<u32, (i64, i64)> = HashMap::new();
        for &e in &new {
            let w = want.entry(work[e].slot).or_default();
            if work[e].counter {
                w.1 += 1;
            } else {
                w.0 += 1;
            }
        }
        for (slot, (s, c)) in &want {
            if let Some(&(rs, rc)) = room.get(slot) {
                if *s > rs {
                    return Some(StoreError::Full(self.max_entries));
                }
                if *c > rc {
                    return Some(StoreError::CountersFull(self.max_counters));
                }
            }
        }
        for (slot, (s, c)) in want {
            if let Some(r) = room.get_mut(&slot) {
                r.0 -= s;
                r.1 -= c;
            }
        }
        for e in new {
            work[e].needs_room = true;
        }
        None
    }

    /// The states the round decides over: every subject of the open
    /// operations and of the undo work, from the cache (absent when not
    /// there).
    fn working_set(
        &self,
        shared: &Shared,
        pending: &[Pending],
        open: &[usize],
        undo_work: &[Piece],
    ) -> (Vec<Entry>, HashMap<String, usize>) {
        let mut work: Vec<Entry> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let cache = shared.cache.lock();
        let mut add = |key: String, slot: u32, counter: bool| {
            if index.contains_key(&key) {
                return;
            }
            let (version, state) = match cache.states.get(&key) {
                Some(c) => (c.version, c.state.clone()),
                None => (0, SubjectState::new()),
            };
            index.insert(key.clone(), work.len());
            work.push(Entry {
                absent: version == 0,
                needs_room: false,
                key,
                slot,
                counter,
                version,
                state,
                dirty: false,
            });
        };
        for piece in undo_work {
            for (k, counter) in &piece.keys {
                add(k.clone(), piece.slot, *counter);
            }
        }
        for &p in open {
            let op = &pending[p];
            for ((slot, key), s) in op.keys.iter().zip(&op.op.subjects) {
                add(key.clone(), *slot, super::is_counter(s));
            }
        }
        (work, index)
    }

    /// Writes each slot's part of the round (its states, or its extras)
    /// with one script call per slot, all at once.
    async fn write_slots(
        &self,
        slots: &BTreeMap<u32, SlotWrite>,
        work: &[Entry],
        claim: bool,
    ) -> BTreeMap<u32, Outcome> {
        let calls = slots.iter().map(|(&slot, w)| async move {
            let outcome = self.write_slot(slot, w, work, claim).await;
            (slot, outcome)
        });
        futures_util::future::join_all(calls)
            .await
            .into_iter()
            .collect()
    }

    async fn write_slot(&self, slot: u32, w: &SlotWrite, work: &[Entry], claim: bool) -> Outcome {
        let secret = match self.current_fingerprint() {
            Some(fp) => fp,
            None => return Outcome::Failed(StoreError::Unavailable(super::STALE_SECRET.into())),
        };
        let keys = self.layout.slot_keys(slot);
        let mut inv = self.state_script.prepare_invoke();
        inv.key(&keys.fingerprint)
            .key(&keys.index)
            .key(&keys.counter_index)
            .key(&keys.turn)
            .key(&keys.version);
        for &i in &w.entries {
            inv.key(&work[i].key);
        }
        let (max_s, max_c) = self.slot_bounds();
        inv.arg(&secret)
            .arg(&self.replica)
            .arg(u8::from(claim))
            .arg(max_s)
            .arg(max_c)
            .arg(w.entries.len());
        let now = self.clock();
        let mut buf = Vec::new();
        for &i in &w.entries {
            let e = &work[i];
            inv.arg(e.version);
            // Counted as new if absent: what it writes, and what an
            // operation with limits named.
            let class = |new: bool| match (e.counter, new) {
                (_, false) => "-",
                (true, true) => "c",
                (false, true) => "s",
            };
            if !e.dirty {
                inv.arg("r").arg(class(e.needs_room)).arg("").arg(0).arg(0);
                continue;
            }
            match e.state.idle_at() {
                Some(idle) if codec::encode_full_state(&e.state, &mut buf) => {
                    let px = self.pexpire_ms(idle, now);
                    inv.arg("w")
                        .arg(class(true))
                        .arg(buf.as_slice())
                        .arg(px)
                        .arg(ms_ceil(idle));
                }
                _ => {
                    inv.arg("d").arg(class(e.needs_room)).arg("").arg(0).arg(0);
                }
            }
        }
        // Extras name their keys by index into KEYS.
        let mut next_key = 6 + w.entries.len();
        inv.arg(w.extras.len());
        for (_, extra) in &w.extras {
            match extra {
                Extra::Lease {
                    id,
                    value,
                    px,
                    score,
                } => {
                    inv.key(self.layout.lease_key(*id))
                        .key(&self.layout.meta.leases);
                    inv.arg("L")
                        .arg(next_key)
                        .arg(next_key + 1)
                        .arg(value.as_slice())
                        .arg(*px)
                        .arg(*score)
                        .arg(*id);
                    next_key += 2;
                }
                Extra::LeaseGone { id } => {
                    inv.key(self.layout.lease_key(*id))
                        .key(&self.layout.meta.leases);
                    inv.arg("U").arg(next_key).arg(next_key + 1).arg(*id);
                    next_key += 2;
                }
                Extra::Audit { event, keep } => {
                    inv.key(&self.layout.meta.audit)
                        .key(&self.layout.meta.audit_seq);
                    inv.arg("A")
                        .arg(next_key)
                        .arg(next_key + 1)
                        .arg(event.as_slice())
                        .arg((*keep).max(1));
                    next_key += 2;
                }
            }
        }
        let audits = w
            .extras
            .iter()
            .filter(|(_, x)| matches!(x, Extra::Audit { .. }))
            .count();
        match self.call("commit", &inv).await {
            Err(e) => Outcome::Failed(e),
            Ok(v) => read_outcome(v, w.entries.len(), audits).unwrap_or_else(Outcome::Failed),
        }
    }
}

/// Reads a commit script reply.
fn read_outcome(v: Value, n: usize, audits: usize) -> Result<Outcome, StoreError> {
    let Value::Array(items) = v else {
        return Err(internal(format!("unexpected commit reply {v:?}")));
    };
    let int = |v: &Value| match v {
        Value::Int(n) => Ok(*n),
        other => Err(internal(format!("unexpected commit reply item {other:?}"))),
    };
    let status = items.first().map(int).transpose()?;
    match status {
        Some(0) => {
            if items.len() != 1 + n + audits {
                return Err(internal("a commit reply of the wrong length"));
            }
            let nums = items[1..]
                .iter()
                .map(|v| int(v).and_then(|n| u64::try_from(n).map_err(internal)))
                .collect::<Result<Vec<u64>, _>>()?;
            Ok(Outcome::Committed {
                versions: nums[..n].to_vec(),
                seqs: nums[n..].to_vec(),
            })
        }
        Some(1) => {
            let rest = &items[1..];
            if rest.is_empty() || rest.len() % 3 != 0 {
                return Err(internal("a conflict reply of the wrong length"));
            }
            rest.chunks(3)
                .map(|c| {
                    let i = usize::try_from(int(&c[0])?).map_err(internal)?;
                    if i == 0 || i > n {
                        return Err(internal("a conflict for a key not sent"));
                    }
                    let version = match &c[1] {
                        Value::BulkString(b) => std::str::from_utf8(b)
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok())
                            .ok_or_else(|| internal("an unreadable state version"))?,
                        other => return Err(internal(format!("unexpected version {other:?}"))),
                    };
                    let bytes = match &c[2] {
                        Value::BulkString(b) => b.clone(),
                        other => return Err(internal(format!("unexpected state {other:?}"))),
                    };
                    Ok((i - 1, version, bytes))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Outcome::Conflict)
        }
        Some(2) if items.len() == 3 => Ok(Outcome::Full {
            subjects: int(&items[1])?,
            counters: int(&items[2])?,
        }),
        Some(3) if items.len() == 1 => Ok(Outcome::Busy),
        Some(5 | 6) => Err(StoreError::Unavailable(super::STALE_SECRET.into())),
        _ => Err(internal(format!("unexpected commit reply {items:?}"))),
    }
}

/// Runs `f` over the states of `idx` (distinct working-set indexes).
fn with_states<R>(
    work: &mut [Entry],
    idx: &[usize],
    f: impl FnOnce(&mut [&mut SubjectState]) -> R,
) -> R {
    let mut taken: Vec<SubjectState> = idx
        .iter()
        .map(|&i| std::mem::replace(&mut work[i].state, SubjectState::new()))
        .collect();
    let mut refs: Vec<&mut SubjectState> = taken.iter_mut().collect();
    let r = f(&mut refs);
    for (&i, s) in idx.iter().zip(taken) {
        work[i].state = s;
    }
    r
}

/// Decides `op` over its subjects' states.
fn decide(op: &Op, states: &mut [&mut SubjectState], now: Nanos) -> Decided {
    let limits: Vec<&SubjectLimits> = op.limits.iter().collect();
    let limits = limits.as_slice();
    let mut held = Vec::new();
    let mut extra = None;
    let (done, wrote) = match &op.work {
        Work::Check {
            attempts,
            reserve,
            policy,
        } => {
            let req = CheckRequest {
                attempts,
                reserve: reserve.map(|(id, ttl, tag)| Reserve {
                    id,
                    expires_at: now.saturating_add(ttl),
                    tag,
                }),
                policy,
            };
            let out = engine::check(states, limits, &req, now);
            let wrote = out.allowed();
            (Done::Check(out), wrote)
        }
        Work::Record { req, policy } => {
            let out = engine::record(states, limits, req, policy, now);
            let wrote = !out.duplicate;
            (Done::Record(out), wrote)
        }
        Work::Acquire { id, ttl } => {
            let expires_at = now.saturating_add(*ttl);
            let out = engine::acquire(states, limits, *id, expires_at, now);
            let wrote = out.acquired();
            if wrote {
                extra = Some(Extra::Lease {
                    id: *id,
                    value: codec::encode_lease(&op.subjects, expires_at),
                    px: ttl.0.div_ceil(1_000_000).max(1),
                    score: ms_ceil(expires_at),
                });
            }
            (Done::Acquire(out), wrote)
        }
        Work::Hit { charges } => {
            let out = limits_core::hit::hit(states, limits, charges, now);
            let wrote = out.allowed() || charges.iter().any(|c| c.tokens > 0);
            (Done::Hit(out), wrote)
        }
        Work::Release { id, expires_at } => {
            held = states.iter().map(|s| undo::holds_lease(s, *id)).collect();
            let released = engine::release(states, *id, now);
            extra = Some(Extra::LeaseGone { id: *id });
            (Done::Release(released && *expires_at > now), true)
        }
        Work::Adjust {
            changes,
            audit,
            keep,
        } => {
            let applied = changes
                .iter()
                .map(|&(kind, change)| limits_core::adjust(states[0], limits[0], kind, change, now))
                .collect();
            let usage = crate::embedded::view(states[0], limits[0], now);
            extra = Some(Extra::Audit {
                event: audit.clone(),
                keep: *keep,
            });
            (
                Done::Adjust(Adjusted {
                    applied,
                    usage,
                    audit_seq: 0,
                }),
                true,
            )
        }
    };
    Decided {
        done,
        wrote,
        extra,
        held,
        at: now,
    }
}

/// The undo of a decided operation, over the subjects `only` (indexes into
/// its subjects; all of them when `None`), given in that order.
fn undo_fn(op: &Op, d: &Decided, only: Option<&[usize]>) -> UndoFn {
    let pick =
        |n: usize| -> Vec<usize> { only.map_or_else(|| (0..n).collect(), <[usize]>::to_vec) };
    let at = d.at;
    let idx = pick(op.subjects.len());
    match (&op.work, &d.done) {
        (Work::Check { .. }, Done::Check(out)) => {
            let out = out.clone();
            Box::new(move |states, now| undo::undo_check(states, &out, at, now))
        }
        (Work::Record { req, .. }, Done::Record(out)) => {
            let (req, out) = (*req, out.clone());
            let limits: Vec<SubjectLimits> = idx.iter().map(|&i| op.limits[i].clone()).collect();
            Box::new(move |states, now| {
                let limits: Vec<&SubjectLimits> = limits.iter().collect();
                undo::undo_record(states, &limits, &req, &out, at, now)
            })
        }
        (Work::Acquire { id, .. }, Done::Acquire(_)) => {
            let id = *id;
            Box::new(move |states, _| undo::undo_acquire(states, id))
        }
        (Work::Hit { charges }, Done::Hit(out)) => {
            let charges: Vec<Charge> = idx.iter().map(|&i| charges[i]).collect();
            let out = out.clone();
            Box::new(move |states, now| undo::undo_hit(states, &charges, &out, at, now))
        }
        (Work::Release { id, expires_at }, Done::Release(_)) => {
            let held: Vec<bool> = idx
                .iter()
                .map(|&i| d.held.get(i).copied().unwrap_or(false))
                .collect();
            let slot = limits_core::LeaseSlot {
                id: *id,
                expires_at: *expires_at,
            };
            Box::new(move |states, now| undo::undo_release(states, &slot, &held, now))
        }
        (Work::Adjust { changes, .. }, Done::Adjust(a)) => {
            let changes = changes.clone();
            let applied = a.applied.clone();
            let limits = op.limits[0].clone();
            Box::new(move |states, now| {
                for (&(kind, change), &moved) in changes.iter().zip(&applied).rev() {
                    limits_core::undo_adjust(states[0], &limits, kind, change, moved, at, now);
                }
            })
        }
        _ => Box::new(|_, _| {}),
    }
}

/// An instant in whole milliseconds, rounded up (index scores).
pub(super) fn ms_ceil(t: Nanos) -> u64 {
    t.0.div_ceil(1_000_000)
}
