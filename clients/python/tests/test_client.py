"""The clients and their guards against a real limitsd: each guarantee the
guard gives (settle zero on an exception or a cancellation, always release
the slot, never charge twice on a retried record, retry a check only on
UNAVAILABLE) has a test here that fails if the guarantee breaks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
import pytest

import limitsd
from limitsd import AsyncLimitsClient, LimitExceeded, LimitsClient, LimitsError, pb
from procs import Limitsd, wait_for

CONFIG = """
limits:
  budgets:
    by_api_key:
      "guard-key": { daily: 10.00 }
      "tiny-key": { daily: 0.05 }
      "stream-key": { daily: 1.00 }
  rate_limits:
    by_api_key:
      "guard-key": { max_concurrent: 2 }
      "tiny-key": { max_concurrent: 5 }
  enforcement:
    action: block
  storage:
    backend: memory
"""

KEY = limitsd.api_key("guard-key")
TINY = limitsd.api_key("tiny-key")
STREAM = limitsd.api_key("stream-key")  # $1.00 a day, no concurrency limit
OPTIONS = [("grpc.enable_http_proxy", 0)]


@pytest.fixture
def server(start_limitsd: Callable[[str], Limitsd]) -> Limitsd:
    return start_limitsd(CONFIG)


@pytest.fixture
def client(server: Limitsd) -> Any:
    with LimitsClient(server.grpc_addr, options=OPTIONS, timeout=5) as c:
        yield c


def daily_used(c: LimitsClient, subject: pb.Subject = KEY) -> float:
    u = c.usage(subject)
    return next(s.used for s in u.statuses if s.kind == pb.LIMIT_KIND_BUDGET_DAILY)


def holds(c: LimitsClient, subject: pb.Subject = KEY) -> tuple[int, int]:
    """(open reservations, live leases) of a subject."""
    u = c.usage(subject)
    return len(u.reservations), len(u.leases)


def held_usd(c: LimitsClient, subject: pb.Subject = KEY) -> list[float]:
    """What each open reservation of a subject still holds, in USD."""
    return [r.held_cost_usd for r in c.usage(subject).reservations]


# ---- the blocking guard ------------------------------------------------------


def test_guard_records_the_usage_set_and_releases(client: LimitsClient) -> None:
    with client.guard([KEY], model="gpt-4", estimated_tokens=1000, estimated_cost_usd=0.5) as g:
        assert g.model == "gpt-4" and not g.downgraded
        assert g.decision.allowed and g.decision.reservation_id
        assert holds(client) == (1, 1), "inside the block: a hold and a slot"
        assert "X-Budget-Limit" in g.headers
        g.record(120, 80, cost_usd=0.25)
    assert g.settlement is not None and g.settlement.cost_usd == 0.25 and not g.settlement.duplicate
    assert daily_used(client) == 0.25
    assert holds(client) == (0, 0)


def test_guard_settles_zero_and_releases_when_the_block_raises(client: LimitsClient) -> None:
    with pytest.raises(RuntimeError, match="upstream failed"):
        with client.guard([KEY], model="gpt-4", estimated_cost_usd=2.0):
            assert daily_used(client) == 2.0, "the estimate is held"
            raise RuntimeError("upstream failed")
    assert daily_used(client) == 0.0
    assert holds(client) == (0, 0)


def test_guard_keeps_usage_recorded_before_the_block_raised(client: LimitsClient) -> None:
    with pytest.raises(RuntimeError):
        with client.guard([KEY], model="gpt-4", estimated_cost_usd=2.0) as g:
            g.record(10, 10, cost_usd=0.3)
            raise RuntimeError("the response could not be parsed")
    assert daily_used(client) == pytest.approx(0.3)
    assert holds(client) == (0, 0)


def test_guard_without_record_charges_the_estimate(client: LimitsClient) -> None:
    with client.guard([KEY], model="gpt-4", estimated_tokens=10, estimated_cost_usd=0.75):
        pass
    assert daily_used(client) == 0.75
    assert holds(client) == (0, 0)


def test_guard_denial_is_limit_exceeded_with_retry_after_and_releases(client: LimitsClient) -> None:
    client.record([TINY], cost_usd=0.05)
    with pytest.raises(LimitExceeded) as info:
        with client.guard([TINY], model="gpt-4", estimated_cost_usd=0.01):
            pytest.fail("a denied request must not run")
    e = info.value
    assert e.status_code == 429
    assert "daily budget" in e.reason
    assert "tiny-key" not in e.reason, "API keys are never shown raw"
    assert e.retry_after is not None and e.retry_after > 0
    assert int(e.headers["Retry-After"]) >= 1
    assert e.headers["X-Budget-Remaining"] == "0.00"
    assert e.body["error"]["code"] == "rate_limit_exceeded" and e.body["error"]["message"] == e.reason
    assert e.decision is not None and e.action == "ACTION_BLOCK"
    assert holds(client, TINY) == (0, 0), "the slot taken before the check is given back"


def test_guard_refused_slot_is_limit_exceeded(client: LimitsClient) -> None:
    with client.guard([KEY], model="m", estimated_cost_usd=0.1), client.guard([KEY], model="m", estimated_cost_usd=0.1):
        with pytest.raises(LimitExceeded) as info:
            with client.guard([KEY], model="m", estimated_cost_usd=0.1):
                pytest.fail("max_concurrent is 2")
        assert info.value.acquire is not None and info.value.decision is None
        assert "Retry-After" in info.value.headers
        assert holds(client) == (2, 2), "the refused guard reserved nothing"
    assert holds(client) == (0, 0)
    assert daily_used(client) == pytest.approx(0.2)


def test_guard_without_concurrency_takes_no_slot(client: LimitsClient) -> None:
    with client.guard([KEY], model="m", estimated_cost_usd=0.1, concurrency=False):
        assert holds(client) == (1, 0)
    assert holds(client) == (0, 0)


def test_an_org_above_its_teams_denies_every_team(start_limitsd: Callable[[str], Limitsd]) -> None:
    d = start_limitsd(
        """
