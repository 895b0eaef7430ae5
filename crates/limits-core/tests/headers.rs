//! The HTTP headers computed from real check statuses: rate-limit headers from
//! the most restrictive rate, budget headers from the most used budget, and
//! `Retry-After` only on a denial.

mod common;

use common::{Group, T0, limits, ms, secs, usd};
use limits_core::headers::{Headers, header_values};
use limits_core::{LimitKind, Nanos};

fn get<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.as_str() == name)
        .map(|(_, v)| v.as_str())
}

fn subject() -> Group {
    Group::one(limits(&[
        (LimitKind::RequestsPerSecond, 50),
        (LimitKind::RequestsPerMinute, 10),
        (LimitKind::BudgetDaily, usd(100.0).0),
        (LimitKind::BudgetMonthly, usd(2_500.0).0),
    ]))
}

#[test]
fn headers_from_an_allowed_check() {
    let mut g = subject();
    g.record(usd(78.5).0, 0, T0);
    for i in 0..4 {
        assert!(g.check(0, 0, T0.saturating_add(ms(i))).allowed());
    }
    let now = T0.saturating_add(secs(2));
    let out = g.check(usd(1.0).0, 0, now);
    assert!(out.allowed());
    let h = header_values(&out.statuses, out.retry_after(), now);
    // Five of ten per-minute requests used is tighter than 1 of 50 per second.
    assert_eq!(get(&h, "X-RateLimit-Limit"), Some("10"));
    assert_eq!(get(&h, "X-RateLimit-Remaining"), Some("5"));
    // The oldest request leaves in the bucket ending one second after
    // T0 + 60 s; the header carries Unix seconds.
    let reset = T0.saturating_add(secs(61)).as_secs_ceil().to_string();
    assert_eq!(get(&h, "X-RateLimit-Reset"), Some(reset.as_str()));
    assert_eq!(get(&h, "Retry-After"), None);
    // The daily budget (78.5 %) is more used than the monthly one.
    assert_eq!(get(&h, "X-Budget-Limit"), Some("100.00"));
    assert_eq!(get(&h, "X-Budget-Used"), Some("78.50"));
    assert_eq!(get(&h, "X-Budget-Remaining"), Some("21.50"));
    let names: Vec<_> = h.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
            "X-Budget-Limit",
            "X-Budget-Used",
            "X-Budget-Remaining",
            "X-Budget-Reset",
        ]
    );
}

#[test]
fn headers_from_a_denied_check_carry_retry_after() {
    let mut g = subject();
    for i in 0..10 {
        assert!(g.check(0, 0, T0.saturating_add(secs(i))).allowed());
    }
    let now = T0.saturating_add(secs(10)).saturating_add(ms(500));
    let out = g.check(0, 0, now);
    assert!(!out.allowed());
    let h = header_values(&out.statuses, out.retry_after(), now);
    assert_eq!(get(&h, "X-RateLimit-Limit"), Some("10"));
    assert_eq!(get(&h, "X-RateLimit-Remaining"), Some("0"));
    // The first request leaves at T0 + 61 s, 50.5 s from now: rounded up.
    assert_eq!(out.retry_after(), Some(Nanos(50_500_000_000)));
    assert_eq!(get(&h, "Retry-After"), Some("51"));
}

#[test]
fn a_subject_without_limits_gets_no_headers() {
    let mut g = Group::one(limits(&[]));
    let out = g.check(0, 0, T0);
    assert!(header_values(&out.statuses, out.retry_after(), T0).is_empty());
}
