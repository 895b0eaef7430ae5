//! Prometheus metrics with the usage guide's names and labels, served on
//! their own HTTP listener.
//!
//! The `identifier` label is `dimension:alias` where the config names the
//! subject, else `api_key:<stable hash>` for keys (never the raw key) and
//! `user:<id>` / `team:<id>` (or their hashes, if configured). At most
//! `metrics.identifier_cap` distinct identifiers are labelled; the rest are
//! folded into `other`, so a flood of new keys cannot blow up cardinality.
//! The rate limit service's descriptor counters are labelled
//! `descriptor:<rule name>` or `descriptor:<hash>` (see [`identity`]).

use std::sync::Arc;
use std::time::Duration;

use ahash::AHashSet;
use limits_core::{Dimension, LimitKind, LimitStatus, Subject, SubjectLimits};
use metrics::{counter, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::RwLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::config::MetricsSettings;
use crate::identity;

pub const RATE_LIMIT_CHECKS: &str = "mercator_limits_rate_limit_checks_total";
pub const RATE_LIMIT_HITS: &str = "mercator_limits_rate_limit_hits_total";
pub const BUDGET_CHECKS: &str = "mercator_limits_budget_checks_total";
pub const BUDGET_HITS: &str = "mercator_limits_budget_hits_total";
pub const BUDGET_USAGE: &str = "mercator_limits_budget_usage_percentage";
pub const ENFORCEMENT_ACTIONS: &str = "mercator_limits_enforcement_actions_total";
pub const CHECK_DURATION: &str = "mercator_limits_check_duration_seconds";
pub const CONCURRENT_REQUESTS: &str = "mercator_limits_concurrent_requests";
pub const CONFIG_RELOADS: &str = "mercator_limits_config_reloads_total";
pub const QUEUE_DEPTH: &str = "mercator_limits_queue_depth";
pub const STORE_ERRORS: &str = "mercator_limits_store_errors_total";
pub const RESERVATIONS_OPEN: &str = "mercator_limits_reservations_open";
pub const SUBJECTS: &str = "mercator_limits_subjects";
pub const FAIL_OPEN: &str = "mercator_limits_fail_open_total";
/// Recorded by the Redis store itself, per script round trip.
pub const REDIS_DURATION: &str = limits_store::redis::DURATION_METRIC;

/// Histogram buckets for check durations: fine below a millisecond, where
/// checks are expected to be.
const DURATION_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The label value for identifiers past the cap.
pub const OTHER: &str = "other";

/// Installs the global Prometheus recorder. Call once per process.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(CHECK_DURATION.to_owned()), DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(REDIS_DURATION.to_owned()), DURATION_BUCKETS)?
        .install_recorder()?;
    describe();
    // Error counters exist from the start at zero, so an alert on their
    // increase sees the very first error.
    for operation in [
        "check",
        "record",
        "acquire",
        "release",
        "usage",
        "sweep",
        crate::rls::OPERATION,
    ] {
        counter!(STORE_ERRORS, "operation" => operation).absolute(0);
    }
    for result in ["success", "failure"] {
        counter!(CONFIG_RELOADS, "result" => result).absolute(0);
    }
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        RATE_LIMIT_CHECKS,
        "Rate limit checks by identifier and result."
    );
    describe_counter!(
        RATE_LIMIT_HITS,
        "Rate limit violations by identifier and limit type."
    );
    describe_counter!(BUDGET_CHECKS, "Budget checks by identifier and result.");
    describe_counter!(
        BUDGET_HITS,
        "Budget limit violations by identifier and window."
    );
    describe_gauge!(
        BUDGET_USAGE,
        "Budget used, as a fraction of the budget (0-1)."
    );
    describe_counter!(
        ENFORCEMENT_ACTIONS,
        "Enforcement actions taken, by identifier and action."
    );
    describe_histogram!(
        CHECK_DURATION,
        metrics::Unit::Seconds,
        "Duration of limit operations."
    );
    describe_gauge!(
        CONCURRENT_REQUESTS,
        "Concurrency leases held, by identifier."
    );
    describe_counter!(
        CONFIG_RELOADS,
        "Config reloads by result (success, failure)."
    );
    describe_gauge!(QUEUE_DEPTH, "Requests waiting in the enforcement queue.");
    describe_counter!(STORE_ERRORS, "Store operations that failed, by operation.");
    describe_gauge!(
        RESERVATIONS_OPEN,
        "Open reservations (as of the last sweep)."
    );
    describe_gauge!(SUBJECTS, "Subjects holding state (as of the last sweep).");
    describe_counter!(
        FAIL_OPEN,
        "Calls allowed without a decision because the store was unavailable (storage.redis.fail_open)."
    );
    describe_histogram!(
        REDIS_DURATION,
        "Redis round trips of the decision script, by operation, in seconds."
    );
}

/// Turns subjects into bounded, secret-free label values. Labels are shared
/// `Arc<str>`s, so recording a metric clones a pointer, not a string.
#[derive(Debug)]
pub struct Labels {
    seen: RwLock<AHashSet<Arc<str>>>,
    cap: usize,
    show_users: bool,
    show_teams: bool,
}

