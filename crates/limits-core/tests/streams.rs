//! Streamed requests: progress records that charge the usage so far against
//! a reservation, extend its hold past the estimate when there is room, tell
//! the caller to stop when there is not, and charge once however often a
//! record is sent.

mod common;

use common::{Clock, Group, T0, limits, policy, secs, usd};
use limits_core::engine::Progress;
use limits_core::{EnforcementMode, Held, LimitKind, Nanos, Policy, RecordRequest, undo};

const DAILY: LimitKind = LimitKind::BudgetDaily;
const TPM: LimitKind = LimitKind::TokensPerMinute;
const OTPM: LimitKind = LimitKind::OutputTokensPerMinute;

/// A record of reservation 1: usage so far (`progress`) or in total.
fn rec(cost: f64, tokens: u64, sequence: u32, progress: Option<Nanos>) -> RecordRequest {
    RecordRequest {
        reservation: Some(1),
        cost: usd(cost),
        tokens,
        input: 0,
        output: tokens,
        progress: progress.map(|hold_until| Progress { hold_until, tag: 0 }),
        sequence,
    }
}

fn group() -> Group {
    Group::one(limits(&[
        (DAILY, usd(10.0).0),
        (TPM, 10_000),
        (OTPM, 10_000),
    ]))
}

fn held(g: &Group, now: Nanos) -> Held {
    g.states[0].held(now)
}

#[test]
fn progress_within_the_hold_moves_usage_from_held_to_charged() {
    let mut g = group();
    let mut clock = Clock::start();
    let ttl = T0.saturating_add(secs(60));
    assert!(g.reserve(1, usd(4.0).0, 4_000, ttl, T0).allowed());
    let mut charged = 0;
    for (step, (cost, tokens)) in [(1.0, 1_000), (2.0, 2_000), (3.0, 3_000)]
        .iter()
        .enumerate()
    {
        let now = clock.advance(secs(5));
        let seq = step as u32 + 1;
        let out = g.record_with_request(
            &rec(*cost, *tokens, seq, Some(now.saturating_add(secs(60)))),
            now,
        );
        assert!(!out.duplicate && !out.stop);
        assert!(out.statuses.iter().all(|s| !s.exceeded));
        // Each record reports usage so far: only what is new is charged.
        assert_eq!(out.charged.tokens, tokens - charged);
        charged = *tokens;
        // Charged plus held is still the estimate.
        assert_eq!(g.used(0, DAILY, now), usd(4.0).0);
        assert_eq!(g.used(0, TPM, now), 4_000);
        assert_eq!(held(&g, now).tokens, 4_000 - tokens);
        assert_eq!(g.states[0].window(TPM).map(|w| w.total()), Some(*tokens));
    }
    // The final record charges what progress has not, and settles.
    let now = clock.advance(secs(5));
    let out = g.record_with_request(&rec(3.5, 3_500, 4, None), now);
    assert_eq!((out.charged.cost, out.charged.tokens), (usd(0.5).0, 500));
    assert_eq!(g.used(0, DAILY, now), usd(3.5).0);
    assert_eq!(held(&g, now), Held::default());
    assert!(g.states[0].holds().is_empty() && g.states[0].settled().len() == 1);
}

#[test]
fn progress_renews_the_hold_so_a_long_stream_keeps_its_reservation() {
    let mut g = group();
    let mut clock = Clock::start();
    g.reserve(1, usd(4.0).0, 4_000, T0.saturating_add(secs(60)), T0);
    // Ten minutes of progress, one record every 50 s, each renewing for 60 s.
    for step in 1..=12u32 {
        let now = clock.advance(secs(50));
        let out = g.record_with_request(
            &rec(
                0.1 * f64::from(step),
                100 * u64::from(step),
                step,
                Some(now.saturating_add(secs(60))),
            ),
            now,
        );
        assert!(!out.duplicate && !out.stop, "step {step}");
        assert!(
            out.prior.is_some(),
            "the hold is still there at step {step}"
        );
    }
    assert_eq!(held(&g, clock.now()).tokens, 4_000 - 1_200);
}

