"""The gateway flow through a Python client generated from the protos.

Each test starts a real limitsd (see conftest.py) and speaks to it with the
stubs grpc_tools.protoc generated from proto/.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

CONFIG = """
limits:
  budgets:
    alert_threshold: 0.8
    by_api_key:
      "gw-key":
        alias: gateway-tests
        daily: 10.00
    by_team:
      "eng":
        daily: 100.00
  rate_limits:
    by_api_key:
      "gw-key":
        requests_per_minute: 1000
        tokens_per_minute: 100000
        max_concurrent: 1
      "rps-key":
        requests_per_second: 2
  enforcement:
    action: block
  storage:
    backend: memory
"""


@pytest.fixture
def svc(start_limitsd, connect):
    return connect(start_limitsd(CONFIG))


def key(pb, id_="gw-key"):
    return pb.Subject(dimension=pb.DIMENSION_API_KEY, id=id_)


def team(pb, id_="eng"):
    return pb.Subject(dimension=pb.DIMENSION_TEAM, id=id_)


def status_of(pb, usage, kind):
    matches = [s for s in usage.statuses if s.kind == kind]
    assert matches, f"no {pb.LimitKind.Name(kind)} in {usage}"
    return matches[0]


def test_check_then_record(pb, svc):
    subjects = [key(pb), team(pb)]
    r = svc.CheckLimits(
        pb.CheckLimitsRequest(subjects=subjects, model="gpt-4", estimated_tokens=1500, estimated_cost_usd=0.50),
        timeout=5,
    )
    assert r.allowed, r
    assert r.action == pb.ACTION_ALLOW
    assert r.reason == ""
    assert not r.HasField("retry_after")
    assert r.reservation_id == "", "nothing is held without reserve"
    assert r.budget.limit_usd == 10.0, "the most restrictive budget: gw-key's $10/day"
    assert r.headers["X-Budget-Limit"] == "10.00"
    assert "X-RateLimit-Limit" in r.headers

    rec = svc.RecordUsage(
        pb.RecordUsageRequest(
            subjects=subjects, request_tokens=1000, response_tokens=400, cost_usd=1.5, provider="openai", model="gpt-4"
        ),
        timeout=5,
    )
    assert rec.cost_usd == 1.5
    assert rec.total_tokens == 1400, "0 means request + response tokens"
    assert not rec.duplicate

    usage = svc.GetUsage(pb.GetUsageRequest(subject=key(pb)), timeout=5)
    assert status_of(pb, usage, pb.LIMIT_KIND_BUDGET_DAILY).used == 1.5
    assert status_of(pb, usage, pb.LIMIT_KIND_BUDGET_DAILY).remaining == 8.5
    assert status_of(pb, usage, pb.LIMIT_KIND_TOKENS_PER_MINUTE).used == 1400
    team_usage = svc.GetUsage(pb.GetUsageRequest(subject=team(pb)), timeout=5)
    assert status_of(pb, team_usage, pb.LIMIT_KIND_BUDGET_DAILY).used == 1.5, "every subject is charged"


def test_reserve_then_settle(pb, svc):
    r = svc.CheckLimits(
        pb.CheckLimitsRequest(subjects=[key(pb)], model="gpt-4", estimated_cost_usd=2.0, reserve=True,
                              reservation_ttl=duration_pb2.Duration(seconds=60)),
        timeout=5,
    )
    assert r.allowed, r
    assert r.reservation_id, "a reserved, allowed check returns a reservation id"

    # The hold is visible, and counts as used.
    held = svc.GetUsage(pb.GetUsageRequest(subject=key(pb)), timeout=5)
    assert [x.reservation_id for x in held.reservations] == [r.reservation_id]
    assert held.reservations[0].held_cost_usd == 2.0
    assert held.reservations[0].HasField("expires_at")
    assert status_of(pb, held, pb.LIMIT_KIND_BUDGET_DAILY).used == 2.0

    # Settle with the actual (smaller than the estimate): it replaces the hold.
    settle = pb.RecordUsageRequest(subjects=[key(pb)], reservation_id=r.reservation_id, request_tokens=300,
                                   response_tokens=200, cost_usd=1.25, provider="openai", model="gpt-4")
    first = svc.RecordUsage(settle, timeout=5)
    assert not first.duplicate
    assert first.cost_usd == 1.25
    after = svc.GetUsage(pb.GetUsageRequest(subject=key(pb)), timeout=5)
    assert list(after.reservations) == []
    assert status_of(pb, after, pb.LIMIT_KIND_BUDGET_DAILY).used == 1.25

    # A retried settlement charges once.
    again = svc.RecordUsage(settle, timeout=5)
    assert again.duplicate
    final = svc.GetUsage(pb.GetUsageRequest(subject=key(pb)), timeout=5)
    assert status_of(pb, final, pb.LIMIT_KIND_BUDGET_DAILY).used == 1.25


def test_acquire_then_release(pb, svc):
    lease = svc.AcquireConcurrent(pb.AcquireConcurrentRequest(subjects=[key(pb)]), timeout=5)
    assert lease.acquired
    assert lease.lease_id
    assert lease.HasField("expires_at")

    full = svc.AcquireConcurrent(pb.AcquireConcurrentRequest(subjects=[key(pb)]), timeout=5)
    assert not full.acquired, "max_concurrent is 1"
    assert full.lease_id == ""
    assert full.reason
    assert full.HasField("retry_after")

    usage = svc.GetUsage(pb.GetUsageRequest(subject=key(pb)), timeout=5)
    assert [x.lease_id for x in usage.leases] == [lease.lease_id]

    assert svc.ReleaseConcurrent(pb.ReleaseConcurrentRequest(lease_id=lease.lease_id), timeout=5).released
    assert not svc.ReleaseConcurrent(pb.ReleaseConcurrentRequest(lease_id=lease.lease_id), timeout=5).released, (
        "releasing twice is harmless"
    )
    assert svc.AcquireConcurrent(pb.AcquireConcurrentRequest(subjects=[key(pb)]), timeout=5).acquired


def test_whole_gateway_sequence(pb, svc):
    """acquire -> check(reserve) -> (model call) -> record(reservation) -> release"""
    subjects = [key(pb), team(pb)]
    lease = svc.AcquireConcurrent(pb.AcquireConcurrentRequest(subjects=subjects), timeout=5)
    assert lease.acquired
    try:
        decision = svc.CheckLimits(
            pb.CheckLimitsRequest(subjects=subjects, model="gpt-4", estimated_tokens=2000, estimated_cost_usd=0.4,
                                  reserve=True),
            timeout=5,
        )
        assert decision.allowed
        model = decision.downgrade_to or "gpt-4"
        assert model == "gpt-4"
        svc.RecordUsage(
            pb.RecordUsageRequest(subjects=subjects, reservation_id=decision.reservation_id, request_tokens=1200,
                                  response_tokens=300, cost_usd=0.3, provider="openai", model=model),
            timeout=5,
        )
    finally:
        assert svc.ReleaseConcurrent(pb.ReleaseConcurrentRequest(lease_id=lease.lease_id), timeout=5).released
    usage = svc.GetUsage(pb.GetUsageRequest(subject=team(pb)), timeout=5)
    assert status_of(pb, usage, pb.LIMIT_KIND_BUDGET_DAILY).used == pytest.approx(0.3)
    assert list(usage.reservations) == [] and list(usage.leases) == []


def test_denial_carries_headers_in_message_and_metadata(pb, svc):
    req = pb.CheckLimitsRequest(subjects=[key(pb, "rps-key")], model="gpt-4", estimated_cost_usd=0.0)
    for _ in range(2):
        assert svc.CheckLimits(req, timeout=5).allowed

    denied, call = svc.CheckLimits.with_call(req, timeout=5)
    # A denial is a normal answer, not a gRPC error.
    assert call.code() == grpc.StatusCode.OK
    assert not denied.allowed
    assert denied.action == pb.ACTION_BLOCK
    assert "requests per second" in denied.reason
    assert "rps-key" not in denied.reason, "API keys are never shown raw"
    retry = denied.retry_after.ToTimedelta().total_seconds()
    assert 0 < retry <= 1.1

    # The headers to copy onto the HTTP 429 ...
    h = dict(denied.headers)
    assert h["X-RateLimit-Limit"] == "2"
    assert h["X-RateLimit-Remaining"] == "0"
    assert int(h["X-RateLimit-Reset"]) > 1_600_000_000, "Unix seconds"
    assert int(h["Retry-After"]) >= 1

    # ... and the same, lower-cased, in the gRPC response metadata.
    md = dict(call.initial_metadata() or ()) | dict(call.trailing_metadata() or ())
    assert md["x-ratelimit-limit"] == "2"
    assert md["x-ratelimit-remaining"] == "0"
    assert md["x-ratelimit-reset"] == h["X-RateLimit-Reset"]
    assert md["retry-after"] == h["Retry-After"]


def bad_request_of(err: grpc.RpcError):
    """Decodes the grpc-status-details-bin trailer: google.rpc.Status with a
    google.rpc.BadRequest detail."""
    raw = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw is not None, "INVALID_ARGUMENT carries google.rpc.Status details"
    st = status_pb2.Status.FromString(raw)
    assert st.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    for any_ in st.details:
        if any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            any_.Unpack(br)
            return st, br
    raise AssertionError(f"no BadRequest in {st}")


@pytest.mark.parametrize(
    "field, make",
    [
        pytest.param("subjects", lambda pb: pb.CheckLimitsRequest(model="gpt-4"), id="subjects"),
        pytest.param(
            "subjects[0].id",
            lambda pb: pb.CheckLimitsRequest(subjects=[pb.Subject(dimension=pb.DIMENSION_API_KEY)]),
            id="subjects[0].id",
        ),
        pytest.param(
            "subjects[0].dimension",
            lambda pb: pb.CheckLimitsRequest(subjects=[pb.Subject(id="x")]),
            id="subjects[0].dimension",
        ),
        pytest.param(
            "estimated_cost_usd",
            lambda pb: pb.CheckLimitsRequest(subjects=[key(pb)], estimated_cost_usd=-1.0),
            id="estimated_cost_usd",
        ),
    ],
)
def test_invalid_argument_names_the_field(pb, svc, field, make):
    with pytest.raises(grpc.RpcError) as info:
        svc.CheckLimits(make(pb), timeout=5)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(f"{field}:"), err.details()
    st, br = bad_request_of(err)
    assert st.message == err.details()
    assert br.field_violations[0].field == field
    assert br.field_violations[0].description


def test_a_reservation_never_issued_is_refused_and_charges_nothing(pb, svc):
    # Reservation ids are opaque: one made up by the caller is refused
    # (NOT_FOUND, or INVALID_ARGUMENT when it is not even shaped like one).
    with pytest.raises(grpc.RpcError) as info:
        svc.RecordUsage(
            pb.RecordUsageRequest(subjects=[key(pb)], reservation_id="made-up-reservation", cost_usd=1.0), timeout=5
        )
    assert info.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    usage = svc.GetUsage(pb.GetUsageRequest(subject=key(pb)), timeout=5)
    assert status_of(pb, usage, pb.LIMIT_KIND_BUDGET_DAILY).used == 0.0


def test_health_answers_what_the_kubernetes_probes_ask(start_limitsd):
    """deploy/k8s probes grpc.health.v1 on the gRPC port: liveness the
    server as a whole (service ""), readiness and startup the LimitsService."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    d = start_limitsd(CONFIG)
    with grpc.insecure_channel(d.grpc_addr, options=[("grpc.enable_http_proxy", 0)]) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "mercator.limits.v1.LimitsService"):
            r = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert r.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
