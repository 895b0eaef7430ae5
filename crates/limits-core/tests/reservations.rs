//! Reserved checks: holding an estimate, settling it with a larger or smaller
//! actual, charging a retried settlement once, and releasing unsettled holds
//! when they expire.

mod common;

use common::{Clock, Group, T0, limits, secs, usd};
use limits_core::{LimitKind, Nanos};

const DAILY: LimitKind = LimitKind::BudgetDaily;
const TPM: LimitKind = LimitKind::TokensPerMinute;

fn budget_and_tokens() -> Group {
    Group::one(limits(&[(DAILY, usd(10.0).0), (TPM, 10_000)]))
}

#[test]
fn a_reserved_check_holds_the_estimate_on_budgets_and_tokens() {
    let mut g = budget_and_tokens();
    let out = g.reserve(7, usd(3.0).0, 4_000, T0.saturating_add(secs(60)), T0);
    assert!(out.allowed());
    assert_eq!(out.reservation(), Some(7));
    assert_eq!(g.used(0, DAILY, T0), usd(3.0).0);
    assert_eq!(g.used(0, TPM, T0), 4_000);
    // The hold is not spend: the window counters are still empty.
    assert!(g.states[0].window(DAILY).is_none_or(|w| w.total() == 0));
    let held = g.states[0].held(T0);
    assert_eq!((held.cost, held.tokens), (usd(3.0).0, 4_000));
}

#[test]
fn a_hold_stops_a_concurrent_request_that_would_overshoot() {
    let mut g = budget_and_tokens();
    let expires = T0.saturating_add(secs(60));
    assert!(g.reserve(1, usd(6.0).0, 0, expires, T0).allowed());
    // Without the hold this $6 would fit ($0 spent); with it, $12 > $10.
    let out = g.reserve(2, usd(6.0).0, 0, expires, T0);
    assert!(!out.allowed());
    assert_eq!(out.denial().map(|d| d.kind), Some(DAILY));
    // The hold expires at 60 s, long before any spend would: that is the wait.
    assert_eq!(out.retry_after(), Some(secs(60)));
    assert!(g.reserve(3, usd(4.0).0, 0, expires, T0).allowed());
}

#[test]
fn settling_with_a_larger_actual_charges_the_actual() {
    let mut g = budget_and_tokens();
    let clock = Clock::start();
    g.reserve(
        1,
        usd(2.0).0,
        1_000,
        T0.saturating_add(secs(60)),
        clock.now(),
    );
    let out = g.settle(1, usd(3.5).0, 1_800, clock.now());
    assert!(!out.duplicate);
    assert_eq!(g.used(0, DAILY, clock.now()), usd(3.5).0);
    assert_eq!(g.used(0, TPM, clock.now()), 1_800);
    assert_eq!(g.states[0].held(clock.now()), limits_core::Held::default());
    assert!(g.states[0].holds().is_empty());
    assert_eq!(g.states[0].settled().len(), 1, "remembered as settled");
}

#[test]
fn settling_with_a_smaller_actual_frees_the_difference() {
    let mut g = budget_and_tokens();
    let expires = T0.saturating_add(secs(60));
    g.reserve(1, usd(8.0).0, 9_000, expires, T0);
    assert!(!g.check(usd(5.0).0, 0, T0).allowed());
    g.settle(1, usd(1.0).0, 500, T0);
    assert_eq!(g.used(0, DAILY, T0), usd(1.0).0);
    assert_eq!(g.used(0, TPM, T0), 500);
    assert!(g.check(usd(5.0).0, 9_500, T0).allowed());
}

#[test]
fn a_duplicate_settlement_charges_once() {
    let mut g = Group::new(vec![
        limits(&[(DAILY, usd(10.0).0)]),
        limits(&[(TPM, 10_000)]),
    ]);
    let mut clock = Clock::start();
    let expires = T0.saturating_add(secs(300));
    g.reserve(9, usd(1.0).0, 100, expires, clock.now());
    clock.advance(secs(1));
    let first = g.settle(9, usd(2.0).0, 200, clock.now());
    assert!(!first.duplicate);
    let after_first = g.states.clone();
    clock.advance(secs(1));
    let second = g.settle(9, usd(2.0).0, 200, clock.now());
    assert!(second.duplicate);
    assert_eq!(g.states, after_first, "a retried settlement changed state");
    assert_eq!(g.used(0, DAILY, clock.now()), usd(2.0).0);
    assert_eq!(g.used(1, TPM, clock.now()), 200);
}