#[test]
fn an_overshoot_with_room_extends_the_hold() {
    let mut g = group();
    let now = T0;
    g.reserve(1, usd(2.0).0, 1_000, T0.saturating_add(secs(60)), now);
    let out = g.record_with_request(&rec(3.0, 2_500, 1, Some(T0.saturating_add(secs(60)))), now);
    assert!(!out.stop, "a $10 budget has room for $3");
    assert_eq!(g.used(0, DAILY, now), usd(3.0).0);
    let left = held(&g, now);
    // Input tokens were estimated and none reported yet: they stay held.
    assert_eq!(
        (left.cost, left.tokens, left.output, left.input),
        (0, 0, 0, 1_000),
        "all of the estimate is charged"
    );
    // More progress past the estimate is charged as it comes.
    let out = g.record_with_request(&rec(5.0, 4_000, 2, Some(T0.saturating_add(secs(60)))), now);
    assert!(!out.stop);
    assert_eq!(out.charged.cost, usd(2.0).0);
    assert_eq!(g.used(0, DAILY, now), usd(5.0).0);
}

#[test]
fn an_overshoot_into_a_spent_budget_stops_the_stream_by_at_most_one_step() {
    let mut g = group();
    let ttl = T0.saturating_add(secs(60));
    // Another request has spent $7 of the $10.
    g.record(usd(7.0).0, 0, T0);
    g.reserve(1, usd(2.0).0, 100, ttl, T0);
    let step = 0.75;
    let mut so_far = 0.0;
    let mut stopped_at = None;
    for seq in 1..=10u32 {
        so_far += step;
        let out = g.record_with_request(&rec(so_far, 100, seq, Some(ttl)), T0);
        let spent = g.used(0, DAILY, T0);
        if out.stop {
            let exceeded: Vec<_> = out
                .statuses
                .iter()
                .filter(|s| s.exceeded)
                .map(|s| s.kind)
                .collect();
            assert_eq!(exceeded, vec![DAILY]);
            stopped_at = Some(seq);
            // Over by less than the last step.
            assert!(
                spent > usd(10.0).0 && spent <= usd(10.0 + step).0,
                "spent {spent}"
            );
            break;
        }
        assert!(
            spent <= usd(10.0).0,
            "admitted past the budget at step {seq}"
        );
    }
    // $7 + 0.75 * 4 = $10 fits exactly; the fifth step does not.
    assert_eq!(stopped_at, Some(5));
    // Told once, told again: a duplicate and a later step both say stop.
    let again = g.record_with_request(&rec(so_far, 100, 5, Some(ttl)), T0);
    assert!(again.duplicate && again.stop);
    let later = g.record_with_request(&rec(so_far + 0.01, 100, 6, Some(ttl)), T0);
    assert!(!later.duplicate && later.stop);
    // The final record settles what was used.
    let fin = g.record_with_request(&rec(so_far + 0.01, 100, 7, None), T0);
    assert!(!fin.duplicate && !fin.stop);
    assert_eq!(g.used(0, DAILY, T0), usd(7.0 + so_far + 0.01).0);
}

#[test]
fn a_token_limit_stops_a_stream_too_and_alert_mode_never_stops() {
    for (mode, stops) in [
        (EnforcementMode::Block, true),
        (EnforcementMode::Alert, false),
    ] {
        let mut g = group();
        let ttl = T0.saturating_add(secs(60));
        g.reserve(1, 0, 5_000, ttl, T0);
        let req = rec(0.0, 12_000, 1, Some(ttl));
        let out = {
            let (mut states, limits): (Vec<_>, Vec<_>) =
                (g.states.iter_mut().collect(), g.limits.iter().collect());
            limits_core::record(&mut states, &limits, &req, &policy(mode), T0)
        };
        assert_eq!(out.stop, stops, "{mode:?}");
        let mut exceeded: Vec<_> = out
            .statuses
            .iter()
            .filter(|s| s.exceeded)
            .map(|s| s.kind)
            .collect();
        exceeded.sort_by_key(|k| k.index());
        assert_eq!(exceeded, vec![TPM, OTPM], "{mode:?}");
    }
}

#[test]
fn duplicates_charge_once_by_sequence_and_by_usage_so_far() {
    let mut g = group();
    let ttl = T0.saturating_add(secs(60));
    g.reserve(1, usd(4.0).0, 4_000, ttl, T0);
    assert_eq!(
        g.record_with_request(&rec(1.0, 1_000, 1, Some(ttl)), T0)
            .charged
            .tokens,
        1_000
    );
    // The same record again, and an older one arriving late.
    let again = g.record_with_request(&rec(1.0, 1_000, 1, Some(ttl)), T0);
    assert!(again.duplicate);
    assert_eq!(again.charged, Held::default());
    assert!(
        g.record_with_request(&rec(0.5, 500, 1, Some(ttl)), T0)
            .duplicate
    );
    // Unnumbered records are safe to repeat too: usage so far only grows.
    let same = g.record_with_request(&rec(1.0, 1_000, 0, Some(ttl)), T0);
    assert!(!same.duplicate);
    assert_eq!(same.charged, Held::default());
    assert_eq!(g.states[0].window(TPM).map(|w| w.total()), Some(1_000));
    // Final, twice.
    assert!(
        !g.record_with_request(&rec(2.0, 2_000, 2, None), T0)
            .duplicate
    );
    let twice = g.record_with_request(&rec(2.0, 2_000, 3, None), T0);
    assert!(twice.duplicate);
    assert_eq!(g.used(0, DAILY, T0), usd(2.0).0);
    assert_eq!(g.used(0, TPM, T0), 2_000);
}