impl Labels {
    pub fn new(settings: &MetricsSettings) -> Labels {
        Labels {
            seen: RwLock::new(AHashSet::new()),
            cap: settings.identifier_cap,
            show_users: settings.show_user_ids,
            show_teams: settings.show_team_ids,
        }
    }

    /// The `identifier` label of a subject.
    pub fn identifier(&self, subject: &Subject, limits: &SubjectLimits) -> Arc<str> {
        let hide = match subject.dimension {
            Dimension::ApiKey => true,
            Dimension::User => !self.show_users,
            Dimension::Team => !self.show_teams,
        };
        let label = identity::display(subject, limits, hide);
        if let Some(known) = self.seen.read().get(label.as_str()) {
            return known.clone();
        }
        let mut seen = self.seen.write();
        if let Some(known) = seen.get(label.as_str()) {
            return known.clone();
        }
        if seen.len() >= self.cap {
            return Arc::from(OTHER);
        }
        let label: Arc<str> = Arc::from(label);
        seen.insert(label.clone());
        label
    }
}

fn window_label(kind: LimitKind) -> &'static str {
    kind.name()
}

/// Records the metrics of one decided check (or usage record): checks and
/// hits per family, and the budget usage gauges.
pub fn record_statuses(
    labels: &Labels,
    subjects: &[Subject],
    limits: &[&SubjectLimits],
    statuses: &[LimitStatus],
    count_checks: bool,
) {
    for (i, (subject, lim)) in subjects.iter().zip(limits).enumerate() {
        if lim.is_unlimited() {
            continue;
        }
        let id = labels.identifier(subject, lim);
        let mine = || statuses.iter().filter(move |s| s.subject == i);
        let mut rate_hit = false;
        let mut budget_hit = false;
        let mut has_rate = false;
        let mut has_budget = false;
        for s in mine() {
            if s.kind.is_budget() {
                has_budget = true;
                gauge!(BUDGET_USAGE, "identifier" => id.clone(), "window" => window_label(s.kind))
                    .set(s.used as f64 / s.limit as f64);
                if s.exceeded {
                    budget_hit = true;
                    counter!(BUDGET_HITS, "identifier" => id.clone(), "window" => window_label(s.kind))
                        .increment(1);
                }
            } else {
                has_rate = true;
                if s.exceeded {
                    rate_hit = true;
                    counter!(RATE_LIMIT_HITS, "identifier" => id.clone(), "limit_type" => s.kind.name())
                        .increment(1);
                }
            }
        }
        if !count_checks {
            continue;
        }
        if has_rate {
            let result = if rate_hit { "denied" } else { "allowed" };
            counter!(RATE_LIMIT_CHECKS, "identifier" => id.clone(), "result" => result)
                .increment(1);
        }
        if has_budget {
            let result = if budget_hit { "denied" } else { "allowed" };
            counter!(BUDGET_CHECKS, "identifier" => id.clone(), "result" => result).increment(1);
        }
    }
}

/// Serves `/metrics` on `listener` until the task is dropped. A minimal
/// HTTP/1.1 responder is enough for Prometheus scrapes and keeps the
/// dependency set small.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut read = 0;
            // Read the request head (bounded), then answer and close.
            let head = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match socket.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => read += n,
                    }
                    if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") || read == buf.len() {
                        return Some(());
                    }
                }
            })
            .await;
            if !matches!(head, Ok(Some(()))) {
                return;
            }
            let request = String::from_utf8_lossy(&buf[..read]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (status, body, kind) = if path == "/metrics" || path.starts_with("/metrics?") {
                (
                    "200 OK",
                    handle.render(),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            } else {
                (
                    "404 Not Found",
                    "not found: try /metrics\n".to_owned(),
                    "text/plain",
                )
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(cap: usize) -> MetricsSettings {
        MetricsSettings {
            identifier_cap: cap,
            ..MetricsSettings::default()
        }
    }

    #[test]
    fn identifiers_past_the_cap_fold_into_other() {
        let labels = Labels::new(&settings(2));
        let none = SubjectLimits::UNLIMITED;
        let a = labels.identifier(&Subject::new(Dimension::Team, "a"), &none);
        let b = labels.identifier(&Subject::new(Dimension::Team, "b"), &none);
        assert_eq!((&*a, &*b), ("team:a", "team:b"));
        let c = labels.identifier(&Subject::new(Dimension::Team, "c"), &none);
        assert_eq!(&*c, OTHER, "a third identifier is past the cap");
        // Known identifiers keep their label.
        let again = labels.identifier(&Subject::new(Dimension::Team, "a"), &none);
        assert_eq!(&*again, "team:a");
    }

    #[test]
    fn api_keys_are_labelled_by_alias_or_hash() {
        let labels = Labels::new(&settings(10));
        let key = Subject::new(Dimension::ApiKey, "sk-secret");
        let shown = labels.identifier(&key, &SubjectLimits::UNLIMITED);
        assert!(!shown.contains("sk-secret"));
        let aliased = SubjectLimits::default().with_alias("prod");
        assert_eq!(&*labels.identifier(&key, &aliased), "api_key:prod");
    }
}