limits:
  budgets:
    by_team: { default: { daily: 100.00 } }
    by_org: { "acme": { daily: 1.00 } }
  storage: { backend: memory }
"""
    )
    with LimitsClient(d.grpc_addr, options=OPTIONS, timeout=5) as c:
        acme = limitsd.org("acme")
        eng = [limitsd.api_key("k1"), limitsd.user("u1"), limitsd.team("eng"), acme]
        ops = [limitsd.api_key("k2"), limitsd.user("u2"), limitsd.team("ops"), acme]
        with c.guard(eng, model="gpt-4", estimated_cost_usd=0.5) as g:
            g.record(cost_usd=0.6)
        with c.guard(ops, model="gpt-4", estimated_cost_usd=0.4) as g:
            g.record(cost_usd=0.4)
        with pytest.raises(LimitExceeded) as e:
            with c.guard(ops, model="gpt-4", estimated_cost_usd=0.1):
                pass
        assert "org:acme" in e.value.decision.reason
        assert daily_used(c, acme) == pytest.approx(1.0)
        assert daily_used(c, limitsd.team("ops")) == pytest.approx(0.4)


def test_input_and_output_token_limits_take_each_part(start_limitsd: Callable[[str], Limitsd]) -> None:
    d = start_limitsd(
        """
limits:
  rate_limits:
    by_api_key: { "io-key": { input_tokens_per_minute: 1000, output_tokens_per_minute: 500 } }
  storage: { backend: memory }
"""
    )
    key = limitsd.api_key("io-key")
    with LimitsClient(d.grpc_addr, options=OPTIONS, timeout=5) as c:
        r = c.check(
            [key],
            model="gpt-4",
            estimated_tokens=1200,
            estimated_input_tokens=800,
            estimated_output_tokens=400,
            estimated_cost_usd=0.0,
            reserve=True,
        )
        assert r.allowed
        used = {s.kind: s.used for s in r.statuses}
        assert used[pb.LIMIT_KIND_INPUT_TOKENS_PER_MINUTE] == 800
        assert used[pb.LIMIT_KIND_OUTPUT_TOKENS_PER_MINUTE] == 400
        # The response ran longer than estimated: 600 output tokens.
        rec = c.record(
            [key], reservation_id=r.reservation_id, prompt_tokens=700, completion_tokens=600, cost_usd=0.0
        )
        used = {s.kind: s.used for s in rec.statuses}
        assert (used[pb.LIMIT_KIND_INPUT_TOKENS_PER_MINUTE], used[pb.LIMIT_KIND_OUTPUT_TOKENS_PER_MINUTE]) == (700, 600)
        denied = c.check([key], model="gpt-4", estimated_tokens=1, estimated_output_tokens=1, estimated_cost_usd=0.0)
        assert not denied.allowed and "output tokens per minute limit" in denied.reason


def test_guard_downgrades(start_limitsd: Callable[[str], Limitsd]) -> None:
    d = start_limitsd(
        """
