//! Concurrency leases: acquiring up to the limit, `retry_after` to the oldest
//! lease's expiry, releasing (twice), expiry of abandoned leases, and
//! all-or-nothing acquisition across subjects.

mod common;

use common::{Clock, Group, T0, limits, secs};
use limits_core::{LimitKind, Nanos};

const MAX: LimitKind = LimitKind::MaxConcurrent;

#[test]
fn acquires_up_to_max_then_denies_until_the_oldest_lease_expires() {
    let mut g = Group::one(limits(&[(MAX, 3)]));
    let mut clock = Clock::start();
    let ttl = secs(30);
    for lease in 1..=3 {
        let out = g.acquire(lease, clock.now().saturating_add(ttl), clock.now());
        assert!(out.acquired(), "lease {lease}");
        clock.advance(secs(1));
    }
    let out = g.acquire(4, clock.now().saturating_add(ttl), clock.now());
    assert!(!out.acquired());
    let d = out.denial().expect("a denial");
    assert_eq!(d.kind, MAX);
    // The oldest lease (taken at T0) expires at T0 + 30 s; it is now T0 + 3 s.
    assert_eq!(d.retry_after, Some(secs(27)));
    assert_eq!(out.statuses.len(), 1);
    assert_eq!((out.statuses[0].used, out.statuses[0].exceeded), (3, true));
    let at = clock.now().saturating_add(secs(27));
    assert!(
        !g.acquire(4, at.saturating_add(ttl), at.saturating_sub(Nanos(1)))
            .acquired()
    );
    assert!(g.acquire(4, at.saturating_add(ttl), at).acquired());
}

#[test]
fn release_frees_a_slot_and_a_second_release_returns_false() {
    let mut g = Group::one(limits(&[(MAX, 1)]));
    let expires = T0.saturating_add(secs(60));
    assert!(g.acquire(1, expires, T0).acquired());
    assert!(!g.acquire(2, expires, T0).acquired());
    assert!(g.release(1, T0));
    assert!(!g.release(1, T0), "releasing twice must be harmless");
    assert!(g.acquire(2, expires, T0).acquired());
    assert!(!g.release(99, T0), "an unknown lease is not released");
}

#[test]
fn an_expired_lease_frees_its_slot() {
    let mut g = Group::one(limits(&[(MAX, 1)]));
    let expires = T0.saturating_add(secs(10));
    assert!(g.acquire(1, expires, T0).acquired());
    assert_eq!(g.used(0, MAX, expires.saturating_sub(Nanos(1))), 1);
    assert_eq!(g.used(0, MAX, expires), 0);
    assert!(
        g.acquire(2, expires.saturating_add(secs(10)), expires)
            .acquired()
    );
    // The abandoned lease has gone: releasing it now reports nothing freed.
    assert!(!g.release(1, expires));
    assert_eq!(g.states[0].leases().len(), 1);
}

#[test]
fn releasing_after_expiry_returns_false() {
    let mut g = Group::one(limits(&[(MAX, 2)]));
    let expires = T0.saturating_add(secs(10));
    assert!(g.acquire(1, expires, T0).acquired());
    assert!(!g.release(1, expires));
}

#[test]
fn acquire_is_all_or_nothing_across_subjects() {
    let mut g = Group::new(vec![limits(&[(MAX, 5)]), limits(&[]), limits(&[(MAX, 1)])]);
    let expires = T0.saturating_add(secs(60));
    assert!(g.acquire(1, expires, T0).acquired());
    // Only subjects with a concurrency limit take a slot.
    assert_eq!(
        g.states
            .iter()
            .map(|s| s.leases().len())
            .collect::<Vec<_>>(),
        [1, 0, 1]
    );
    let before = g.states.clone();
    let out = g.acquire(2, expires, T0);
    assert!(!out.acquired());
    assert_eq!(out.denial().map(|d| d.subject), Some(2));
    assert_eq!(g.states, before, "a denied acquire took a slot");
    // One release frees the slot on every subject.
    assert!(g.release(1, T0));
    assert!(g.states.iter().all(|s| s.leases().is_empty()));
}

/// Regression: after a reload lowers `max_concurrent` below the number of
/// live leases, `retry_after` used to be the time to the oldest lease's
/// expiry, when a slot only frees once enough leases have gone to bring the
/// count under the new limit.
#[test]
fn retry_after_waits_for_enough_leases_when_the_limit_was_lowered() {
    let mut g = Group::one(limits(&[(MAX, 3)]));
    for lease in 0..3 {
        let expires = T0.saturating_add(secs(10 * (lease + 1)));
        assert!(g.acquire(lease, expires, T0).acquired());
    }
    // The limit drops to 2: two of the three leases (expiring at 10 s and
    // 20 s) must go before a new one fits, so the wait is 20 s, not 10 s.
    g.limits[0] = limits(&[(MAX, 2)]);
    let out = g.acquire(9, T0.saturating_add(secs(60)), T0);
    assert_eq!(out.denial().and_then(|d| d.retry_after), Some(secs(20)));
    let at = T0.saturating_add(secs(20));
    assert!(!g.acquire(9, at, at.saturating_sub(Nanos(1))).acquired());
    assert!(g.acquire(9, at.saturating_add(secs(60)), at).acquired());
}
