//! Latency histograms and counters for a run, and the report they turn into
//! (a human table or JSON). Latencies are kept in microseconds in
//! HdrHistograms with three significant digits.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::workload::Outcome;

/// The longest latency a histogram holds exactly (60 s); longer ones are
/// clamped, which only happens when a run is already broken.
const MAX_US: u64 = 60_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Everything measured over a run. Each caller keeps its own and they are
/// merged at the end, so recording never contends on a lock in closed loop.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Per operation: from the intended send time (open loop) or the actual
    /// send time (closed loop) to the last response.
    pub total: Histogram<u64>,
    /// Per RPC of the operation, from its own send.
    pub steps: [Histogram<u64>; 2],
    /// Open loop only: from the actual send, to show how much of `total` was
    /// spent waiting to be sent.
    pub service: Histogram<u64>,
    pub ok: u64,
    pub allowed: u64,
    pub denied: u64,
    /// `rls`: answers with a descriptor the server decided nothing for.
    pub unmatched: u64,
    pub response_bytes: u64,
    /// Failed operations by gRPC code name; `Unsent` counts open-loop sends
    /// dropped because too many requests were outstanding.
    pub errors: BTreeMap<String, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            total: histogram(),
            steps: [histogram(), histogram()],
            service: histogram(),
            ok: 0,
            allowed: 0,
            denied: 0,
            unmatched: 0,
            response_bytes: 0,
            errors: BTreeMap::new(),
        }
    }
}

impl Recorder {
    /// Records one finished operation. `total` is measured by the caller
    /// because only it knows where the clock started.
    pub fn record(
        &mut self,
        result: &Result<Outcome, tonic::Status>,
        total: Duration,
        service: Option<Duration>,
    ) {
        match result {
            Ok(o) => {
                self.ok += 1;
                if o.allowed {
                    self.allowed += 1;
                } else {
                    self.denied += 1;
                }
                self.unmatched += u64::from(o.unmatched);
                self.response_bytes += o.response_bytes as u64;
                self.total.saturating_record(micros(total).max(1));
                for (h, step) in self.steps.iter_mut().zip(o.steps) {
                    if let Some(d) = step {
                        h.saturating_record(micros(d).max(1));
                    }
                }
                if let Some(d) = service {
                    self.service.saturating_record(micros(d).max(1));
                }
            }
            Err(status) => self.error(&format!("{:?}", status.code()), 1),
        }
    }

    pub fn error(&mut self, code: &str, n: u64) {
        *self.errors.entry(code.to_owned()).or_default() += n;
    }

    pub fn merge(&mut self, other: &Recorder) {
        // Both histograms have the same bounds, so adding cannot fail.
        self.total.add(&other.total).expect("same bounds");
        for (a, b) in self.steps.iter_mut().zip(&other.steps) {
            a.add(b).expect("same bounds");
        }
        self.service.add(&other.service).expect("same bounds");
        self.ok += other.ok;
        self.allowed += other.allowed;
        self.denied += other.denied;
        self.unmatched += other.unmatched;
        self.response_bytes += other.response_bytes;
        for (k, v) in &other.errors {
            self.error(k, *v);
        }
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// How a run was driven, carried into its report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    /// Which server this was (e.g. `baseline`, `limitsd-memory`).
    pub label: String,
    pub addr: String,
    pub workload: String,
    /// `closed` or `open`.
    pub mode: String,
    pub concurrency: usize,
    /// Open loop: the intended operations per second.
    pub rate: Option<f64>,
    pub connections: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub subjects: u64,
    pub distribution: String,
    pub zipf_s: f64,
    pub subjects_per_call: usize,
}

/// The result of one run, as printed with `--json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    #[serde(flatten)]
    pub info: RunInfo,
    /// Operations that succeeded in the measured window.
    pub ok: u64,
    /// Successful operations per second over the measured window.
    pub throughput: f64,
    pub allowed: u64,
    pub denied: u64,
    /// `rls`: answers in which some descriptor was answered without a
    /// limit, i.e. the server's config matched nothing for it (a wrong
    /// domain or descriptor key) and the run did not measure a decision.
    #[serde(default)]
    pub unmatched: u64,
    pub errors: BTreeMap<String, u64>,
    pub error_total: u64,
    /// Per operation (both RPCs for a pair).
    pub latency_us: Summary,
    /// Per RPC, by step name.
    pub steps: BTreeMap<String, Summary>,
    /// Open loop: latency from the actual send, without send lag.
    pub service_us: Option<Summary>,
    pub mean_response_bytes: f64,
    /// CPU the server spent per successful operation over the measured
    /// window, when its pid was given.
    #[serde(default)]
    pub server_cpu_us_per_op: Option<f64>,
    /// CPU the load generator spent per successful operation.
    #[serde(default)]
    pub client_cpu_us_per_op: Option<f64>,
    /// Cores kept busy by everything other than the client and the server
    /// during the measured window (0 on a quiet machine): a noise gauge.
    #[serde(default)]
    pub other_cores: Option<f64>,
    /// The spectrum of `latency_us` (in an open loop, from the intended
    /// send), `[percentile, µs]` from the median to the maximum, for
    /// percentile plots.
    #[serde(default)]
    pub percentiles: Vec<[f64; 2]>,
}