limits:
  budgets: { by_api_key: { "k": { daily: 1.00 } } }
  enforcement:
    action: downgrade
    model_downgrades: { "gpt-4": "gpt-3.5-turbo" }
  pricing:
    "gpt-4": { input_per_1k: 1.0, output_per_1k: 1.0 }
    "gpt-3.5-turbo": { input_per_1k: 0.01, output_per_1k: 0.01 }
  storage: { backend: memory }
"""
    )
    with LimitsClient(d.grpc_addr, options=OPTIONS, timeout=5) as c:
        k = limitsd.api_key("k")
        with c.guard([k], model="gpt-4", estimated_tokens=800) as g:  # $0.80 on gpt-4
            assert g.model == "gpt-4"
            g.record(400, 400)  # priced by limitsd: $0.80
        with c.guard([k], model="gpt-4", estimated_tokens=800) as g:  # $0.80 does not fit, $0.008 does
            assert g.downgraded and g.model == "gpt-3.5-turbo"
            assert g.decision.action == pb.ACTION_DOWNGRADE
            g.record(400, 400)
        assert g.settlement is not None and g.settlement.cost_usd == pytest.approx(0.008)


# ---- retries -------------------------------------------------------------------


class Unavailable(grpc.RpcError):
    """What the channel raises for a call that never reached the service."""

    def __init__(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE):
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"injected {self._code.name}"


class Faults(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Fails calls of one method: ``before`` times without sending them, or
    ``after`` times after the service answered (the answer is lost)."""

    def __init__(self, method: str, *, before: int = 0, after: int = 0, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE):
        self.method = method
        self.before = before
        self.after = after
        self.code = code
        self.calls = 0
        self.sent = 0
        self.metadata: list[dict[str, str]] = []
        self.requests: list[Any] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if not details.method.endswith("/" + self.method):
            return continuation(details, request)
        self.calls += 1
        self.metadata.append(dict(details.metadata or ()))
        self.requests.append(request)
        if self.before > 0:
            self.before -= 1
            raise Unavailable(self.code)
        self.sent += 1
        outcome = continuation(details, request)
        if self.after > 0:
            self.after -= 1
            outcome.result()  # the service did answer ...
            raise Unavailable(self.code)  # ... but the caller never hears it
        return outcome


def faulty_client(server: Limitsd, faults: Faults, **kw: Any) -> LimitsClient:
    channel = grpc.intercept_channel(grpc.insecure_channel(server.grpc_addr, options=OPTIONS), faults)
    return LimitsClient(channel=channel, timeout=5, **kw)


def test_check_is_retried_on_unavailable(server: Limitsd) -> None:
    faults = Faults("CheckLimits", before=2)
    d = faulty_client(server, faults).check([KEY], model="m", estimated_cost_usd=0.1)
    assert d.allowed
    assert (faults.calls, faults.sent) == (3, 1)


def test_check_gives_up_after_its_attempts(server: Limitsd) -> None:
    faults = Faults("CheckLimits", before=10)
    with pytest.raises(LimitsError) as info:
        faulty_client(server, faults).check([KEY], model="m")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.attempts == 3
    assert faults.calls == 3


@pytest.mark.parametrize("code", [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL])
def test_check_is_not_retried_on_other_codes(server: Limitsd, code: grpc.StatusCode) -> None:
    faults = Faults("CheckLimits", before=1, code=code)
    with pytest.raises(LimitsError) as info:
        faulty_client(server, faults).check([KEY], model="m")
    assert info.value.code == code and info.value.attempts == 1
    assert faults.calls == 1


def test_settlement_retry_never_charges_twice(server: Limitsd, client: LimitsClient) -> None:
    faults = Faults("RecordUsage", after=1)
    c = faulty_client(server, faults)
    with c.guard([KEY], model="m", estimated_cost_usd=1.0) as g:
        g.record(10, 10, cost_usd=0.4)
    assert faults.sent == 2, "the lost answer was retried"
    assert g.settlement is not None and g.settlement.duplicate, "the retry found the reservation settled"
    assert daily_used(client) == pytest.approx(0.4), "charged once"
    assert holds(client) == (0, 0)


