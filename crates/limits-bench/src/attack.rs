//! The memory attack: many concurrent CheckLimits calls, each padded with an
//! unknown field to a few MiB, while the server's resident memory is
//! sampled. A server that reads each request whole before looking at it
//! grows by (calls in flight) × (request size); one that refuses a large
//! message at its frame header does not grow at all.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

use crate::pb;

/// `CheckLimitsRequest` with an unknown field (99) padding it out.
#[derive(Clone, PartialEq, prost::Message)]
struct PaddedCheck {
    #[prost(message, repeated, tag = "1")]
    subjects: Vec<pb::Subject>,
    #[prost(bytes = "vec", tag = "99")]
    padding: Vec<u8>,
}

/// What the attack saw.
#[derive(Debug, Serialize)]
pub struct AttackReport {
    pub request_bytes: usize,
    pub in_flight: usize,
    pub seconds: f64,
    pub sent: u64,
    /// Answers by gRPC code (or `transport` when the call itself failed).
    pub answers: BTreeMap<String, u64>,
    pub rss_before_mib: f64,
    pub rss_peak_mib: f64,
    pub rss_after_mib: f64,
}

/// Resident memory of `pid`, in MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?
        .parse()?;
    Ok(kib / 1024.0)
}

async fn one(channel: Channel, request: PaddedCheck) -> String {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    if grpc.ready().await.is_err() {
        return "transport".into();
    }
    let path =
        http::uri::PathAndQuery::from_static("/mercator.limits.v1.LimitsService/CheckLimits");
    let codec: ProstCodec<PaddedCheck, pb::CheckLimitsResponse> = ProstCodec::default();
    match grpc.unary(tonic::Request::new(request), path, codec).await {
        Ok(_) => "OK".into(),
        Err(s) => format!("{:?}", s.code()),
    }
}

/// Keeps `in_flight` padded calls going over `channels` for `duration`,
/// sampling the server's RSS every 20 ms.
pub async fn run(
    channels: Vec<Channel>,
    pid: u32,
    request_bytes: usize,
    in_flight: usize,
    duration: Duration,
) -> anyhow::Result<AttackReport> {
    let request = PaddedCheck {
        subjects: vec![pb::Subject {
            dimension: pb::Dimension::ApiKey as i32,
            id: "attacker".into(),
        }],
        padding: vec![b'x'; request_bytes],
    };
    let rss_before = rss_mib(pid)?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut peak = rss_before;
    let mut answers: BTreeMap<String, u64> = BTreeMap::new();
    let mut sent = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    let mut sample = tokio::time::interval(Duration::from_millis(20));
    let mut next = 0usize;
    loop {
        while tasks.len() < in_flight && Instant::now() < deadline {
            let channel = channels[next % channels.len()].clone();
            next += 1;
            sent += 1;
            tasks.spawn(tokio::time::timeout(
                Duration::from_secs(30),
                one(channel, request.clone()),
            ));
        }
        if tasks.is_empty() {
            break;
        }
        tokio::select! {
            done = tasks.join_next() => {
                let code = match done {
                    Some(Ok(Ok(code))) => code,
                    Some(Ok(Err(_))) => "timeout".into(),
                    _ => "task".into(),
                };
                *answers.entry(code).or_default() += 1;
            }
            _ = sample.tick() => {
                if let Ok(rss) = rss_mib(pid) {
                    peak = peak.max(rss);
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // Memory a server keeps after the burst, once things settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_mib(pid)?;
    Ok(AttackReport {
        request_bytes,
        in_flight,
        seconds,
        sent,
        answers,
        rss_before_mib: rss_before,
        rss_peak_mib: peak.max(after),
        rss_after_mib: after,
    })
}
