//! The load drivers: closed loop (N callers, each sending its next operation
//! as soon as the last one answered), open loop (operations at fixed
//! intended times, whatever the server does) and a sweep (every index of a
//! range exactly once, to give a population state).
//!
//! Open-loop latency runs from the *intended* send time, so a stall of the
//! server (or of the client) shows up in the latency of every operation that
//! should have been sent during it, instead of silently delaying the sends
//! (coordinated omission).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};

use crate::population::Population;
use crate::stats::Recorder;
use crate::workload::{Caller, Outcome, Workload, run_once};

/// Opens `n` HTTP/2 connections to `addr` (HOST:PORT), with TCP_NODELAY so
/// that small frames are not held back by Nagle's algorithm.
pub async fn connect(addr: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        // One `connect` per channel: each is its own TCP connection.
        channels.push(
            endpoint
                .connect()
                .await
                .map_err(|e| anyhow::anyhow!("connecting to {addr}: {e}"))?,
        );
    }
    Ok(channels)
}

/// The shape of a timed run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub workload: Workload,
    pub population: Arc<Population>,
    pub warmup: Duration,
    pub duration: Duration,
    /// An operation that takes longer than this fails as `DeadlineExceeded`,
    /// which also bounds how long a run can overstay its duration.
    pub timeout: Duration,
    pub seed: u64,
    /// The `ShouldRateLimit` domain of the `rls` workload.
    pub domain: Arc<str>,
}

impl Plan {
    /// The caller of the `k`th task: its share of the connections.
    fn caller(&self, channels: &[Channel], k: usize) -> Caller {
        Caller::new(channels[k % channels.len()].clone(), self.domain.clone())
    }
}

/// Runs one operation with the client-side timeout.
async fn op(plan: &Plan, caller: &mut Caller, i: u64) -> Result<Outcome, tonic::Status> {
    let subjects = plan.population.subjects(i);
    match tokio::time::timeout(plan.timeout, run_once(plan.workload, caller, subjects)).await {
        Ok(r) => r,
        Err(_) => Err(tonic::Status::deadline_exceeded("client-side timeout")),
    }
}

/// Closed loop: `concurrency` callers spread over `channels`. Operations
/// started during the warm-up are not recorded.
pub async fn closed(plan: &Plan, channels: &[Channel], concurrency: usize) -> Recorder {
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|k| {
            let plan = plan.clone();
            let mut caller = plan.caller(channels, k);
            tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(plan.seed.wrapping_add(k as u64));
                let mut rec = Recorder::default();
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let i = plan.population.draw(&mut rng);
                    let r = op(&plan, &mut caller, i).await;
                    if sent >= measure_from {
                        rec.record(&r, sent.elapsed(), None);
                    }
                }
                rec
            })
        })
        .collect();
    let mut all = Recorder::default();
    for t in tasks {
        match t.await {
            Ok(rec) => all.merge(&rec),
            Err(e) => all.error(&format!("CallerPanicked: {e}"), 1),
        }
    }
    all
}

/// Open loop: operations at `rate` per second at fixed intended times, at
/// most `max_outstanding` in flight; an operation that finds that many
/// outstanding is not sent and counts as an `Unsent` error, so an overloaded
/// server cannot make the client hold unbounded memory.
///
/// The pacing runs on its own OS thread with `std::thread::sleep` (about
/// 50-100 µs of slack on Linux) rather than on tokio's timer, whose 1 ms
/// granularity would add up to a millisecond of client-made latency.
pub async fn open(
    plan: &Plan,
    channels: &[Channel],
    rate: f64,
    max_outstanding: usize,
) -> Recorder {
    let rec = Arc::new(Mutex::new(Recorder::default()));
    let permits = Arc::new(Semaphore::new(max_outstanding.max(1)));
    let handle = tokio::runtime::Handle::current();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let callers: Vec<_> = (0..channels.len())
        .map(|k| plan.caller(channels, k))
        .collect();

    let pacer = {
        let (plan, rec, permits) = (plan.clone(), rec.clone(), permits.clone());
        std::thread::Builder::new()
            .name("open-loop-pacer".into())
            .spawn(move || {
                let start = Instant::now();
                let measure_from = start + plan.warmup;
                let end = measure_from + plan.duration;
                let mut rng = SmallRng::seed_from_u64(plan.seed);
                let mut unsent = 0u64;
                for n in 0u64.. {
                    // Computed from the start rather than accumulated, so
                    // rounding never drifts the rate.
                    let intended = start + interval.mul_f64(n as f64);
                    if intended >= end {
                        break;
                    }
                    let now = Instant::now();
                    if intended > now {
                        std::thread::sleep(intended - now);
                    }
                    let measured = intended >= measure_from;
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        unsent += u64::from(measured);
                        continue;
                    };
                    let i = plan.population.draw(&mut rng);
                    let mut caller = callers[(n as usize) % callers.len()].clone();
                    let (plan, rec) = (plan.clone(), rec.clone());
                    handle.spawn(async move {
                        let sent = Instant::now();
                        let r = op(&plan, &mut caller, i).await;
                        let done = Instant::now();
                        if measured {
                            rec.lock().record(&r, done - intended, Some(done - sent));
                        }
                        drop(permit);
                    });
                }
                if unsent > 0 {
                    rec.lock().error("Unsent", unsent);
                }
            })
            .expect("spawn the pacer thread")
    };
    // The pacer sleeps on an OS thread; wait for it off the runtime's
    // workers so they keep serving the operations it spawns.
    let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
    // Every operation is bounded by the timeout, so the drain is too.
    let _ = tokio::time::timeout(
        plan.timeout + Duration::from_secs(1),
        permits.acquire_many(max_outstanding.max(1) as u32),
    )
    .await;
    rec.lock().clone()
}

/// Sends one operation of `plan`'s workload for every index in `range`,
/// exactly once, from `concurrency` callers: this gives each subject of the
/// range its state. The plan's draws, warm-up and duration are not used.
/// No operation starts after `deadline`, so a slow server cannot stretch
/// the sweep without bound; returns the end of the prefix of `range` that
/// was sent (the whole range unless the deadline cut it short).
pub async fn sweep(
    plan: &Plan,
    channels: &[Channel],
    range: Range<u64>,
    concurrency: usize,
    deadline: Instant,
) -> (Recorder, u64) {
    let next = Arc::new(AtomicU64::new(range.start));
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|k| {
            let next = next.clone();
            let plan = plan.clone();
            let mut caller = plan.caller(channels, k);
            let end = range.end;
            tokio::spawn(async move {
                let mut rec = Recorder::default();
                loop {
                    // The deadline is checked before an index is taken, so
                    // every taken index below `end` is sent.
                    if Instant::now() >= deadline {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= end {
                        break;
                    }
                    let sent = Instant::now();
                    let r = op(&plan, &mut caller, i).await;
                    rec.record(&r, sent.elapsed(), None);
                }
                rec
            })
        })
        .collect();
    let mut all = Recorder::default();
    for t in tasks {
        if let Ok(rec) = t.await {
            all.merge(&rec);
        }
    }
    (all, next.load(Ordering::Relaxed).min(range.end))
}