def test_record_without_reservation_is_never_retried(server: Limitsd, client: LimitsClient) -> None:
    faults = Faults("RecordUsage", after=1)
    with pytest.raises(LimitsError):
        faulty_client(server, faults).record([KEY], cost_usd=0.4)
    assert faults.sent == 1
    assert daily_used(client) == pytest.approx(0.4), "the one attempt that reached limitsd counts, once"


def test_metadata_is_sent_on_every_call(server: Limitsd) -> None:
    tokens = iter(range(100))
    faults = Faults("CheckLimits")
    c = faulty_client(server, faults, metadata=lambda: [("authorization", f"Bearer t{next(tokens)}")])
    c.check([KEY], model="m")
    c.check([KEY], model="m")
    assert [m["authorization"] for m in faults.metadata] == ["Bearer t0", "Bearer t1"]


def test_tls_credentials_make_a_secure_channel(server: Limitsd) -> None:
    # limitsd serves plaintext here: a TLS client cannot complete a handshake.
    c = LimitsClient(server.grpc_addr, credentials=grpc.ssl_channel_credentials(), options=OPTIONS, timeout=2)
    with pytest.raises(LimitsError) as info:
        c.check([KEY], model="m")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_invalid_argument_names_the_field(client: LimitsClient) -> None:
    with pytest.raises(LimitsError) as info:
        client.check([], model="m")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.field == "subjects"


# ---- streamed responses ----------------------------------------------------------


def test_streamed_request_within_its_hold(server: Limitsd, client: LimitsClient) -> None:
    faults = Faults("RecordUsage")  # sees every record, fails none
    c = faulty_client(server, faults)
    with c.guard([KEY], model="gpt-4", estimated_cost_usd=1.0) as g:
        assert g.last_progress is None
        for step, cost in enumerate([0.2, 0.4, 0.6], start=1):
            assert g.progress(100, 50 * step, cost_usd=cost) is True
            assert g.last_progress is not None and g.last_progress.may_continue and not g.last_progress.reason
            assert not g.last_progress.duplicate
            # Each record charges what the ones before did not: the hold holds the rest.
            assert held_usd(client) == [pytest.approx(1.0 - cost)]
            assert daily_used(client) == pytest.approx(1.0), "charged so far plus held: the estimate"
    assert g.settlement is not None and not g.settlement.duplicate and g.settlement.may_continue
    assert g.settlement.cost_usd == pytest.approx(0.6), "the exit records the last progress"
    assert g.settlement.total_tokens == 250
    assert [(r.progress, r.sequence) for r in faults.requests] == [(True, 1), (True, 2), (True, 3), (False, 4)]
    assert daily_used(client) == pytest.approx(0.6)
    assert holds(client) == (0, 0)


def test_record_after_progress_is_what_the_exit_records(client: LimitsClient) -> None:
    with client.guard([KEY], model="gpt-4", estimated_cost_usd=1.0) as g:
        assert g.progress(10, 10, cost_usd=0.3)
        g.record(10, 40, cost_usd=0.45)  # the stream's last chunk carried the provider's totals
    assert g.settlement is not None and g.settlement.cost_usd == pytest.approx(0.45)
    assert daily_used(client) == pytest.approx(0.45)
    assert holds(client) == (0, 0)


def test_streamed_request_past_a_spent_budget_is_told_to_stop(client: LimitsClient) -> None:
    client.record([STREAM], cost_usd=0.7)  # $0.30 of $1.00 left
    steps = [0.1, 0.2, 0.3, 0.45, 0.6]
    answers: list[bool] = []
    with client.guard([STREAM], model="gpt-4", estimated_cost_usd=0.2) as g:
        for cost in steps:
            answers.append(g.progress(0, 10, cost_usd=cost))
            if not answers[-1]:
                break
        # $0.30 reaches the budget without passing it; $0.45 passes it.
        assert answers == [True, True, True, False]
        assert g.last_progress is not None and not g.last_progress.may_continue
        assert "daily budget" in g.last_progress.reason and "stream-key" not in g.last_progress.reason
        assert any(s.exceeded and s.kind == pb.LIMIT_KIND_BUDGET_DAILY for s in g.last_progress.statuses)
        # Told once, told for good: the same usage again charges nothing and still says stop.
        assert g.progress(0, 10, cost_usd=0.45) is False
        assert not g.last_progress.duplicate and daily_used(client, STREAM) == pytest.approx(1.15)
    assert g.settlement is not None and not g.settlement.duplicate
    assert g.settlement.may_continue, "a final record always answers true"
    used = daily_used(client, STREAM)
    assert used == pytest.approx(0.7 + 0.45), "the usage streamed is charged all the same"
    assert 1.0 < used <= 1.0 + (0.45 - 0.3) + 1e-9, "over the budget by no more than the last step"
    assert holds(client, STREAM) == (0, 0)
    assert not client.check([STREAM], model="gpt-4", estimated_cost_usd=0.01).allowed


