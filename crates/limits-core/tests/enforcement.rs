//! Enforcement modes through `engine::check`: downgrade walks the model chain
//! built by `Policy::attempts`, alert mode lets over-limit requests through
//! flagged and counted, and the alert threshold flags a plain allow.

mod common;

use common::{Group, T0, limits, ms, policy, usd};
use limits_core::{Action, EnforcementMode, LimitKind, ModelPrice, Policy};

const DAILY: LimitKind = LimitKind::BudgetDaily;

/// gpt-4 ($0.06 per 1k tokens at the higher rate) -> gpt-4-turbo ($0.03) ->
/// gpt-3.5-turbo ($0.0015).
fn downgrade_policy() -> Policy {
    let mut p = policy(EnforcementMode::Downgrade);
    p.downgrades.insert("gpt-4".into(), "gpt-4-turbo".into());
    p.downgrades
        .insert("gpt-4-turbo".into(), "gpt-3.5-turbo".into());
    let price = |input, output| ModelPrice {
        input_per_1k: usd(input),
        output_per_1k: usd(output),
    };
    p.pricing.insert("gpt-4", price(0.03, 0.06));
    p.pricing.insert("gpt-4-turbo", price(0.01, 0.03));
    p.pricing.insert("gpt-3.5-turbo", price(0.0005, 0.0015));
    p
}

#[test]
fn downgrade_walks_to_the_first_model_that_fits() {
    let p = downgrade_policy();
    let attempts = p.attempts("gpt-4", 1_000, None);
    assert_eq!(attempts.len(), 3);

    // $0.95 of $1 spent: gpt-4 ($0.06) does not fit, gpt-4-turbo ($0.03)
    // does, and the walk stops there although gpt-3.5-turbo fits too.
    let mut g = Group::one(limits(&[(DAILY, usd(1.0).0)]));
    g.record(usd(0.95).0, 0, T0);
    let out = g.check_with(&attempts, None, &p, T0);
    assert!(out.allowed());
    assert_eq!(out.action, Action::Downgrade);
    assert_eq!(out.attempt, 1);
    assert_eq!(attempts[out.attempt].model, "gpt-4-turbo");
    assert_eq!(out.denial(), None);

    // $0.99 spent: only gpt-3.5-turbo fits.
    g.record(usd(0.04).0, 0, T0);
    let out = g.check_with(&attempts, None, &p, T0);
    assert!(out.allowed());
    assert_eq!(
        (out.action, attempts[out.attempt].model.as_str()),
        (Action::Downgrade, "gpt-3.5-turbo")
    );
}

#[test]
fn downgrade_allows_the_requested_model_when_it_fits() {
    let p = downgrade_policy();
    let attempts = p.attempts("gpt-4", 1_000, None);
    let mut g = Group::one(limits(&[(DAILY, usd(1.0).0)]));
    let out = g.check_with(&attempts, None, &p, T0);
    assert_eq!(
        (out.allowed(), out.action, out.attempt),
        (true, Action::Allow, 0)
    );
}

#[test]
fn downgrade_blocks_at_the_end_of_the_chain() {
    let p = downgrade_policy();
    let attempts = p.attempts("gpt-4", 1_000, None);
    let mut g = Group::one(limits(&[(DAILY, usd(1.0).0)]));
    g.record(usd(0.9995).0, 0, T0);
    let before = g.expired_clone(T0);
    let out = g.check_with(&attempts, None, &p, T0);
    assert!(!out.allowed());
    assert_eq!(out.action, Action::Block);
    assert_eq!(out.attempt, attempts.len() - 1);
    assert_eq!(out.denial().map(|d| d.kind), Some(DAILY));
    assert!(out.retry_after().is_some());
    assert_eq!(g.states, before);
}

#[test]
fn downgrade_cannot_get_round_a_request_rate_limit() {
    let p = downgrade_policy();
    let attempts = p.attempts("gpt-4", 1_000, None);
    let mut g = Group::one(limits(&[(LimitKind::RequestsPerSecond, 1)]));
    assert!(g.check_with(&attempts, None, &p, T0).allowed());
    let out = g.check_with(&attempts, None, &p, T0);
    assert!(!out.allowed());
    assert_eq!(
        out.denial().map(|d| d.kind),
        Some(LimitKind::RequestsPerSecond)
    );
}

