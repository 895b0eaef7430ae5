//! The workloads: what one operation of the load generator sends. Each
//! mirrors a call pattern of an LLM gateway, e.g. `check-record` is the
//! check before a model call and the usage report after it, and `rls` is
//! Envoy's rate limit filter asking before it forwards a request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tonic::transport::Channel;

use crate::pb;
use crate::pb::limits_service_client::LimitsServiceClient;
use crate::pb::rls;

/// The `ShouldRateLimit` domain the `rls` workload sends by default; the
/// bench config (`bench.yaml`, `limits.rls.domains`) maps it.
pub const DEFAULT_RLS_DOMAIN: &str = "llm-gateway";

/// The descriptor key that carries each subject's id in the `rls`
/// workload, by dimension (API key, user, team); the bench config maps
/// the same keys.
pub const RLS_KEYS: [(pb::Dimension, &str); 3] = [
    (pb::Dimension::ApiKey, "api_key"),
    (pb::Dimension::User, "user"),
    (pb::Dimension::Team, "team"),
];

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
    /// Envoy's ShouldRateLimit: one descriptor per subject of the call
    /// (`api_key`, then `user`, then `team`), one hit each. An
    /// `OVER_LIMIT` answer is a denial, not an error.
    Rls,
}

impl Workload {
    /// The workload's name as given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Check => "check",
            Workload::CheckRecord => "check-record",
            Workload::CheckReserve => "check-reserve",
            Workload::AcquireRelease => "acquire-release",
            Workload::Rls => "rls",
        }
    }

    /// The names of the RPCs of one operation, in order.
    pub fn steps(self) -> &'static [&'static str] {
        match self {
            Workload::Check => &["check"],
            Workload::CheckRecord | Workload::CheckReserve => &["check", "record"],
            Workload::AcquireRelease => &["acquire", "release"],
            Workload::Rls => &["should-rate-limit"],
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
    /// `rls` only: some descriptor was answered without a limit (no
    /// `current_limit`, or no status at all), i.e. the server matched no
    /// configured limit and decided nothing for it — usually a domain or
    /// descriptor key the server's config does not map.
    pub unmatched: bool,
}

/// The stubs one caller sends through (one HTTP/2 connection, shared).
#[derive(Debug, Clone)]
pub struct Caller {
    limits: LimitsServiceClient<Channel>,
    rls: rls::RateLimitServiceClient<Channel>,
    /// The `ShouldRateLimit` domain.
    domain: Arc<str>,
}

impl Caller {
    pub fn new(channel: Channel, domain: Arc<str>) -> Caller {
        Caller {
            limits: LimitsServiceClient::new(channel.clone()),
            rls: rls::RateLimitServiceClient::new(channel),
            domain,
        }
    }
}

/// A plausible request: about 1000 tokens for about a cent.
fn check_request(subjects: Vec<pb::Subject>, reserve: bool) -> pb::CheckLimitsRequest {
    pb::CheckLimitsRequest {
        subjects,
        model: "gpt-4".into(),
        estimated_tokens: 1000,
        estimated_input_tokens: None,
        estimated_output_tokens: None,
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
        progress: false,
        sequence: 0,
    }
}

/// The `ShouldRateLimit` request for `subjects`: one single-entry
/// descriptor per subject, in order, keyed as in [`RLS_KEYS`], one hit.
/// This is what Envoy sends for a route with one `request_headers` action
/// per identity header.
pub fn rls_request(domain: &str, subjects: Vec<pb::Subject>) -> rls::RateLimitRequest {
    let key = |dimension: i32| {
        RLS_KEYS
            .iter()
            .find(|(d, _)| *d as i32 == dimension)
            .map_or("unknown", |(_, k)| k)
    };
    rls::RateLimitRequest {
        domain: domain.to_owned(),
        descriptors: subjects
            .into_iter()
            .map(|s| rls::RateLimitDescriptor {
                entries: vec![rls::Entry {
                    key: key(s.dimension).to_owned(),
                    value: s.id,
                }],
                ..Default::default()
            })
            .collect(),
        hits_addend: 1,
    }
}

/// What a `ShouldRateLimit` answer to `descriptors` descriptors decided:
/// `(allowed, unmatched)`. `OK` is allowed and `OVER_LIMIT` denied, both
/// decisions; an `UNKNOWN` overall code is no decision and counts as an
/// error (gRPC code `Unknown`, the nearest name).
pub fn rls_outcome(
    response: &rls::RateLimitResponse,
    descriptors: usize,
) -> Result<(bool, bool), tonic::Status> {
    let allowed = match rls::Code::try_from(response.overall_code) {
        Ok(rls::Code::Ok) => true,
        Ok(rls::Code::OverLimit) => false,
        Ok(rls::Code::Unknown) | Err(_) => {
            return Err(tonic::Status::unknown(format!(
                "ShouldRateLimit answered overall_code {}",
                response.overall_code
            )));
        }
    };
    let unmatched = response.statuses.len() < descriptors
        || response.statuses.iter().any(|s| s.current_limit.is_none());
    Ok((allowed, unmatched))
}

/// Runs one operation of `workload` for `subjects`.
pub async fn run_once(
    workload: Workload,
    caller: &mut Caller,
    subjects: Vec<pb::Subject>,
) -> Result<Outcome, tonic::Status> {
    let mut out = Outcome::default();
    let client = &mut caller.limits;
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
        Workload::Rls => {
            let descriptors = subjects.len();
            let request = rls_request(&caller.domain, subjects);
            let t = Instant::now();
            let answer = caller.rls.should_rate_limit(request).await?.into_inner();
            out.steps[0] = Some(t.elapsed());
            (out.allowed, out.unmatched) = rls_outcome(&answer, descriptors)?;
            out.response_bytes += answer.encoded_len();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::population;

    #[test]
    fn rls_requests_carry_one_descriptor_per_subject_in_order() {
        let r = rls_request("d", population::subjects(7, 3));
        assert_eq!(r.domain, "d");
        assert_eq!(r.hits_addend, 1);
        let entries: Vec<(&str, &str)> = r
            .descriptors
            .iter()
            .map(|d| {
                assert_eq!(d.entries.len(), 1);
                (d.entries[0].key.as_str(), d.entries[0].value.as_str())
            })
            .collect();
        assert_eq!(
            entries,
            [("api_key", "key-7"), ("user", "user-7"), ("team", "team-0")]
        );
        assert_eq!(
            rls_request("d", population::subjects(7, 1))
                .descriptors
                .len(),
            1
        );
    }

    fn answer(code: rls::Code, limits: &[bool]) -> rls::RateLimitResponse {
        rls::RateLimitResponse {
            overall_code: code as i32,
            statuses: limits
                .iter()
                .map(|&limited| rls::DescriptorStatus {
                    code: code as i32,
                    current_limit: limited.then(rls::RateLimit::default),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn over_limit_is_a_denial_and_unknown_an_error() {
        let ok = rls_outcome(&answer(rls::Code::Ok, &[true, true]), 2).unwrap();
        assert_eq!(ok, (true, false));
        let over = rls_outcome(&answer(rls::Code::OverLimit, &[true]), 1).unwrap();
        assert_eq!(over, (false, false));
        let e = rls_outcome(&answer(rls::Code::Unknown, &[true]), 1).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unknown);
    }

    #[test]
    fn descriptors_answered_without_a_limit_are_unmatched() {
        let some = rls_outcome(&answer(rls::Code::Ok, &[true, false]), 2).unwrap();
        assert_eq!(some, (true, true));
        let missing = rls_outcome(&answer(rls::Code::Ok, &[true]), 2).unwrap();
        assert_eq!(missing, (true, true));
    }
}
