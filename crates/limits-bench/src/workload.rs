//! The workloads: what one operation of the load generator sends. Each
//! mirrors a call pattern of an LLM gateway, e.g. `check-record` is the
//! check before a model call and the usage report after it.

use std::time::{Duration, Instant};

use prost::Message;
use tonic::transport::Channel;

use crate::pb;
use crate::pb::limits_service_client::LimitsServiceClient;

/// One kind of operation.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// CheckLimits only.
    Check,
    /// CheckLimits, then RecordUsage when allowed: the real gateway flow.
    CheckRecord,
    /// CheckLimits with reserve=true, then RecordUsage settling the
    /// reservation.
    CheckReserve,
    /// AcquireConcurrent, then ReleaseConcurrent when acquired.
    AcquireRelease,
}

impl Workload {
    /// The workload's name as given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Check => "check",
            Workload::CheckRecord => "check-record",
            Workload::CheckReserve => "check-reserve",
            Workload::AcquireRelease => "acquire-release",
        }
    }

    /// The names of the RPCs of one operation, in order.
    pub fn steps(self) -> &'static [&'static str] {
        match self {
            Workload::Check => &["check"],
            Workload::CheckRecord | Workload::CheckReserve => &["check", "record"],
            Workload::AcquireRelease => &["acquire", "release"],
        }
    }
}

/// What one operation saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    /// The check was allowed (or the lease acquired).
    pub allowed: bool,
    /// How long each RPC took; `None` for a step that was not needed (a
    /// denied check is not followed by RecordUsage).
    pub steps: [Option<Duration>; 2],
    /// Encoded size of the responses, to show that the baseline answers
    /// with messages of a comparable size.
    pub response_bytes: usize,
}

/// A plausible request: about 1000 tokens for about a cent.
fn check_request(subjects: Vec<pb::Subject>, reserve: bool) -> pb::CheckLimitsRequest {
    pb::CheckLimitsRequest {
        subjects,
        model: "gpt-4".into(),
        estimated_tokens: 1000,
        estimated_cost_usd: Some(0.01),
        reserve,
        reservation_ttl: None,
    }
}

fn record_request(subjects: Vec<pb::Subject>, reservation_id: String) -> pb::RecordUsageRequest {
    pb::RecordUsageRequest {
        subjects,
        reservation_id,
        request_tokens: 600,
        response_tokens: 300,
        total_tokens: 0,
        cost_usd: Some(0.008),
        provider: "openai".into(),
        model: "gpt-4".into(),
    }
}

/// Runs one operation of `workload` for `subjects`.
pub async fn run_once(
    workload: Workload,
    client: &mut LimitsServiceClient<Channel>,
    subjects: Vec<pb::Subject>,
) -> Result<Outcome, tonic::Status> {
    let mut out = Outcome::default();
    match workload {
        Workload::Check | Workload::CheckRecord | Workload::CheckReserve => {
            let reserve = workload == Workload::CheckReserve;
            // The subjects are needed again for RecordUsage, so they are
            // cloned only when a record follows.
            let (for_check, for_record) = if workload == Workload::Check {
                (subjects, Vec::new())
            } else {
                (subjects.clone(), subjects)
            };
            let t = Instant::now();
            let check = client
                .check_limits(check_request(for_check, reserve))
                .await?
                .into_inner();
            out.steps[0] = Some(t.elapsed());
            out.allowed = check.allowed;
            out.response_bytes += check.encoded_len();
            if workload != Workload::Check && check.allowed {
                let t = Instant::now();
                let rec = client
                    .record_usage(record_request(for_record, check.reservation_id))
                    .await?
                    .into_inner();
                out.steps[1] = Some(t.elapsed());
                out.response_bytes += rec.encoded_len();
            }
        }
        Workload::AcquireRelease => {
            let t = Instant::now();
            let acq = client
                .acquire_concurrent(pb::AcquireConcurrentRequest {
                    subjects,
                    ttl: None,
                })
                .await?
                .into_inner();
            out.steps[0] = Some(t.elapsed());
            out.allowed = acq.acquired;
            out.response_bytes += acq.encoded_len();
            if acq.acquired {
                let t = Instant::now();
                let rel = client
                    .release_concurrent(pb::ReleaseConcurrentRequest {
                        lease_id: acq.lease_id,
                    })
                    .await?
                    .into_inner();
                out.steps[1] = Some(t.elapsed());
                out.response_bytes += rel.encoded_len();
            }
        }
    }
    Ok(out)
}
