//! Streamed responses through the real binary, on memory, sled and Redis
//! (two replicas taking turns): progress records that stay within the
//! reservation, go past it with room, and go past it into a spent budget and
//! are told to stop; duplicates; a cancelled stream; bad input.

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use common::*;
use limits_server::pb;
use limits_server::pb::limits_service_client::LimitsServiceClient;
use redis_server::RedisServer;
use tonic::Code;
use tonic::transport::Channel;

fn config(storage: &str) -> String {
    format!(
        r#"
limits:
  budgets:
    by_api_key:
      "within-key":
        daily: 10.00
      "stream-key":
        daily: 10.00
      "cancel-key":
        daily: 10.00
  storage:
{storage}
"#
    )
}

/// A reserved check of `cost` for `subject`: its reservation id.
async fn reserve(c: &mut LimitsServiceClient<Channel>, subject: &str, cost: f64) -> String {
    let mut req = check(vec![key(subject)], cost);
    req.reserve = true;
    let r = c.check_limits(req).await.unwrap().into_inner();
    assert!(r.allowed, "{}", r.reason);
    assert!(!r.reservation_id.is_empty());
    r.reservation_id
}

/// A record of `reservation`: usage so far when `progress`, else the total.
fn step(
    subject: &str,
    reservation: &str,
    cost: f64,
    progress: bool,
    sequence: u32,
) -> pb::RecordUsageRequest {
    let mut rec = record(vec![key(subject)], cost);
    rec.reservation_id = reservation.to_owned();
    rec.progress = progress;
    rec.sequence = sequence;
    rec
}

async fn daily(c: &mut LimitsServiceClient<Channel>, subject: &str) -> (f64, usize) {
    let u = c
        .get_usage(usage_req(key(subject)))
        .await
        .unwrap()
        .into_inner();
    (used(&u, pb::LimitKind::BudgetDaily), u.reservations.len())
}

/// The whole sequence a gateway runs, its records sent to the replicas in
/// turn.
async fn streams_are_charged_as_they_go(replicas: &[Limitsd]) {
    let mut clients = Vec::new();
    for d in replicas {
        clients.push(d.client().await);
    }
    let mut turn = 0;
    let mut next = move || {
        turn += 1;
        clients[turn % clients.len()].clone()
    };

    // Within its hold: every step may continue, the final settles.
    let id = reserve(&mut next(), "within-key", 3.0).await;
    for (seq, so_far) in [(1, 1.0), (2, 2.0)] {
        let r = next()
            .record_usage(step("within-key", &id, so_far, true, seq))
            .await
            .unwrap()
            .into_inner();
        assert!(r.may_continue && !r.duplicate, "{}", r.reason);
        assert_eq!(
            daily(&mut next(), "within-key").await,
            (3.0, 1),
            "charged plus held"
        );
    }
    let fin = next()
        .record_usage(step("within-key", &id, 2.5, false, 3))
        .await
        .unwrap()
        .into_inner();
    assert!(fin.may_continue && !fin.duplicate);
    assert_eq!(daily(&mut next(), "within-key").await, (2.5, 0));

    // Past the estimate with room, then into the spent budget.
    next()
        .record_usage(record(vec![key("stream-key")], 7.0))
        .await
        .unwrap();
    let id = reserve(&mut next(), "stream-key", 2.0).await;
    let p1 = next()
        .record_usage(step("stream-key", &id, 1.0, true, 1))
        .await
        .unwrap()
        .into_inner();
    assert!(p1.may_continue);
    // A duplicate, sent to the other replica: charged once.
    let dup = next()
        .record_usage(step("stream-key", &id, 1.0, true, 1))
        .await
        .unwrap()
        .into_inner();
    assert!(dup.duplicate && dup.may_continue);
    assert_eq!(daily(&mut next(), "stream-key").await, (9.0, 1));
    let p2 = next()
        .record_usage(step("stream-key", &id, 2.5, true, 2))
        .await
        .unwrap()
        .into_inner();
    assert!(p2.may_continue, "$9.50 of $10: the hold is extended");
    assert_eq!(daily(&mut next(), "stream-key").await.0, 9.5);
    let p3 = next()
        .record_usage(step("stream-key", &id, 3.5, true, 3))
        .await
        .unwrap()
        .into_inner();
    assert!(!p3.may_continue, "$10.50 of $10");
    assert!(p3.reason.contains("would be overshot"), "{}", p3.reason);
    assert!(
        !p3.reason.contains("stream-key"),
        "no raw key in a reason: {}",
        p3.reason
    );
    let exceeded: Vec<_> = p3
        .statuses
        .iter()
        .filter(|s| s.exceeded)
        .map(|s| s.kind)
        .collect();
    assert_eq!(exceeded, vec![pb::LimitKind::BudgetDaily as i32]);
    let (spent, _) = daily(&mut next(), "stream-key").await;
    assert!(
        spent > 10.0 && spent <= 10.0 + 1.0,
        "over by at most the last step: {spent}"
    );
    // Told again, with a reason, however the record is retried.
    for seq in [3, 0] {
        let again = next()
            .record_usage(step("stream-key", &id, 3.5, true, seq))
            .await
            .unwrap()
            .into_inner();
        assert!(!again.may_continue && !again.reason.is_empty(), "{again:?}");
    }
    // The gateway stops and settles; a retried final charges nothing.
    let fin = next()
        .record_usage(step("stream-key", &id, 3.5, false, 4))
        .await
        .unwrap()
        .into_inner();
    assert!(!fin.duplicate);
    let again = next()
        .record_usage(step("stream-key", &id, 3.5, false, 4))
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(daily(&mut next(), "stream-key").await, (10.5, 0));

    // A cancelled stream: a final record of nothing frees the hold at once.
    let id = reserve(&mut next(), "cancel-key", 8.0).await;
    assert!(
        !next()
            .check_limits(check(vec![key("cancel-key")], 5.0))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    let mut cancel = step("cancel-key", &id, 0.0, false, 0);
    cancel.request_tokens = 0;
    cancel.response_tokens = 0;
    assert!(
        !next()
            .record_usage(cancel)
            .await
            .unwrap()
            .into_inner()
            .duplicate
    );
    assert_eq!(daily(&mut next(), "cancel-key").await, (0.0, 0));
    assert!(
        next()
            .check_limits(check(vec![key("cancel-key")], 5.0))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );

    // Progress and numbers need a reservation.
    for (progress, sequence, field) in [(true, 0, "reservation_id"), (false, 2, "sequence")] {
        let err = next()
            .record_usage(step("cancel-key", "", 1.0, progress, sequence))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(field), "{}", err.message());
    }
    assert_eq!(
        daily(&mut next(), "cancel-key").await.0,
        0.0,
        "refused records charge nothing"
    );
}

#[tokio::test]
async fn streams_on_memory() {
    let d = Limitsd::start(&config("    backend: memory"));
    streams_are_charged_as_they_go(std::slice::from_ref(&d)).await;
}

#[tokio::test]
async fn streams_on_sled() {
    let d = Limitsd::start(&config("    backend: sled\n    sled:\n      path: ./store"));
    streams_are_charged_as_they_go(std::slice::from_ref(&d)).await;
}

#[tokio::test]
async fn streams_on_two_replicas_sharing_redis() {
    let redis = RedisServer::start();
    let storage = format!(
        "    backend: redis\n    redis:\n      url: {}\n      key_prefix: streams",
        redis.url()
    );
    let replicas = [
        Limitsd::start(&config(&storage)),
        Limitsd::start(&config(&storage)),
    ];
    streams_are_charged_as_they_go(&replicas).await;
}
