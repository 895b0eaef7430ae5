//! The scale run: how check latency and limitsd's resident memory grow with
//! the number of subjects that hold state. The population is grown in
//! steps (e.g. 10 k, 100 k, 1 M API keys); at each step every new subject
//! gets one check + record (so its budget window holds spend and it cannot
//! be swept as idle), then a closed-loop `check` run draws uniformly from
//! the whole population, the case that leans hardest on caches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::cpu;
use crate::load::{self, Plan};
use crate::population::{Distribution, Population};
use crate::stats::Summary;
use crate::workload::{DEFAULT_RLS_DOMAIN, Workload};

/// Reads a process's resident set size from /proc/<pid>/status, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("malformed VmRSS line: {line}"))?
        .parse()?;
    Ok(kib * 1024)
}

/// What the scale run is told.
#[derive(Debug, Clone)]
pub struct ScalePlan {
    pub pid: u32,
    pub sizes: Vec<u64>,
    pub concurrency: usize,
    pub populate_concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    /// The most time all populating together may take; a step that would
    /// overrun it is shrunk to what fits, with a note.
    pub populate_budget: Duration,
}

/// One step of the population.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// Subjects asked for at this step.
    pub requested: u64,
    /// Subjects that hold state after populating (smaller than `requested`
    /// when the time budget cut the step short).
    pub subjects: u64,
    pub populate_s: f64,
    /// check + record pairs per second while populating.
    pub populate_rate: f64,
    pub populate_errors: u64,
    pub rss_bytes: u64,
    /// (RSS now - RSS at start) / subjects.
    pub bytes_per_subject: f64,
    pub check_throughput: f64,
    pub check_errors: u64,
    pub check_allowed: u64,
    pub check_denied: u64,
    pub check_latency_us: Summary,
    /// limitsd's CPU per check over the whole check run (warm-up included).
    #[serde(default)]
    pub check_server_cpu_us_per_op: Option<f64>,
    /// Cores other processes kept busy during the check run: a noise gauge.
    #[serde(default)]
    pub check_other_cores: Option<f64>,
    pub note: Option<String>,
}

/// The whole scale run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleReport {
    pub addr: String,
    pub rss_start_bytes: u64,
    pub concurrency: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub steps: Vec<Step>,
}

/// Rounds a subject count down to a readable figure (two significant digits).
fn round_down(n: u64) -> u64 {
    let mut unit = 1u64;
    while n / unit >= 100 {
        unit *= 10;
    }
    n / unit * unit
}