def test_duplicate_progress_record_charges_once(client: LimitsClient) -> None:
    d = client.check([KEY], model="gpt-4", estimated_cost_usd=1.0, reserve=True)
    rid = d.reservation_id
    first = client.record([KEY], reservation_id=rid, prompt_tokens=5, cost_usd=0.3, progress=True, sequence=1)
    assert not first.duplicate and first.may_continue
    assert held_usd(client) == [pytest.approx(0.7)]
    again = client.record([KEY], reservation_id=rid, prompt_tokens=5, cost_usd=0.3, progress=True, sequence=1)
    assert again.duplicate and again.may_continue
    stale = client.record([KEY], reservation_id=rid, prompt_tokens=5, cost_usd=0.9, progress=True, sequence=1)
    assert stale.duplicate, "numbered no higher than one applied: nothing charged, whatever it says"
    assert held_usd(client) == [pytest.approx(0.7)] and daily_used(client) == pytest.approx(1.0)
    final = client.record([KEY], reservation_id=rid, prompt_tokens=5, cost_usd=0.3, sequence=2)
    assert not final.duplicate
    assert daily_used(client) == pytest.approx(0.3), "charged once"
    assert holds(client) == (0, 0)


def test_progress_retry_never_charges_twice(server: Limitsd, client: LimitsClient) -> None:
    faults = Faults("RecordUsage", after=1, code=grpc.StatusCode.DEADLINE_EXCEEDED)
    c = faulty_client(server, faults)
    with c.guard([KEY], model="m", estimated_cost_usd=1.0) as g:
        assert g.progress(10, 10, cost_usd=0.4)
        assert faults.sent == 2, "the lost answer was retried"
        assert g.last_progress is not None and g.last_progress.duplicate, "the retry was numbered as the first"
        assert held_usd(client) == [pytest.approx(0.6)]
    assert [r.sequence for r in faults.requests] == [1, 1, 2]
    assert daily_used(client) == pytest.approx(0.4)
    assert holds(client) == (0, 0)


def test_cancelled_stream_frees_its_hold(client: LimitsClient) -> None:
    d = client.check([STREAM], model="gpt-4", estimated_cost_usd=0.8, reserve=True)
    assert d.allowed
    assert not client.check([STREAM], model="gpt-4", estimated_cost_usd=0.5).allowed, "$0.80 is held"
    final = client.record([STREAM], reservation_id=d.reservation_id, cost_usd=0.0, sequence=1)
    assert not final.duplicate
    assert holds(client, STREAM) == (0, 0)
    assert daily_used(client, STREAM) == 0.0
    assert client.check([STREAM], model="gpt-4", estimated_cost_usd=0.5).allowed


def test_guard_stream_that_raises_charges_its_progress_and_frees_the_rest(client: LimitsClient) -> None:
    with pytest.raises(ConnectionError):
        with client.guard([STREAM], model="gpt-4", estimated_cost_usd=0.8) as g:
            assert g.progress(0, 20, cost_usd=0.1)
            assert not client.check([STREAM], model="gpt-4", estimated_cost_usd=0.5).allowed
            raise ConnectionError("the HTTP client went away")
    assert g.settlement is not None and g.settlement.cost_usd == pytest.approx(0.1)
    assert holds(client, STREAM) == (0, 0)
    assert daily_used(client, STREAM) == pytest.approx(0.1)
    assert client.check([STREAM], model="gpt-4", estimated_cost_usd=0.5).allowed


