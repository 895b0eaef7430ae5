"""The blocking client and its guard, for threaded gateways (the asyncio
twin is ``limitsd.aio``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from limitsd._channel import TLS, Token, call_metadata, sync_channel
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


def unary(
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
            result = stub_method(request, timeout=timeout, metadata=metadata())
            assert isinstance(result, response)
            return result
        except grpc.RpcError as err:
            if attempt >= policy.attempts or err.code() not in policy.codes:
                raise LimitsError.from_rpc(err, attempt) from err
        time.sleep(policy.backoff(attempt))


class LimitsClient:
    """A blocking client of limitsd's ``LimitsService``.

    ``target`` is ``host:port``. ``tls=TLS(ca_cert=..., ...)`` speaks TLS
    (with a client certificate for mTLS), or pass any
    ``grpc.ChannelCredentials`` as ``credentials``; ``token`` is sent as
    ``authorization: Bearer <token>`` on every call (a string, or a function
    returning the current one), as limitsd asks with
    ``security.data_plane_auth``; ``metadata`` is extra call metadata (a
    list, or a function returning one); ``options`` are gRPC channel
    options. Or pass a ready ``channel`` instead of the channel's arguments.
    ``timeout`` is each attempt's deadline in seconds; in queue mode give
    ``check`` at least the service's ``queue_timeout``.

    Retries: a check (and an acquire) only on ``UNAVAILABLE``; a settlement
    of a reservation, a release and a read also on ``DEADLINE_EXCEEDED``
    (each is idempotent); a record without a reservation never, since a
    retry could charge twice.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.Channel | None = None,
        tls: TLS | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: Token | None = None,
        metadata: Metadata = (),
        options: Sequence[tuple[str, Any]] = (),
        timeout: float = 1.0,
        check_retry: RetryPolicy = CHECK_RETRY,
    ):
        self._metadata = call_metadata(metadata, token)
        self._owns_channel = channel is None
        self._channel = sync_channel(target, credentials, tls, options) if channel is None else channel
        self._stub: Any = pb_grpc.LimitsServiceStub(self._channel)  # type: ignore[no-untyped-call]  # generated
        self.timeout = timeout
        self.check_retry = check_retry

    def close(self) -> None:
        """Closes the channel, if the client made it."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> LimitsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any, timeout: float | None, policy: RetryPolicy, response: type[R]) -> R:
        """Calls ``method`` of the service with ``policy``'s retries."""
        return unary(getattr(self._stub, method), request, timeout or self.timeout, self._metadata, policy, response)

    def check(
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
        return self._call("CheckLimits", req, timeout, self.check_retry, pb.CheckLimitsResponse)

    def record(
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
        """RecordUsage. Retried only when it records for a reservation (the
        service charges a reservation once, however often it is settled).

        ``progress=True`` makes it a progress record of a streamed response:
        the usage is the usage so far (not an increment), the reservation
        stays open, and the answer's ``may_continue`` says whether the stream
        may go on. ``sequence`` numbers the reservation's records (1, 2,
        ...): one numbered no higher than one already applied charges
        nothing (``duplicate``). Both need a ``reservation_id``."""
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
        return self._call("RecordUsage", req, timeout, record_retry(req), pb.RecordUsageResponse)

    def acquire(
        self, subjects: Iterable[pb.Subject], *, ttl: float | None = None, timeout: float | None = None
    ) -> pb.AcquireConcurrentResponse:
        """AcquireConcurrent: one in-flight slot on every subject with ``max_concurrent``."""
        req = acquire_request(subjects, ttl)
        return self._call("AcquireConcurrent", req, timeout, self.check_retry, pb.AcquireConcurrentResponse)

    def release(self, lease_id: str, *, timeout: float | None = None) -> pb.ReleaseConcurrentResponse:
        """ReleaseConcurrent (releasing twice is harmless)."""
        req = pb.ReleaseConcurrentRequest(lease_id=lease_id)
        return self._call("ReleaseConcurrent", req, timeout, IDEMPOTENT_RETRY, pb.ReleaseConcurrentResponse)

    def usage(self, subject: pb.Subject, *, timeout: float | None = None) -> pb.GetUsageResponse:
        """GetUsage: one subject's windows, open reservations and leases."""
        return self._call("GetUsage", pb.GetUsageRequest(subject=subject), timeout, IDEMPOTENT_RETRY, pb.GetUsageResponse)

    def watch_alerts(self, *, timeout: float | None = None) -> AlertStream:
        """WatchAlerts: the budget alert events of the limitsd reached, as
        they happen (each budget window's crossing of each of its alert
        thresholds, once), as ``pb.AlertEvent`` messages.

        Returns once limitsd has opened the stream, so every event from
        then on is in it; ``timeout`` (default: the client's) bounds only
        that opening, never the stream. Iterate the answer, from one
        thread, and close it (or use it as a ``with`` block) to stop::

            with client.watch_alerts() as alerts:
                for e in alerts:
                    print(e.subject, e.threshold, e.used_usd, e.limit_usd)

        A refusal or a stream that breaks (limitsd restarting) raises
        ``LimitsError``; it is not reopened by itself, and events in between
        are missed (the webhooks get every event)."""
        call = self._stub.WatchAlerts(pb.WatchAlertsRequest(), metadata=self._metadata())
        return AlertStream(call, timeout or self.timeout)

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
    ) -> Guard:
        """A guarded model call: ``with client.guard(...) as g:``.

        Entering takes a concurrency slot (unless ``concurrency`` is false;
        subjects without ``max_concurrent`` need none) and checks with a
        reservation, raising ``LimitExceeded`` when either is refused.
        Leaving records the usage set with ``g.record(...)`` (or the last
        ``g.progress(...)`` of a streamed response), settles zero when the
        block raised before either, and always releases the slot.
        """
        state = GuardState(list(subjects), model, estimated_tokens, estimated_cost_usd, provider)
        return Guard(self, state, concurrency, reservation_ttl, lease_ttl)


class AlertStream(Iterator[pb.AlertEvent]):
    """An open WatchAlerts stream: see ``LimitsClient.watch_alerts``."""

    def __init__(self, call: Any, timeout: float):
        self._call = call
        self._closed = False
        # Waits for the stream's headers: limitsd sends them once it has
        # subscribed the stream. A stream not open within `timeout` is cancelled.
        timer = threading.Timer(timeout, call.cancel)
        timer.daemon = True
        timer.start()
        try:
            headers = call.initial_metadata() or ()
        finally:
            timer.cancel()
        if not any(key == "limits-alert-stream" for key, _ in headers):
            # Not opened: a refusal, whose status may land a moment after
            # its (empty) headers. (A limitsd older than the header opens
            # streams without it: after `timeout`, the stream is taken as open.)
            finished = threading.Event()
            call.add_done_callback(lambda _: finished.set())
            finished.wait(timeout)
        if call.done() and call.code() != grpc.StatusCode.OK:
            if call.code() == grpc.StatusCode.CANCELLED:
                raise LimitsError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, f"the alert stream did not open within {timeout} s"
                )
            raise LimitsError.from_rpc(call)

    def __iter__(self) -> AlertStream:
        return self

    def __next__(self) -> pb.AlertEvent:
        while True:
            if self._closed:
                raise StopIteration
            try:
                message = next(self._call)
            except grpc.RpcError as err:
                if self._closed and err.code() == grpc.StatusCode.CANCELLED:
                    raise StopIteration from None
                raise LimitsError.from_rpc(err) from err
            assert isinstance(message, pb.WatchAlertsResponse)
            if message.HasField("event"):
                return message.event

    def close(self) -> None:
        """Ends the stream (from any thread): the iteration stops."""
        self._closed = True
        self._call.cancel()

    def __enter__(self) -> AlertStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Guard(GuardBase):
    """``with client.guard(...) as g``: see ``LimitsClient.guard``."""

    def __init__(
        self,
        client: LimitsClient,
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

    def __enter__(self) -> Guard:
        c, s = self._client, self._state
        if self._concurrency:
            lease = c.acquire(s.subjects, ttl=self._lease_ttl)
            if not lease.acquired:
                raise LimitExceeded.from_acquire(lease)
            s.lease_id = lease.lease_id
        try:
            d = c.check(
                s.subjects,
                model=s.model,
                estimated_tokens=s.estimated_tokens,
                estimated_cost_usd=s.estimated_cost_usd,
                reserve=True,
                reservation_ttl=self._reservation_ttl,
            )
        except BaseException:
            self._release()
            raise
        if not d.allowed:
            self._release()
            raise LimitExceeded.from_check(d)
        s.decision = d
        return self

    def progress(
        self,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        *,
        cost_usd: float | None = None,
        total_tokens: int = 0,
    ) -> bool:
        """Reports a streamed response's usage so far (counted from its
        start, not an increment) as a progress record of the guard's
        reservation, numbered after the ones before it, and returns
        ``may_continue``: false when the usage went past what the
        reservation held into a budget or token limit with no room left
        (``last_progress.reason`` says which). Then stop the stream; the
        exit records this usage, unless ``record`` sets another.

        Retried like a settlement (it charges only what earlier records did
        not); a ``LimitsError`` is raised as it is. A guard not entered, or
        without a reservation, raises ``RuntimeError``."""
        s = self._state
        req = s.progress_request(Usage(prompt_tokens, completion_tokens, total_tokens, cost_usd))
        answer = self._client._call("RecordUsage", req, None, PROGRESS_RETRY, pb.RecordUsageResponse)
        s.last_progress = answer
        return answer.may_continue

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        failed = exc_type is not None
        try:
            req = self._state.settle_request(failed)
            if req is not None:
                self._state.settlement = self._client._call(
                    "RecordUsage", req, None, SETTLE_RETRY, pb.RecordUsageResponse
                )
        except LimitsError as err:
            if not failed:
                raise
            log.warning("limitsd: settling a failed request's reservation failed (it expires by itself): %s", err)
        finally:
            self._release()

    def _release(self) -> None:
        lease, self._state.lease_id = self._state.lease_id, ""
        if not lease:
            return
        try:
            self._client.release(lease)
        except LimitsError as err:
            # The lease expires by its TTL; the caller's own outcome matters more.
            log.warning("limitsd: releasing a concurrency slot failed (it expires by itself): %s", err)