#[test]
fn block_mode_tries_only_the_requested_model() {
    let mut p = downgrade_policy();
    p.mode = EnforcementMode::Block;
    // Even given a chain, block mode must not walk it.
    let chain = downgrade_policy().attempts("gpt-4", 1_000, None);
    let mut g = Group::one(limits(&[(DAILY, usd(1.0).0)]));
    g.record(usd(0.95).0, 0, T0);
    let out = g.check_with(&chain, None, &p, T0);
    assert_eq!(
        (out.allowed(), out.action, out.attempt),
        (false, Action::Block, 0)
    );
}

#[test]
fn queue_mode_decides_like_block_mode() {
    let mut g = Group::one(limits(&[(LimitKind::RequestsPerSecond, 1)]));
    let p = policy(EnforcementMode::Queue);
    let a = common::attempt(0, 0);
    assert!(g.check_with(&a, None, &p, T0).allowed());
    let out = g.check_with(&a, None, &p, T0.saturating_add(ms(1)));
    assert_eq!((out.allowed(), out.action), (false, Action::Block));
    assert!(out.retry_after().is_some());
}

#[test]
fn alert_mode_allows_over_limit_flagged_and_counted() {
    let mut g = Group::one(limits(&[
        (LimitKind::RequestsPerSecond, 1),
        (DAILY, usd(1.0).0),
    ]));
    let p = policy(EnforcementMode::Alert);
    let a = common::attempt(usd(0.5).0, 0);
    let first = g.check_with(&a, None, &p, T0);
    assert_eq!((first.allowed(), first.action), (true, Action::Allow));
    let second = g.check_with(&a, None, &p, T0);
    assert!(second.allowed());
    assert_eq!(second.action, Action::Alert);
    assert_eq!(
        second.denial().map(|d| d.kind),
        Some(LimitKind::RequestsPerSecond)
    );
    assert_eq!(second.retry_after(), None);
    // The over-limit request counts like any other.
    assert_eq!(g.used(0, LimitKind::RequestsPerSecond, T0), 2);
    let rps = second
        .statuses
        .iter()
        .find(|s| s.kind == LimitKind::RequestsPerSecond)
        .expect("a status");
    assert!(rps.exceeded);
    // A reserved over-budget request in alert mode holds its estimate too.
    let out = g.check_with(
        &common::attempt(usd(2.0).0, 0),
        Some(limits_core::engine::Reserve {
            id: 5,
            expires_at: T0.saturating_add(ms(1_000)),
            tag: 0,
        }),
        &p,
        T0,
    );
    assert_eq!(
        (out.allowed(), out.action, out.reservation()),
        (true, Action::Alert, Some(5))
    );
    assert_eq!(g.used(0, DAILY, T0), usd(2.0).0);
}

#[test]
fn crossing_the_alert_threshold_flags_a_plain_allow() {
    let mut p = policy(EnforcementMode::Block);
    p.alert_threshold_ppm = Some(800_000);
    let mut g = Group::one(limits(&[(DAILY, usd(10.0).0)]));
    g.record(usd(7.5).0, 0, T0);
    // $7.90 with this request: under 80 %.
    let below = g.check_with(&common::attempt(usd(0.4).0, 0), None, &p, T0);
    assert_eq!(
        (below.allowed(), below.action, below.alert),
        (true, Action::Allow, false)
    );
    // $8.00 with this request: the unreserved estimate counts.
    let at = g.check_with(&common::attempt(usd(0.5).0, 0), None, &p, T0);
    assert_eq!(
        (at.allowed(), at.action, at.alert),
        (true, Action::Alert, true)
    );
    // Without a threshold nothing is flagged.
    let plain = g.check(usd(0.5).0, 0, T0);
    assert_eq!((plain.action, plain.alert), (Action::Allow, false));
}

#[test]
fn the_alert_threshold_does_not_turn_a_downgrade_into_an_alert() {
    let mut p = downgrade_policy();
    p.alert_threshold_ppm = Some(500_000);
    let attempts = p.attempts("gpt-4", 1_000, None);
    let mut g = Group::one(limits(&[(DAILY, usd(1.0).0)]));
    g.record(usd(0.95).0, 0, T0);
    let out = g.check_with(&attempts, None, &p, T0);
    assert_eq!((out.action, out.alert), (Action::Downgrade, true));
}

#[test]
fn a_record_that_crosses_the_threshold_says_so() {
    let mut p = policy(EnforcementMode::Block);
    p.alert_threshold_ppm = Some(900_000);
    let mut g = Group::one(limits(&[(DAILY, usd(10.0).0)]));
    assert!(!g.record_with(None, usd(8.0).0, 0, &p, T0).alert);
    assert!(g.record_with(None, usd(1.0).0, 0, &p, T0).alert);
}
