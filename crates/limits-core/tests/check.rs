//! Engine checks per limit kind: budgets, request and token rates, exhausted
//! limits, exact `retry_after`, and atomic multi-subject decisions.

mod common;

use common::{Clock, Group, T0, limits, ms, secs, usd};
use limits_core::{LimitKind, Nanos, window::BUCKETS};

const BUDGETS: [LimitKind; 3] = [
    LimitKind::BudgetHourly,
    LimitKind::BudgetDaily,
    LimitKind::BudgetMonthly,
];

const REQUEST_RATES: [LimitKind; 3] = [
    LimitKind::RequestsPerSecond,
    LimitKind::RequestsPerMinute,
    LimitKind::RequestsPerHour,
];

const TOKEN_RATES: [LimitKind; 2] = [LimitKind::TokensPerMinute, LimitKind::TokensPerHour];

fn window(kind: LimitKind) -> Nanos {
    kind.window().expect("a windowed kind")
}

#[test]
fn each_budget_allows_spend_up_to_the_limit_then_denies() {
    for kind in BUDGETS {
        let limit = usd(10.0).0;
        let mut g = Group::one(limits(&[(kind, limit)]));
        let mut clock = Clock::start();
        g.record(usd(9.0).0, 0, clock.now());
        clock.advance(secs(1));

        // $9 spent: a $1 estimate fits exactly, a $1.000000001 one does not.
        let fits = g.check(usd(1.0).0, 0, clock.now());
        assert!(fits.allowed(), "{kind:?}: {fits:?}");
        let over = g.check(usd(1.0).0 + 1, 0, clock.now());
        assert!(!over.allowed(), "{kind:?}");
        let denial = over.denial().expect("a denial");
        assert_eq!((denial.subject, denial.kind), (0, kind));
        // The $9 leaves the window between W and W + W/60 after it was spent.
        let ra = over.retry_after().expect("spend expires");
        let spent_at = T0;
        let earliest = spent_at.saturating_add(window(kind));
        let latest = earliest.saturating_add(Nanos(window(kind).0 / BUCKETS));
        let at = clock.now().saturating_add(ra);
        assert!(at >= earliest && at <= latest, "{kind:?}: {at:?}");
        // A plain check holds nothing: the budget still shows only the spend.
        assert_eq!(g.used(0, kind, clock.now()), usd(9.0).0);
    }
}

#[test]
fn each_request_rate_admits_its_limit_then_denies() {
    for kind in REQUEST_RATES {
        let mut g = Group::one(limits(&[(kind, 5)]));
        let mut clock = Clock::start();
        for n in 1..=5 {
            let out = g.check(0, 0, clock.now());
            assert!(out.allowed(), "{kind:?} request {n}");
            assert_eq!(out.statuses[0].used, n);
            clock.advance(ms(1));
        }
        let out = g.check(0, 0, clock.now());
        assert!(!out.allowed(), "{kind:?}");
        assert_eq!(out.denial().map(|d| d.kind), Some(kind));
        assert!(out.statuses[0].exceeded);
        // A denied request is not counted.
        assert_eq!(g.used(0, kind, clock.now()), 5);
        // Once the window has passed, the limit admits again.
        clock.advance(window(kind).saturating_add(Nanos(window(kind).0 / BUCKETS)));
        assert!(g.check(0, 0, clock.now()).allowed(), "{kind:?}");
    }
}

#[test]
fn each_token_rate_admits_up_to_the_limit_then_denies() {
    for kind in TOKEN_RATES {
        let mut g = Group::one(limits(&[(kind, 10_000)]));
        let clock = Clock::start();
        g.record(0, 7_000, clock.now());
        assert!(g.check(0, 3_000, clock.now()).allowed(), "{kind:?}");
        let out = g.check(0, 3_001, clock.now());
        assert!(!out.allowed(), "{kind:?}");
        assert_eq!(out.denial().map(|d| d.kind), Some(kind));
        assert_eq!(g.used(0, kind, clock.now()), 7_000);
    }
}

