//! The HTTP headers a gateway copies onto its response, computed from the
//! limit statuses: the most restrictive limit decides each header.

use crate::limits::{LimitStatus, Resource};
use crate::money::NanoUsd;
use crate::time::Nanos;

/// `a` is more restrictive than `b`: an exceeded limit beats one that is not;
/// then the smaller fraction remaining; then the later reset.
fn tighter(a: &LimitStatus, b: &LimitStatus) -> bool {
    if a.exceeded != b.exceeded {
        return a.exceeded;
    }
    // remaining_a / limit_a < remaining_b / limit_b, without division.
    let lhs = u128::from(a.remaining()) * u128::from(b.limit);
    let rhs = u128::from(b.remaining()) * u128::from(a.limit);
    if lhs != rhs {
        return lhs < rhs;
    }
    a.reset_at > b.reset_at
}

/// The most restrictive status among those of a resource kind.
pub fn most_restrictive(
    statuses: &[LimitStatus],
    pick: impl Fn(&LimitStatus) -> bool,
) -> Option<&LimitStatus> {
    statuses
        .iter()
        .filter(|s| pick(s))
        .fold(None, |best: Option<&LimitStatus>, s| match best {
            Some(b) if !tighter(s, b) => Some(b),
            _ => Some(s),
        })
}

/// The most restrictive budget: the one with the highest fraction used.
pub fn budget_summary(statuses: &[LimitStatus]) -> Option<&LimitStatus> {
    most_restrictive(statuses, |s| s.kind.is_budget())
}

/// Unix seconds (rounded up) of a reset, or of `now` for an empty window.
fn reset_secs(reset_at: Option<Nanos>, now: Nanos) -> u64 {
    reset_at.unwrap_or(now).as_secs_ceil()
}

/// The headers to add, as `(name, value)` pairs in a fixed order:
/// `X-RateLimit-Limit`, `-Remaining`, `-Reset` from the most restrictive
/// request or token rate limit; `Retry-After` (seconds, rounded up) when the
/// request was denied and can be retried; `X-Budget-Limit`, `-Used`,
/// `-Remaining` (USD) and `-Reset` from the most used budget.
pub fn headers(
    statuses: &[LimitStatus],
    retry_after: Option<Nanos>,
    now: Nanos,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(8);
    let rate = most_restrictive(statuses, |s| {
        matches!(s.kind.resource(), Resource::Requests | Resource::Tokens)
    });
    if let Some(s) = rate {
        out.push(("X-RateLimit-Limit", s.limit.to_string()));
        out.push(("X-RateLimit-Remaining", s.remaining().to_string()));
        out.push(("X-RateLimit-Reset", reset_secs(s.reset_at, now).to_string()));
    }
    if let Some(r) = retry_after {
        out.push(("Retry-After", r.as_secs_ceil().max(1).to_string()));
    }
    if let Some(b) = budget_summary(statuses) {
        out.push(("X-Budget-Limit", NanoUsd(b.limit).to_string()));
        out.push(("X-Budget-Used", NanoUsd(b.used).to_string()));
        out.push(("X-Budget-Remaining", NanoUsd(b.remaining()).to_string()));
        out.push(("X-Budget-Reset", reset_secs(b.reset_at, now).to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::LimitKind;

    fn st(kind: LimitKind, limit: u64, used: u64, exceeded: bool) -> LimitStatus {
        LimitStatus {
            subject: 0,
            kind,
            limit,
            used,
            reset_at: Some(Nanos::from_secs(100)),
            exceeded,
        }
    }

    #[test]
    fn the_most_restrictive_limit_decides() {
        let s = vec![
            st(LimitKind::RequestsPerSecond, 10, 2, false),
            st(LimitKind::RequestsPerMinute, 100, 95, false),
            st(
                LimitKind::BudgetDaily,
                100_000_000_000,
                78_500_000_000,
                false,
            ),
            st(
                LimitKind::BudgetMonthly,
                2_500_000_000_000,
                78_500_000_000,
                false,
            ),
        ];
        let h = headers(&s, None, Nanos::from_secs(50));
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("X-RateLimit-Limit"), Some("100"));
        assert_eq!(get("X-RateLimit-Remaining"), Some("5"));
        assert_eq!(get("X-RateLimit-Reset"), Some("100"));
        assert_eq!(get("Retry-After"), None);
        assert_eq!(get("X-Budget-Limit"), Some("100.00"));
        assert_eq!(get("X-Budget-Used"), Some("78.50"));
        assert_eq!(get("X-Budget-Remaining"), Some("21.50"));
    }

    #[test]
    fn an_exceeded_limit_wins_and_retry_after_rounds_up() {
        let s = vec![
            st(LimitKind::RequestsPerSecond, 10, 10, true),
            st(LimitKind::RequestsPerMinute, 100, 99, false),
        ];
        let h = headers(&s, Some(Nanos::from_millis(1_200)), Nanos::ZERO);
        assert!(h.contains(&("X-RateLimit-Limit", "10".to_string())));
        assert!(h.contains(&("Retry-After", "2".to_string())));
        assert!(!h.iter().any(|(k, _)| k.starts_with("X-Budget")));
    }
}
