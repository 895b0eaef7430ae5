"""The asyncio client and its guard (the blocking twin is
``limitsd.client``): the same calls, retries and guarantees, and a guard
whose settlement survives the cancellation of the task that holds it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from limitsd._channel import TLS, Token, aio_channel, call_metadata
from limitsd._common import (
    CHECK_RETRY,
    IDEMPOTENT_RETRY,
    PROGRESS_RETRY,
    SETTLE_RETRY,
    GuardBase,
    GuardState,
    LimitExceeded,
    LimitsError,
    Metadata,
    RetryPolicy,
    Usage,
    acquire_request,
    check_request,
    record_request,
    record_retry,
)
from limitsd._proto import limits_pb2 as pb
from limitsd._proto import limits_pb2_grpc as pb_grpc

log = logging.getLogger("limitsd")
R = TypeVar("R")


async def unary(
    stub_method: Any,
    request: Any,
    timeout: float,
    metadata: Callable[[], tuple[tuple[str, str], ...]],
    policy: RetryPolicy,
    response: type[R],
) -> R:
    """Calls one unary method with ``policy``'s retries; a gRPC error
    becomes ``LimitsError``."""
    attempt = 0
    while True:
        attempt += 1
        try:
            result = await stub_method(request, timeout=timeout, metadata=metadata())
            assert isinstance(result, response)
            return result
        except grpc.RpcError as err:
            if attempt >= policy.attempts or err.code() not in policy.codes:
                raise LimitsError.from_rpc(err, attempt) from err
        await asyncio.sleep(policy.backoff(attempt))


class AsyncLimitsClient:
    """An asyncio client of limitsd's ``LimitsService``; the arguments and
    retries are ``LimitsClient``'s. Create it inside the event loop that
    uses it."""

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.aio.Channel | None = None,
        tls: TLS | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: Token | None = None,
        metadata: Metadata = (),
        options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        timeout: float = 1.0,
        check_retry: RetryPolicy = CHECK_RETRY,
    ):
        self._metadata = call_metadata(metadata, token)
        self._owns_channel = channel is None
        if channel is None:
            channel = aio_channel(target, credentials, tls, options, interceptors)
        self._channel = channel
        self._stub: Any = pb_grpc.LimitsServiceStub(channel)  # type: ignore[no-untyped-call]  # generated
        self.timeout = timeout
        self.check_retry = check_retry
        # Settlements that outlive a cancelled guard: kept referenced until done.
        self._background: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Waits for pending settlements, then closes the channel if the
        client made it."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncLimitsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(
        self, method: str, request: Any, timeout: float | None, policy: RetryPolicy, response: type[R]
    ) -> R:
        """Calls ``method`` of the service with ``policy``'s retries."""
        return await unary(
            getattr(self._stub, method), request, timeout or self.timeout, self._metadata, policy, response
        )

    async def check(
        self,
        subjects: Iterable[pb.Subject],
        *,
        model: str = "",
        estimated_tokens: int = 0,
        estimated_cost_usd: float | None = None,
        reserve: bool = False,
        reservation_ttl: float | None = None,
        timeout: float | None = None,
        estimated_input_tokens: int | None = None,
        estimated_output_tokens: int | None = None,
    ) -> pb.CheckLimitsResponse:
        """CheckLimits. A denial is an answer (``allowed`` false), not an error.
        ``estimated_input_tokens`` / ``estimated_output_tokens`` split
        ``estimated_tokens`` for input and output token limits."""
        req = check_request(
            subjects,
            model=model,
            estimated_tokens=estimated_tokens,
            estimated_cost_usd=estimated_cost_usd,
            reserve=reserve,
            reservation_ttl=reservation_ttl,
            estimated_input_tokens=estimated_input_tokens,
            estimated_output_tokens=estimated_output_tokens,
        )
        return await self._call("CheckLimits", req, timeout, self.check_retry, pb.CheckLimitsResponse)

    async def record(
        self,
        subjects: Iterable[pb.Subject],
        *,
        reservation_id: str = "",
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        total_tokens: int = 0,
        cost_usd: float | None = None,
        model: str = "",
        provider: str = "",
        timeout: float | None = None,
        progress: bool = False,
        sequence: int = 0,
    ) -> pb.RecordUsageResponse:
        """RecordUsage; retried only when it records for a reservation.
        ``progress`` and ``sequence``: see ``LimitsClient.record``."""
        req = record_request(
            subjects,
            reservation_id=reservation_id,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=total_tokens,
            cost_usd=cost_usd,
            model=model,
            provider=provider,
            progress=progress,
            sequence=sequence,
        )
        return await self._call("RecordUsage", req, timeout, record_retry(req), pb.RecordUsageResponse)

    async def acquire(
        self, subjects: Iterable[pb.Subject], *, ttl: float | None = None, timeout: float | None = None
    ) -> pb.AcquireConcurrentResponse:
        """AcquireConcurrent: one in-flight slot on every subject with ``max_concurrent``."""
        req = acquire_request(subjects, ttl)
        return await self._call("AcquireConcurrent", req, timeout, self.check_retry, pb.AcquireConcurrentResponse)

    async def release(self, lease_id: str, *, timeout: float | None = None) -> pb.ReleaseConcurrentResponse:
        """ReleaseConcurrent (releasing twice is harmless)."""
        req = pb.ReleaseConcurrentRequest(lease_id=lease_id)
        return await self._call("ReleaseConcurrent", req, timeout, IDEMPOTENT_RETRY, pb.ReleaseConcurrentResponse)

    async def usage(self, subject: pb.Subject, *, timeout: float | None = None) -> pb.GetUsageResponse:
        """GetUsage: one subject's windows, open reservations and leases."""
        return await self._call("GetUsage", pb.GetUsageRequest(subject=subject), timeout, IDEMPOTENT_RETRY, pb.GetUsageResponse)

    async def watch_alerts(self, *, timeout: float | None = None) -> AsyncAlertStream:
        """WatchAlerts; see ``LimitsClient.watch_alerts``. Resolves once
        limitsd has opened the stream::

            async with await client.watch_alerts() as alerts:
                async for e in alerts:
                    print(e.subject, e.threshold)
        """
        call = self._stub.WatchAlerts(pb.WatchAlertsRequest(), metadata=self._metadata())
        timeout = timeout or self.timeout
        try:
            # limitsd sends the stream's headers once it has subscribed it.
            headers = await asyncio.wait_for(call.initial_metadata(), timeout) or ()
        except asyncio.TimeoutError:
            call.cancel()
            raise LimitsError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"the alert stream did not open within {timeout} s"
            ) from None
        if not any(key == "limits-alert-stream" for key, _ in headers):
            # Not opened: a refusal, whose status may land a moment after its
            # (empty) headers (see LimitsClient.watch_alerts).
            try:
                await asyncio.wait_for(asyncio.shield(call.code()), timeout)
            except asyncio.TimeoutError:
                pass
        if call.done():
            try:
                await call.read()  # raises the error that ended it
            except grpc.RpcError as err:
                raise LimitsError.from_rpc(err) from err
        return AsyncAlertStream(call)

    def guard(
        self,
        subjects: Iterable[pb.Subject],
        *,
        model: str,
        estimated_tokens: int = 0,
        estimated_cost_usd: float | None = None,
        provider: str = "",
        concurrency: bool = True,
        reservation_ttl: float | None = None,
        lease_ttl: float | None = None,
    ) -> AsyncGuard:
        """A guarded model call: ``async with client.guard(...) as g:``; see
        ``LimitsClient.guard``. A block that is cancelled settles zero and
        releases its slot all the same."""
        state = GuardState(list(subjects), model, estimated_tokens, estimated_cost_usd, provider)
        return AsyncGuard(self, state, concurrency, reservation_ttl, lease_ttl)

    def _detach(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _finish(self, state: GuardState, failed: bool) -> None:
        """Settles and releases. Run detached, so that a second cancellation
        of the caller cannot stop it halfway."""
        try:
            req = state.settle_request(failed)
            if req is not None:
                state.settlement = await self._call("RecordUsage", req, None, SETTLE_RETRY, pb.RecordUsageResponse)
        finally:
            await self._release(state)

    async def _release(self, state: GuardState) -> None:
        lease, state.lease_id = state.lease_id, ""
        if not lease:
            return
        try:
            await self.release(lease)
        except LimitsError as err:
            log.warning("limitsd: releasing a concurrency slot failed (it expires by itself): %s", err)


class AsyncAlertStream(AsyncIterator[pb.AlertEvent]):
    """An open WatchAlerts stream: see ``AsyncLimitsClient.watch_alerts``."""

    def __init__(self, call: Any):
        self._call = call
        self._messages: Any = call.__aiter__()
        self._closed = False

    def __aiter__(self) -> AsyncAlertStream:
        return self

    async def __anext__(self) -> pb.AlertEvent:
        while True:
            if self._closed:
                raise StopAsyncIteration
            try:
                message = await self._messages.__anext__()
            except asyncio.CancelledError:
                # Closed by another task while this one was reading.
                if self._closed:
                    raise StopAsyncIteration from None
                raise
            except grpc.RpcError as err:
                if self._closed and err.code() == grpc.StatusCode.CANCELLED:
                    raise StopAsyncIteration from None
                raise LimitsError.from_rpc(err) from err
            assert isinstance(message, pb.WatchAlertsResponse)
            if message.HasField("event"):
                return message.event

    def close(self) -> None:
        """Ends the stream: the iteration stops."""
        self._closed = True
        self._call.cancel()

    async def __aenter__(self) -> AsyncAlertStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AsyncGuard(GuardBase):
    """``async with client.guard(...) as g``: see ``AsyncLimitsClient.guard``."""

    def __init__(
        self,
        client: AsyncLimitsClient,
        state: GuardState,
        concurrency: bool,
        reservation_ttl: float | None,
        lease_ttl: float | None,
    ):
        self._client = client
        self._state = state
        self._concurrency = concurrency
        self._reservation_ttl = reservation_ttl
        self._lease_ttl = lease_ttl

    async def __aenter__(self) -> AsyncGuard:
        c, s = self._client, self._state
        if self._concurrency:
            lease = await c.acquire(s.subjects, ttl=self._lease_ttl)
            if not lease.acquired:
                raise LimitExceeded.from_acquire(lease)
            s.lease_id = lease.lease_id
        try:
            d = await c.check(
                s.subjects,
                model=s.model,
                estimated_tokens=s.estimated_tokens,
                estimated_cost_usd=s.estimated_cost_usd,
                reserve=True,
                reservation_ttl=self._reservation_ttl,
            )
        except BaseException:
            await _shielded(c._detach(c._release(s)))
            raise
        if not d.allowed:
            await _shielded(c._detach(c._release(s)))
            raise LimitExceeded.from_check(d)
        s.decision = d
        return self

    async def progress(
        self,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        *,
        cost_usd: float | None = None,
        total_tokens: int = 0,
    ) -> bool:
        """Reports a streamed response's usage so far and returns
        ``may_continue``; see ``Guard.progress``. A progress record that a
        cancellation interrupts is harmless: the exit's settlement is
        numbered after it and records this usage."""
        s = self._state
        req = s.progress_request(Usage(prompt_tokens, completion_tokens, total_tokens, cost_usd))
        answer = await self._client._call("RecordUsage", req, None, PROGRESS_RETRY, pb.RecordUsageResponse)
        s.last_progress = answer
        return answer.may_continue

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        failed = exc_type is not None
        try:
            await _shielded(self._client._detach(self._client._finish(self._state, failed)))
        except LimitsError as err:
            if not failed:
                raise
            log.warning("limitsd: settling a failed request's reservation failed (it expires by itself): %s", err)


async def _shielded(task: asyncio.Task[None]) -> None:
    """Awaits ``task``; if the waiter is cancelled, the task goes on (the
    client keeps it referenced) and the cancellation propagates."""
    await asyncio.shield(task)