#[test]
fn an_exhausted_budget_denies_a_zero_estimate() {
    for kind in BUDGETS {
        let mut g = Group::one(limits(&[(kind, usd(5.0).0)]));
        let clock = Clock::start();
        assert!(g.check(0, 0, clock.now()).allowed());
        g.record(usd(5.0).0, 0, clock.now());
        let out = g.check(0, 0, clock.now());
        assert!(
            !out.allowed(),
            "{kind:?}: a spent budget must block calls of unknown cost"
        );
        assert_eq!(out.denial().map(|d| d.kind), Some(kind));
        assert!(out.retry_after().is_some());
    }
}

#[test]
fn an_exhausted_token_limit_denies_a_zero_token_request() {
    let mut g = Group::one(limits(&[(LimitKind::TokensPerMinute, 100)]));
    let clock = Clock::start();
    g.record(0, 100, clock.now());
    assert!(!g.check(0, 0, clock.now()).allowed());
}

#[test]
fn an_estimate_larger_than_the_limit_can_never_fit() {
    let mut g = Group::one(limits(&[(LimitKind::BudgetDaily, usd(1.0).0)]));
    let out = g.check(usd(1.5).0, 0, T0);
    assert!(!out.allowed());
    assert_eq!(out.retry_after(), None);
    assert_eq!(out.denial().map(|d| d.retry_after), Some(None));
}

/// Fills a request-rate limit with requests spread over part of its window,
/// then checks that a denied request fits exactly at `now + retry_after` and
/// not one nanosecond before.
fn retry_after_is_exact(kind: LimitKind, limit: u64, spacing: Nanos) {
    let mut g = Group::one(limits(&[(kind, limit)]));
    let mut clock = Clock::start();
    clock.advance(ms(3)); // off the bucket boundary
    let first = clock.now();
    for _ in 0..limit {
        assert!(g.check(0, 0, clock.now()).allowed());
        clock.advance(spacing);
    }
    let denied = g.check(0, 0, clock.now());
    assert!(!denied.allowed());
    let ra = denied.retry_after().expect("a request-rate denial clears");
    assert_eq!(denied.denial().and_then(|d| d.retry_after), Some(ra));

    // The first request leaves no earlier than W and no later than W + W/60.
    let freed_at = clock.now().saturating_add(ra);
    assert!(freed_at >= first.saturating_add(window(kind)));
    assert!(
        freed_at
            <= first
                .saturating_add(window(kind))
                .saturating_add(Nanos(window(kind).0 / BUCKETS))
    );

    let before = freed_at.saturating_sub(Nanos(1));
    let early = g.check(0, 0, before);
    assert!(!early.allowed(), "{kind:?}: fitted 1 ns before retry_after");
    assert_eq!(early.retry_after(), Some(Nanos(1)));
    assert!(
        g.check(0, 0, freed_at).allowed(),
        "{kind:?}: did not fit at retry_after"
    );
}

#[test]
fn retry_after_for_a_request_rate_denial_is_exact() {
    retry_after_is_exact(LimitKind::RequestsPerSecond, 3, ms(100));
    retry_after_is_exact(LimitKind::RequestsPerMinute, 10, secs(2));
    retry_after_is_exact(LimitKind::RequestsPerHour, 4, secs(60));
}

#[test]
fn retry_after_for_a_budget_denial_waits_for_enough_spend_to_expire() {
    let kind = LimitKind::BudgetHourly;
    let mut g = Group::one(limits(&[(kind, 100)]));
    let mut clock = Clock::start();
    // Three spends in three different one-minute buckets.
    g.record(40, 0, clock.now());
    clock.advance(secs(120));
    g.record(30, 0, clock.now());
    clock.advance(secs(120));
    g.record(20, 0, clock.now());
    clock.advance(secs(60));

    // 90 used: 50 more needs 40 freed, which only the first spend gives...
    let out = g.check(50, 0, clock.now());
    let ra = out.retry_after().expect("clears");
    assert_eq!(
        clock.now().saturating_add(ra),
        T0.saturating_add(Nanos::HOUR).saturating_add(secs(60))
    );
    // ...and 75 more needs 65 freed: the first two spends.
    let out = g.check(75, 0, clock.now());
    let ra = out.retry_after().expect("clears");
    let freed_at = clock.now().saturating_add(ra);
    assert_eq!(
        freed_at,
        T0.saturating_add(Nanos::HOUR).saturating_add(secs(180))
    );
    assert!(!g.check(75, 0, freed_at.saturating_sub(Nanos(1))).allowed());
    assert!(g.check(75, 0, freed_at).allowed());
}