#[test]
fn a_cancelled_stream_frees_its_hold_at_once() {
    let mut g = group();
    let ttl = T0.saturating_add(secs(600));
    g.reserve(1, usd(8.0).0, 8_000, ttl, T0);
    assert!(!g.check(usd(5.0).0, 0, T0).allowed(), "the hold leaves $2");
    // Cancelled before anything was used: a final record of nothing.
    let out = g.record_with_request(&rec(0.0, 0, 0, None), T0);
    assert!(!out.duplicate);
    assert_eq!(g.used(0, DAILY, T0), 0);
    assert!(g.check(usd(5.0).0, 0, T0).allowed());

    // Cancelled after some progress: the final record of the usage so far
    // (or of nothing more) charges what was used and frees the rest.
    let mut g = group();
    g.reserve(1, usd(8.0).0, 8_000, ttl, T0);
    g.record_with_request(&rec(1.5, 1_500, 1, Some(ttl)), T0);
    g.record_with_request(&rec(0.0, 0, 2, None), T0);
    assert_eq!(g.used(0, DAILY, T0), usd(1.5).0);
    assert_eq!(held(&g, T0), Held::default());
}

#[test]
fn a_stream_whose_hold_lapsed_is_held_again_and_charged_once_more_at_most() {
    let mut g = group();
    let mut clock = Clock::start();
    g.reserve(1, usd(4.0).0, 4_000, T0.saturating_add(secs(60)), T0);
    // Silent for longer than the hold lives.
    let now = clock.advance(secs(61));
    let out = g.record_with_request(&rec(1.0, 1_000, 1, Some(now.saturating_add(secs(60)))), now);
    assert!(out.prior.is_none());
    assert_eq!(out.charged.cost, usd(1.0).0, "charged in full");
    assert_eq!(g.states[0].holds().len(), 1, "held again");
    // Later records charge only what is new.
    let now = clock.advance(secs(10));
    let out = g.record_with_request(&rec(1.5, 1_500, 2, Some(now.saturating_add(secs(60)))), now);
    assert_eq!(out.charged.cost, usd(0.5).0);
    let out = g.record_with_request(&rec(2.0, 2_000, 3, None), now);
    assert_eq!(out.charged.cost, usd(0.5).0);
    assert_eq!(g.used(0, DAILY, now), usd(2.0).0);
}

#[test]
fn undoing_a_progress_record_restores_the_hold_and_the_windows() {
    let lim = limits(&[(DAILY, usd(10.0).0), (TPM, 10_000)]);
    let pol = Policy::default();
    let ttl = T0.saturating_add(secs(60));
    let later = T0.saturating_add(secs(1));
    let mut g = Group::one(lim.clone());
    g.reserve(1, usd(2.0).0, 1_000, ttl, T0);
    g.record_with_request(&rec(0.5, 200, 1, Some(ttl)), T0);
    for req in [
        rec(1.0, 500, 2, Some(ttl.saturating_add(secs(30)))),
        rec(3.0, 1_500, 2, Some(ttl)),
        rec(3.0, 1_500, 2, None),
    ] {
        let mut s = g.states[0].clone();
        let before = s.clone();
        let out = limits_core::record(&mut [&mut s], &[&lim], &req, &pol, T0);
        assert!(!out.duplicate);
        undo::undo_record(&mut [&mut s], &[&lim], &req, &out, T0, later);
        assert_eq!(s, before, "{req:?}");
    }
    // A record that held a lapsed stream again: undoing drops the hold.
    let after = ttl.saturating_add(secs(1));
    let mut s = g.states[0].clone();
    s.expire(&lim, after);
    let before = s.clone();
    let req = rec(1.0, 500, 3, Some(after.saturating_add(secs(60))));
    let out = limits_core::record(&mut [&mut s], &[&lim], &req, &pol, after);
    assert!(out.prior.is_none());
    undo::undo_record(&mut [&mut s], &[&lim], &req, &out, after, after);
    assert_eq!(s, before);
}