/// The percentiles of a spectrum: denser towards the tail, as
/// HdrHistogram's percentile plots are read.
const SPECTRUM: [f64; 14] = [
    50.0, 75.0, 90.0, 95.0, 97.5, 99.0, 99.5, 99.75, 99.9, 99.95, 99.975, 99.99, 99.999, 100.0,
];

fn spectrum(h: &Histogram<u64>) -> Vec<[f64; 2]> {
    if h.is_empty() {
        return Vec::new();
    }
    SPECTRUM
        .iter()
        .map(|&p| [p, h.value_at_percentile(p) as f64])
        .collect()
}

impl Report {
    /// What to say when some answers named no limit for a descriptor
    /// (`rls`): the run then measured no decision for them.
    pub fn unmatched_warning(&self) -> Option<String> {
        (self.unmatched > 0).then(|| {
            format!(
                "{} answers named no limit for some descriptor: the server's config does not \
                 map the domain or the descriptor keys, so they measured no decision",
                self.unmatched
            )
        })
    }

    pub fn new(info: RunInfo, rec: &Recorder, step_names: &[&str]) -> Report {
        let open = info.mode == "open";
        let throughput = if info.duration_s > 0.0 {
            rec.ok as f64 / info.duration_s
        } else {
            0.0
        };
        let steps = step_names
            .iter()
            .zip(&rec.steps)
            .map(|(name, h)| ((*name).to_owned(), Summary::of(h)))
            .collect();
        Report {
            ok: rec.ok,
            throughput,
            allowed: rec.allowed,
            denied: rec.denied,
            unmatched: rec.unmatched,
            errors: rec.errors.clone(),
            error_total: rec.error_total(),
            latency_us: Summary::of(&rec.total),
            steps,
            service_us: open.then(|| Summary::of(&rec.service)),
            mean_response_bytes: if rec.ok > 0 {
                rec.response_bytes as f64 / rec.ok as f64
            } else {
                0.0
            },
            server_cpu_us_per_op: None,
            client_cpu_us_per_op: None,
            other_cores: None,
            percentiles: spectrum(&rec.total),
            info,
        }
    }

    /// A human-readable account of the run.
    pub fn human(&self) -> String {
        use std::fmt::Write;
        let i = &self.info;
        let mut s = String::new();
        let how = match i.rate {
            Some(r) => format!("open loop at {r:.0}/s"),
            None => format!("closed loop, {} callers", i.concurrency),
        };
        let _ = writeln!(
            s,
            "{} on {} ({}): {how}, {} connection(s), {:.0} s + {:.0} s warm-up",
            i.workload, i.label, i.addr, i.connections, i.duration_s, i.warmup_s
        );
        let _ = writeln!(
            s,
            "subjects: {} ids, {}{}, {} per call",
            i.subjects,
            i.distribution,
            if i.distribution == "zipf" {
                format!(" s={}", i.zipf_s)
            } else {
                String::new()
            },
            i.subjects_per_call
        );
        let _ = writeln!(
            s,
            "throughput: {:.0} ops/s  ok={} allowed={} denied={} errors={}  mean response {:.0} B",
            self.throughput,
            self.ok,
            self.allowed,
            self.denied,
            self.error_total,
            self.mean_response_bytes
        );
        if let Some(w) = self.unmatched_warning() {
            let _ = writeln!(s, "warning: {w}");
        }
        if let Some(c) = self.client_cpu_us_per_op {
            let server = self
                .server_cpu_us_per_op
                .map(|s| format!("server {s:.1}, "))
                .unwrap_or_default();
            let _ = writeln!(s, "CPU per operation: {server}client {c:.1} µs");
        }
        if let Some(o) = self.other_cores {
            let _ = writeln!(s, "other processes kept {o:.2} cores busy during the run");
        }
        for (code, n) in &self.errors {
            let _ = writeln!(s, "  error {code}: {n}");
        }
        let _ = writeln!(
            s,
            "{:<12} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
            "latency µs", "count", "mean", "p50", "p90", "p99", "p99.9", "max"
        );
        let mut row = |name: &str, m: &Summary| {
            let _ = writeln!(
                s,
                "{:<12} {:>9} {:>8.0} {:>8} {:>8} {:>8} {:>8} {:>9}",
                name, m.count, m.mean, m.p50, m.p90, m.p99, m.p999, m.max
            );
        };
        row("operation", &self.latency_us);
        if let Some(svc) = &self.service_us {
            row("  from send", svc);
        }
        if self.steps.len() > 1 {
            for (name, m) in &self.steps {
                row(&format!("  {name}"), m);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_errors() {
        let mut a = Recorder::default();
        let ok = Ok(Outcome {
            allowed: true,
            steps: [Some(Duration::from_micros(100)), None],
            response_bytes: 10,
            unmatched: true,
        });
        a.record(&ok, Duration::from_micros(100), None);
        let mut b = Recorder::default();
        b.record(&Err(tonic::Status::unavailable("x")), Duration::ZERO, None);
        b.record(&ok, Duration::from_micros(300), None);
        a.merge(&b);
        assert_eq!((a.ok, a.allowed, a.error_total()), (2, 2, 1));
        assert_eq!(a.unmatched, 2);
        assert_eq!(a.errors.get("Unavailable"), Some(&1));
        let s = Summary::of(&a.total);
        assert_eq!(s.count, 2);
        assert!((99..=101).contains(&s.p50), "{s:?}");
        assert!((299..=301).contains(&s.max), "{s:?}");
    }
}
