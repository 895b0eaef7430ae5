//! The human-readable reason given with a decision.

use limits_core::headers::budget_summary;
use limits_core::{Action, CheckOutcome};

/// How waiting in the enforcement queue ended, for a check that queued
/// (the library decides without queueing; a server that queues says how
/// it went).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Not queued: allowed at once, or not in queue mode.
    No,
    /// Waited, then admitted.
    Admitted,
    /// Could never fit within the queue timeout: denied at once.
    WontFit,
    /// The subject's line already held this many requests.
    Full(usize),
    /// The queue timeout or the caller's deadline came first.
    TimedOut,
    /// The service is shutting down.
    Closed,
}

/// The reason for a decision: empty for a plain allow. `who(i)` names
/// subject `i` as it may be shown (never a raw API key); `scope` is the
/// model scope of the limit that decided, when a scope's.
pub fn reason(
    outcome: &CheckOutcome,
    queued: Queued,
    who: impl Fn(usize) -> String,
    scope: Option<&str>,
    model: &str,
    downgrade_to: &str,
) -> String {
    let denial = outcome.denial();
    let exceeded = denial.map(|d| {
        let mut r = format!("{} exceeded for {}", d.kind.describe(), who(d.subject));
        if let Some(pattern) = scope {
            r.push_str(&format!(" in model scope '{pattern}'"));
        }
        r
    });
    let never = denial.is_some_and(|d| d.retry_after.is_none());
    match (outcome.allowed(), queued) {
        (false, Queued::Full(depth)) => format!(
            "queue full: {depth} requests already waiting; {}",
            exceeded.unwrap_or_default()
        ),
        (false, Queued::Closed) => {
            format!(
                "queue closed: the service is shutting down; {}",
                exceeded.unwrap_or_default()
            )
        }
        (false, Queued::TimedOut) => {
            format!("queue timeout: {}", exceeded.unwrap_or_default())
        }
        (false, Queued::WontFit) => format!(
            "{}; the request cannot fit within the queue timeout",
            exceeded.unwrap_or_default()
        ),
        (false, _) => {
            let mut r = exceeded.unwrap_or_else(|| "denied".to_owned());
            if outcome.attempt > 0 {
                r.push_str("; no model in the downgrade chain fits");
            } else if never {
                r.push_str("; the request alone is larger than the limit");
            }
            r
        }
        (true, _) => match outcome.action {
            Action::Downgrade => format!(
                "downgraded from {model} to {downgrade_to}: {} for {model}",
                exceeded.unwrap_or_else(|| "a limit is exceeded".to_owned())
            ),
            Action::Alert if denial.is_some() => {
                format!("{} (alert only: allowed)", exceeded.unwrap_or_default())
            }
            _ if outcome.alert => match budget_summary(&outcome.statuses) {
                Some(b) => format!(
                    "{} of {} at {:.1}% (alert threshold reached)",
                    b.kind.describe(),
                    who(b.subject),
                    b.used as f64 * 100.0 / b.limit as f64
                ),
                None => "alert threshold reached".to_owned(),
            },
            _ => String::new(),
        },
    }
}