#[test]
fn an_unsettled_hold_is_released_at_expiry() {
    let mut g = budget_and_tokens();
    let expires = T0.saturating_add(secs(30));
    g.reserve(1, usd(10.0).0, 0, expires, T0);
    let just_before = expires.saturating_sub(Nanos(1));
    assert_eq!(g.used(0, DAILY, just_before), usd(10.0).0);
    assert!(!g.check(0, 0, just_before).allowed());
    assert_eq!(g.used(0, DAILY, expires), 0);
    assert!(g.check(usd(10.0).0, 0, expires).allowed());
    // Expiry also drops the hold from the state, so it costs no memory.
    assert!(g.states[0].holds().is_empty());
}

#[test]
fn a_settlement_after_expiry_still_charges() {
    let mut g = budget_and_tokens();
    let expires = T0.saturating_add(secs(30));
    g.reserve(1, usd(1.0).0, 0, expires, T0);
    let late = expires.saturating_add(secs(1));
    // The hold is gone, but the usage happened and is charged in full.
    let out = g.settle(1, usd(4.0).0, 0, late);
    assert!(!out.duplicate);
    assert_eq!(g.used(0, DAILY, late), usd(4.0).0);
}

#[test]
fn a_reservation_on_subjects_without_budgets_holds_nothing() {
    let mut g = Group::one(limits(&[(LimitKind::RequestsPerMinute, 10)]));
    let out = g.reserve(1, usd(1.0).0, 10, T0.saturating_add(secs(30)), T0);
    assert!(out.allowed());
    assert!(g.states[0].holds().is_empty());
    assert_eq!(g.used(0, LimitKind::RequestsPerMinute, T0), 1);
}

/// A busy shared subject (a team) settles a reservation per request; each
/// settled one is remembered until its hold would have expired, so that a
/// retried record charges once. They are kept apart from the open holds, on
/// the request's first subject only: the team's state carries none, and a
/// check reads only open holds however many settled ones there are.
#[test]
fn settled_reservations_are_remembered_once_and_apart_from_open_holds() {
    let mut g = Group::new(vec![
        limits(&[(DAILY, usd(1_000.0).0)]),
        limits(&[(DAILY, usd(1_000.0).0), (TPM, 1_000_000)]),
    ]);
    let mut clock = Clock::start();
    let ttl = secs(600);
    for id in 1..=500 {
        let now = clock.advance(Nanos::from_millis(10));
        assert!(
            g.reserve(id, 1_000, 10, now.saturating_add(ttl), now)
                .allowed()
        );
        assert!(!g.settle(id, 900, 9, now).duplicate);
    }
    assert_eq!(g.states[0].settled().len(), 500);
    assert!(
        g.states[1].settled().len() == 0,
        "the second subject keeps none"
    );
    assert!(g.states.iter().all(|s| s.holds().is_empty()));
    // Every one of them is still a duplicate, whichever it is.
    for id in [1, 250, 500] {
        assert!(g.settle(id, 900, 9, clock.now()).duplicate);
    }
    // One open hold among them is what a check sees held.
    let now = clock.advance(secs(1));
    g.reserve(501, 7_000, 70, now.saturating_add(ttl), now);
    assert_eq!(g.states[1].held(now).cost, 7_000);
    assert_eq!(g.states[1].holds().len(), 1);
    // They are forgotten with their holds' expiry, oldest first.
    let later = T0
        .saturating_add(ttl)
        .saturating_add(Nanos::from_millis(2_505));
    g.check(0, 0, later);
    let left: Vec<_> = g.states[0].settled().copied().collect();
    assert_eq!(left.len(), 250, "those settled 2.5 s in or later are kept");
    assert!(left.windows(2).all(|w| w[0].expires_at <= w[1].expires_at));
    assert!(
        !g.settle(1, 900, 9, later).duplicate,
        "forgotten: charged as a late record"
    );
}