pub async fn run(
    addr: &str,
    channels: &[Channel],
    plan: &ScalePlan,
) -> anyhow::Result<ScaleReport> {
    let rss_start = rss_bytes(plan.pid)?;
    eprintln!(
        "scale: limitsd pid {} resident {:.1} MiB at start",
        plan.pid,
        rss_start as f64 / 1048576.0
    );
    let mut have = 0u64;
    let mut spent = Duration::ZERO;
    let mut rate: Option<f64> = None;
    let mut steps = Vec::new();
    for &requested in &plan.sizes {
        if requested <= have {
            continue;
        }
        let mut target = requested;
        let mut note = None;
        if let Some(r) = rate {
            let left = plan.populate_budget.saturating_sub(spent).as_secs_f64();
            let fits = have + round_down((r * left) as u64);
            if fits < target {
                note = Some(format!(
                    "scaled down from {requested}: populating at {r:.0}/s, {left:.0} s of the {:.0} s budget left",
                    plan.populate_budget.as_secs_f64()
                ));
                target = fits;
            }
        }
        if target <= have {
            eprintln!("scale: no time left to populate beyond {have} subjects; stopping");
            break;
        }
        eprintln!("scale: populating subjects {have}..{target}");
        let t = Instant::now();
        // A hard stop a quarter past what is left of the budget, for when
        // populating slows down after the rate was estimated.
        let left = plan
            .populate_budget
            .saturating_sub(spent)
            .max(Duration::from_secs(10));
        let populate = Plan {
            workload: Workload::CheckRecord,
            // Only its one subject per call is used: the sweep names every
            // index of the range in turn rather than drawing.
            population: Arc::new(Population::new(target, Distribution::Uniform, 1.0, 1)?),
            warmup: Duration::ZERO,
            duration: Duration::ZERO,
            timeout: plan.timeout,
            seed: 0,
            domain: DEFAULT_RLS_DOMAIN.into(),
        };
        let (rec, reached) = load::sweep(
            &populate,
            channels,
            have..target,
            plan.populate_concurrency,
            t + left.mul_f64(1.25),
        )
        .await;
        let took = t.elapsed();
        spent += took;
        if reached < target {
            note = Some(format!(
                "cut short at {reached} of {requested}: populating overran the {:.0} s budget",
                plan.populate_budget.as_secs_f64()
            ));
        }
        let added = reached - have;
        let r = added as f64 / took.as_secs_f64();
        rate = Some(r);
        have = reached;
        if added == 0 {
            eprintln!("scale: nothing was populated before the deadline; stopping");
            break;
        }
        // Let the allocator settle and any background work finish before
        // reading the resident size.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = rss_bytes(plan.pid)?;
        eprintln!(
            "scale: {have} subjects in {:.1} s ({r:.0}/s, {} errors); resident {:.1} MiB",
            took.as_secs_f64(),
            rec.error_total(),
            rss as f64 / 1048576.0
        );

        let run_plan = Plan {
            workload: Workload::Check,
            population: Arc::new(Population::new(have, Distribution::Uniform, 1.0, 1)?),
            warmup: plan.warmup,
            duration: plan.duration,
            timeout: plan.timeout,
            seed: have,
            domain: DEFAULT_RLS_DOMAIN.into(),
        };
        let before = cpu::Sample::take(Some(plan.pid));
        let t = Instant::now();
        let check = load::closed(&run_plan, channels, plan.concurrency).await;
        let window = cpu::Window::between(&before, &cpu::Sample::take(Some(plan.pid)));
        let wall = t.elapsed();
        // Warm-up operations are not counted in `check`, so CPU per check
        // is taken over the operations of the whole run, estimated from the
        // measured rate.
        let ops_whole_run = check.ok as f64 / plan.duration.as_secs_f64() * wall.as_secs_f64();
        let latency = Summary::of(&check.total);
        eprintln!(
            "scale: check over {have}: {:.0} ops/s, p50 {} µs, p99 {} µs, {} errors",
            check.ok as f64 / plan.duration.as_secs_f64(),
            latency.p50,
            latency.p99,
            check.error_total()
        );
        steps.push(Step {
            requested,
            subjects: have,
            populate_s: took.as_secs_f64(),
            populate_rate: r,
            populate_errors: rec.error_total(),
            rss_bytes: rss,
            bytes_per_subject: rss.saturating_sub(rss_start) as f64 / have as f64,
            check_throughput: check.ok as f64 / plan.duration.as_secs_f64(),
            check_errors: check.error_total(),
            check_allowed: check.allowed,
            check_denied: check.denied,
            check_latency_us: latency,
            check_server_cpu_us_per_op: window
                .server
                .filter(|_| ops_whole_run > 0.0)
                .map(|d| d.as_secs_f64() * 1e6 / ops_whole_run),
            check_other_cores: window.other_cores(wall),
            note,
        });
    }
    Ok(ScaleReport {
        addr: addr.to_owned(),
        rss_start_bytes: rss_start,
        concurrency: plan.concurrency,
        duration_s: plan.duration.as_secs_f64(),
        warmup_s: plan.warmup.as_secs_f64(),
        steps,
    })
}

/// Reads a report saved with `scale --json`.
pub fn load(path: &std::path::Path) -> anyhow::Result<ScaleReport> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

impl ScaleReport {
    pub fn human(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scale run against {}: resident at start {:.1} MiB; check: closed loop, {} callers, uniform, {:.0} s + {:.0} s warm-up",
            self.addr,
            self.rss_start_bytes as f64 / 1048576.0,
            self.concurrency,
            self.duration_s,
            self.warmup_s
        );
        let _ = writeln!(
            s,
            "| subjects | populate s | populate /s | RSS MiB | B/subject | check ops/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/check | other cores | errors |"
        );
        let _ = writeln!(
            s,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for st in &self.steps {
            let _ = writeln!(
                s,
                "| {} | {:.1} | {:.0} | {:.1} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} |",
                st.subjects,
                st.populate_s,
                st.populate_rate,
                st.rss_bytes as f64 / 1048576.0,
                st.bytes_per_subject,
                st.check_throughput,
                st.check_latency_us.p50,
                st.check_latency_us.p99,
                st.check_latency_us.p999,
                st.check_server_cpu_us_per_op
                    .map(|c| format!("{c:.1}"))
                    .unwrap_or_else(|| "–".into()),
                st.check_other_cores
                    .map(|c| format!("{c:.2}"))
                    .unwrap_or_else(|| "–".into()),
                st.populate_errors + st.check_errors
            );
        }
        for st in &self.steps {
            if let Some(n) = &st.note {
                let _ = writeln!(s, "note ({} subjects): {n}", st.subjects);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_down_keeps_two_significant_digits() {
        assert_eq!(round_down(987_654), 980_000);
        assert_eq!(round_down(42), 42);
        assert_eq!(round_down(1_000_000), 1_000_000);
    }

    #[test]
    fn reads_our_own_resident_size() {
        let rss = rss_bytes(std::process::id()).unwrap();
        assert!(rss > 1024 * 1024, "{rss}");
    }
}