#[test]
fn an_allowed_check_counts_one_request_on_every_subject() {
    let l = limits(&[(LimitKind::RequestsPerMinute, 10)]);
    let mut g = Group::new(vec![l.clone(), l.clone(), l]);
    let out = g.check(0, 0, T0);
    assert!(out.allowed());
    for i in 0..3 {
        assert_eq!(g.used(i, LimitKind::RequestsPerMinute, T0), 1);
    }
}

#[test]
fn a_team_over_budget_denies_and_leaves_key_and_user_untouched() {
    let key = limits(&[
        (LimitKind::RequestsPerMinute, 100),
        (LimitKind::TokensPerMinute, 100_000),
        (LimitKind::BudgetDaily, usd(500.0).0),
    ]);
    let user = limits(&[
        (LimitKind::RequestsPerSecond, 10),
        (LimitKind::BudgetMonthly, usd(500.0).0),
    ]);
    let team = limits(&[(LimitKind::BudgetDaily, usd(100.0).0)]);
    let mut g = Group::new(vec![key, user, team]);
    let mut clock = Clock::start();
    // Some history on every subject: a reservation, usage and requests.
    g.reserve(
        1,
        usd(2.0).0,
        500,
        clock.now().saturating_add(secs(300)),
        clock.now(),
    );
    clock.advance(secs(1));
    g.record(usd(97.5).0, 2_000, clock.now());
    clock.advance(secs(1));

    // The check expires what is due first (the user's one-second request
    // window has emptied), so compare against states expired the same way.
    let before = g.expired_clone(clock.now());
    let out = g.check(usd(1.0).0, 100, clock.now());
    assert!(!out.allowed());
    let d = out.denial().expect("a denial");
    assert_eq!((d.subject, d.kind), (2, LimitKind::BudgetDaily));
    // Field for field equal: no request counted, no hold opened.
    assert_eq!(g.states, before);
    assert_eq!(out.reservation(), None);
    // The statuses say which limit stopped the request and only that one.
    let exceeded: Vec<_> = out
        .statuses
        .iter()
        .filter(|s| s.exceeded)
        .map(|s| (s.subject, s.kind))
        .collect();
    assert_eq!(exceeded, [(2, LimitKind::BudgetDaily)]);
}

#[test]
fn the_slowest_limit_to_clear_decides_retry_after() {
    let key = limits(&[(LimitKind::RequestsPerSecond, 1)]);
    let team = limits(&[(LimitKind::RequestsPerMinute, 1)]);
    let mut g = Group::new(vec![key, team]);
    assert!(g.check(0, 0, T0).allowed());
    let now = T0.saturating_add(ms(10));
    let out = g.check(0, 0, now);
    assert!(!out.allowed());
    let d = out.denial().expect("a denial");
    assert_eq!((d.subject, d.kind), (1, LimitKind::RequestsPerMinute));
    let ra = out.retry_after().expect("clears");
    assert!(ra >= secs(59), "{ra:?}");
    assert!(
        !g.check(0, 0, now.saturating_add(ra).saturating_sub(Nanos(1)))
            .allowed()
    );
    assert!(g.check(0, 0, now.saturating_add(ra)).allowed());
}

#[test]
fn an_unlimited_subject_is_always_allowed_and_keeps_nothing() {
    let mut g = Group::one(limits(&[]));
    for i in 0..100 {
        assert!(
            g.check(1_000_000, 1_000, T0.saturating_add(ms(i)))
                .allowed()
        );
    }
    g.record(usd(1.0).0, 1_000, T0.saturating_add(secs(1)));
    assert!(g.states[0].is_idle());
    assert!(g.states[0].windows().next().is_none());
    assert!(g.usage(0, T0).is_empty());
}