def test_progress_needs_a_reservation(client: LimitsClient) -> None:
    g = client.guard([KEY], model="gpt-4", estimated_cost_usd=0.1)
    with pytest.raises(RuntimeError, match="entered guard"):
        g.progress(1, 1)
    with g:
        pass
    with pytest.raises(RuntimeError, match="settled"):
        g.progress(1, 1)
    for kw, field in (({"progress": True}, "reservation_id"), ({"sequence": 1}, "sequence")):
        with pytest.raises(LimitsError) as info:
            client.record([KEY], cost_usd=0.1, **kw)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.field == field
        assert info.value.attempts == 1


# ---- the asyncio guard ---------------------------------------------------------


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_async_guard_records_and_releases(server: Limitsd, client: LimitsClient) -> None:
    async def main() -> None:
        async with AsyncLimitsClient(server.grpc_addr, options=OPTIONS, timeout=5) as c:
            async with c.guard([KEY], model="gpt-4", estimated_cost_usd=0.5) as g:
                assert g.decision.reservation_id
                g.record(1, 2, cost_usd=0.125)

    run(main())
    assert daily_used(client) == 0.125
    assert holds(client) == (0, 0)


def test_async_guard_settles_zero_on_exception(server: Limitsd, client: LimitsClient) -> None:
    async def main() -> None:
        async with AsyncLimitsClient(server.grpc_addr, options=OPTIONS, timeout=5) as c:
            with pytest.raises(ValueError):
                async with c.guard([KEY], model="gpt-4", estimated_cost_usd=3.0):
                    raise ValueError("upstream 500")

    run(main())
    assert daily_used(client) == 0.0
    assert holds(client) == (0, 0)


@pytest.mark.parametrize("cancels", [1, 2], ids=["cancelled", "cancelled-again-while-settling"])
def test_async_guard_settles_zero_on_cancellation(server: Limitsd, client: LimitsClient, cancels: int) -> None:
    async def main() -> None:
        async with AsyncLimitsClient(server.grpc_addr, options=OPTIONS, timeout=5) as c:
            inside = asyncio.Event()

            async def request() -> None:
                async with c.guard([KEY], model="gpt-4", estimated_cost_usd=4.0):
                    inside.set()
                    await asyncio.Event().wait()  # a model call that never ends

            task = asyncio.create_task(request())
            await inside.wait()
            assert await c.usage(KEY) and holds(client) == (1, 1)
            for _ in range(cancels):
                task.cancel()
                await asyncio.sleep(0)  # let the guard start settling
            with pytest.raises(asyncio.CancelledError):
                await task
            # A second cancellation interrupts the wait, not the settlement:
            # it finishes in the background.
            await asyncio.to_thread(wait_for, "the hold and the slot to go", lambda: holds(client) == (0, 0))

    run(main())
    assert daily_used(client) == 0.0


def test_async_settlement_retry_never_charges_twice(server: Limitsd, client: LimitsClient) -> None:
    class AsyncFaults(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        sent = 0
        lost = 1

        async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            call = await continuation(details, request)
            method = details.method.decode() if isinstance(details.method, bytes) else details.method
            if method.endswith("/RecordUsage"):
                type(self).sent += 1
                await call
                if type(self).lost:
                    type(self).lost -= 1
                    raise Unavailable()
            return call

    async def main() -> Any:
        async with AsyncLimitsClient(server.grpc_addr, options=OPTIONS, interceptors=[AsyncFaults()], timeout=5) as c:
            async with c.guard([KEY], model="m", estimated_cost_usd=1.0) as g:
                g.record(5, 5, cost_usd=0.6)
            return g

    g = run(main())
    assert AsyncFaults.sent == 2
    assert g.settlement.duplicate
    assert daily_used(client) == pytest.approx(0.6)
    assert holds(client) == (0, 0)


def test_async_denial(server: Limitsd, client: LimitsClient) -> None:
    async def main() -> None:
        async with AsyncLimitsClient(server.grpc_addr, options=OPTIONS, timeout=5) as c:
            with pytest.raises(LimitExceeded) as info:
                async with c.guard([TINY], model="m", estimated_cost_usd=0.06):
                    pytest.fail("over the budget")
            assert info.value.retry_after is None, "an estimate larger than the budget never fits"

    run(main())
    assert holds(client, TINY) == (0, 0)


def test_async_streamed_request_within_its_hold(server: Limitsd, client: LimitsClient) -> None:
    async def main() -> Any:
        async with AsyncLimitsClient(server.grpc_addr, options=OPTIONS, timeout=5) as c:
            async with c.guard([KEY], model="gpt-4", estimated_cost_usd=1.0) as g:
                for step, cost in enumerate([0.25, 0.5], start=1):
                    assert await g.progress(100, 50 * step, cost_usd=cost) is True
                    assert g.last_progress is not None and not g.last_progress.duplicate
                    u = await c.usage(KEY)
                    assert [r.held_cost_usd for r in u.reservations] == [pytest.approx(1.0 - cost)]
            return g

    g = run(main())
    assert g.settlement is not None and not g.settlement.duplicate
    assert g.settlement.cost_usd == pytest.approx(0.5) and g.settlement.total_tokens == 200
    assert daily_used(client) == pytest.approx(0.5)
    assert holds(client) == (0, 0)


def test_async_stream_past_a_spent_budget_is_told_to_stop(server: Limitsd, client: LimitsClient) -> None:
    client.record([STREAM], cost_usd=0.9)  # $0.10 of $1.00 left

    async def main() -> Any:
        async with AsyncLimitsClient(server.grpc_addr, options=OPTIONS, timeout=5) as c:
            async with c.guard([STREAM], model="gpt-4", estimated_cost_usd=0.05) as g:
                assert await g.progress(0, 10, cost_usd=0.05) is True
                assert await g.progress(0, 20, cost_usd=0.1) is True, "reaching the budget is not passing it"
                assert await g.progress(0, 30, cost_usd=0.2) is False
                assert g.last_progress is not None and "daily budget" in g.last_progress.reason
            return g

    g = run(main())
    assert g.settlement is not None and not g.settlement.duplicate
    used = daily_used(client, STREAM)
    assert used == pytest.approx(1.1)
    assert used - 1.0 <= 0.2 - 0.1 + 1e-9, "over the budget by no more than the last step"
    assert holds(client, STREAM) == (0, 0)


def test_async_duplicate_progress_record_charges_once(server: Limitsd, client: LimitsClient) -> None:
    async def main() -> None:
        async with AsyncLimitsClient(server.grpc_addr, options=OPTIONS, timeout=5) as c:
            d = await c.check([KEY], model="gpt-4", estimated_cost_usd=1.0, reserve=True)
            kw: dict[str, Any] = {"reservation_id": d.reservation_id, "cost_usd": 0.4, "progress": True, "sequence": 1}
            assert not (await c.record([KEY], **kw)).duplicate
            assert (await c.record([KEY], **kw)).duplicate
            final = await c.record([KEY], reservation_id=d.reservation_id, cost_usd=0.4, sequence=2)
            assert not final.duplicate

    run(main())
    assert daily_used(client) == pytest.approx(0.4)
    assert holds(client) == (0, 0)


def test_async_cancelled_stream_frees_its_hold(server: Limitsd, client: LimitsClient) -> None:
    async def main() -> None:
        async with AsyncLimitsClient(server.grpc_addr, options=OPTIONS, timeout=5) as c:
            # Cancelled before any token: a final record of zero frees all of the hold.
            d = await c.check([STREAM], model="gpt-4", estimated_cost_usd=0.8, reserve=True)
            assert not (await c.check([STREAM], model="gpt-4", estimated_cost_usd=0.5)).allowed
            await c.record([STREAM], reservation_id=d.reservation_id, cost_usd=0.0, sequence=1)
            assert (await c.check([STREAM], model="gpt-4", estimated_cost_usd=0.5)).allowed
            assert daily_used(client, STREAM) == 0.0

            # Cancelled mid-stream: what streamed is charged, the rest of the hold is freed.
            inside = asyncio.Event()

            async def stream() -> None:
                async with c.guard([STREAM], model="gpt-4", estimated_cost_usd=0.8) as g:
                    assert await g.progress(0, 10, cost_usd=0.1)
                    inside.set()
                    await asyncio.Event().wait()  # a stream that never ends

            task = asyncio.create_task(stream())
            await inside.wait()
            assert not (await c.check([STREAM], model="gpt-4", estimated_cost_usd=0.5)).allowed
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.to_thread(wait_for, "the hold to go", lambda: holds(client, STREAM) == (0, 0))
            assert daily_used(client, STREAM) == pytest.approx(0.1)
            assert (await c.check([STREAM], model="gpt-4", estimated_cost_usd=0.5)).allowed

    run(main())
