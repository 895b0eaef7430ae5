"""What the sync and asyncio clients share: subjects, requests, errors, the
retry policy and the guard's settlement rules. No I/O happens here."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import grpc
from google.protobuf import duration_pb2

from limitsd._proto import limits_pb2 as pb

#: Extra call metadata: a fixed list of ``(key, value)`` pairs, or a function
#: called before every call (for tokens that rotate).
Metadata = Union[Sequence[tuple[str, str]], Callable[[], Sequence[tuple[str, str]]]]


def api_key(id: str) -> pb.Subject:
    """The API key subject ``id`` (limitsd never logs or labels it raw)."""
    return pb.Subject(dimension=pb.DIMENSION_API_KEY, id=id)


def user(id: str) -> pb.Subject:
    """The user subject ``id``."""
    return pb.Subject(dimension=pb.DIMENSION_USER, id=id)


def team(id: str) -> pb.Subject:
    """The team subject ``id``."""
    return pb.Subject(dimension=pb.DIMENSION_TEAM, id=id)


def org(id: str) -> pb.Subject:
    """The organisation subject ``id`` (above teams)."""
    return pb.Subject(dimension=pb.DIMENSION_ORG, id=id)


def duration(seconds: float | None) -> duration_pb2.Duration | None:
    if seconds is None:
        return None
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(round(seconds * 1e9)))
    return d


def seconds_of(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


class LimitsError(Exception):
    """limitsd could not answer, or refused the call: a gRPC error other
    than a decision.

    ``code`` is the gRPC status code and ``details`` limitsd's message.
    ``INVALID_ARGUMENT`` is a bug in the request (``field`` names the
    offending field); ``NOT_FOUND`` an unknown reservation or lease;
    ``UNAVAILABLE`` and ``RESOURCE_EXHAUSTED`` mean limitsd could not
    decide, and the gateway applies its own fail-open or fail-closed policy.
    ``UNAUTHENTICATED`` and ``PERMISSION_DENIED``: the call carried no
    credential (or an unknown one), or one whose scope is too small. The
    admin API's other codes are listed on ``AdminClient``.
    """

    def __init__(self, code: grpc.StatusCode, details: str, field: str | None = None, attempts: int = 1):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.field = field
        self.attempts = attempts

    @classmethod
    def from_rpc(cls, err: grpc.RpcError, attempts: int = 1) -> LimitsError:
        code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
        details = (err.details() if callable(getattr(err, "details", None)) else None) or str(err)
        return cls(code, details, _bad_request_field(err), attempts)


def _bad_request_field(err: grpc.RpcError) -> str | None:
    """The field named by the google.rpc.BadRequest detail, if any."""
    trailing = getattr(err, "trailing_metadata", None)
    if not callable(trailing):
        return None
    raw = dict(trailing() or ()).get("grpc-status-details-bin")
    if not isinstance(raw, bytes):
        return None
    from google.rpc import error_details_pb2, status_pb2

    status = status_pb2.Status.FromString(raw)
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            if bad.field_violations:
                return str(bad.field_violations[0].field)
    return None


class LimitExceeded(Exception):
    """A request limitsd denied: answer it with HTTP 429.

    ``reason`` names the limit; ``retry_after`` is the time in seconds until
    the request could fit (``None`` when it never can); ``headers`` are the
    HTTP headers to send (``Retry-After`` included when there is a
    ``retry_after``); ``body`` is an OpenAI-style error body. ``decision``
    is the CheckLimits answer, or ``None`` when the concurrency slot was
    refused (``acquire`` holds that answer).
    """

    status_code = 429

    def __init__(
        self,
        reason: str,
        retry_after: float | None,
        headers: Mapping[str, str],
        *,
        action: str = "ACTION_BLOCK",
        decision: pb.CheckLimitsResponse | None = None,
        acquire: pb.AcquireConcurrentResponse | None = None,
    ):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.action = action
        self.decision = decision
        self.acquire = acquire
        h = dict(headers)
        if retry_after is not None and not any(k.lower() == "retry-after" for k in h):
            h["Retry-After"] = str(max(1, math.ceil(retry_after)))
        self.headers: dict[str, str] = h

    @classmethod
    def from_check(cls, d: pb.CheckLimitsResponse) -> LimitExceeded:
        retry = seconds_of(d.retry_after) if d.HasField("retry_after") else None
        return cls(d.reason, retry, dict(d.headers), action=pb.Action.Name(d.action), decision=d)

    @classmethod
    def from_acquire(cls, a: pb.AcquireConcurrentResponse) -> LimitExceeded:
        retry = seconds_of(a.retry_after) if a.HasField("retry_after") else None
        return cls(a.reason, retry, {}, acquire=a)

    @property
    def body(self) -> dict[str, Any]:
        """The OpenAI error body for a 429."""
        return {
            "error": {
                "message": self.reason,
                "type": "rate_limit_error",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }


@dataclass(frozen=True)
class RetryPolicy:
    """How often and on which codes a call is retried. Each attempt has the
    call's own timeout; between attempts the client waits an exponential
    backoff with full jitter."""

    attempts: int = 3
    codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})
    initial_backoff: float = 0.05
    max_backoff: float = 1.0

    def backoff(self, attempt: int) -> float:
        """The pause after failed attempt ``attempt`` (1-based)."""
        return random.uniform(0, min(self.max_backoff, self.initial_backoff * 2 ** (attempt - 1)))


#: Retrying only UNAVAILABLE, which gRPC gives when the call never reached
#: the service. A reserved check or an acquire that did reach it and is
#: retried anyway holds twice until the first hold expires: never an
#: overshoot, at worst a request refused early.
CHECK_RETRY = RetryPolicy()
#: Settling a reservation twice charges once (the service answers
#: ``duplicate``), so a settlement also retries a deadline that passed.
SETTLE_RETRY = RetryPolicy(codes=frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}))
#: A record without a reservation is never retried: if the first attempt
#: reached the service, a second would charge twice.
NO_RETRY = RetryPolicy(attempts=1)
#: A progress record of a streamed response reports the usage so far (not an
#: increment) and is numbered, so a retry of one that did arrive charges
#: nothing more: it is retried like a settlement.
PROGRESS_RETRY = SETTLE_RETRY
#: Releasing twice is harmless and reading changes nothing.
IDEMPOTENT_RETRY = SETTLE_RETRY


def check_request(
    subjects: Iterable[pb.Subject],
    *,
    model: str,
    estimated_tokens: int,
    estimated_cost_usd: float | None,
    reserve: bool,
    reservation_ttl: float | None,
    estimated_input_tokens: int | None = None,
    estimated_output_tokens: int | None = None,
) -> pb.CheckLimitsRequest:
    req = pb.CheckLimitsRequest(
        subjects=list(subjects), model=model, estimated_tokens=estimated_tokens, reserve=reserve
    )
    if estimated_cost_usd is not None:
        req.estimated_cost_usd = estimated_cost_usd
    if estimated_input_tokens is not None:
        req.estimated_input_tokens = estimated_input_tokens
    if estimated_output_tokens is not None:
        req.estimated_output_tokens = estimated_output_tokens
    ttl = duration(reservation_ttl)
    if ttl is not None:
        req.reservation_ttl.CopyFrom(ttl)
    return req


def record_request(
    subjects: Iterable[pb.Subject],
    *,
    reservation_id: str,
    prompt_tokens: int,
    completion_tokens: int,
    total_tokens: int,
    cost_usd: float | None,
    model: str,
    provider: str,
    progress: bool = False,
    sequence: int = 0,
) -> pb.RecordUsageRequest:
    req = pb.RecordUsageRequest(
        subjects=list(subjects),
        reservation_id=reservation_id,
        request_tokens=prompt_tokens,
        response_tokens=completion_tokens,
        total_tokens=total_tokens,
        model=model,
        provider=provider,
        progress=progress,
        sequence=sequence,
    )
    if cost_usd is not None:
        req.cost_usd = cost_usd
    return req


def record_retry(req: pb.RecordUsageRequest) -> RetryPolicy:
    """The retries of a RecordUsage: a record of a reservation (a
    settlement, or a progress record) is charged once however often it
    arrives; a record without one never is retried."""
    if not req.reservation_id:
        return NO_RETRY
    return PROGRESS_RETRY if req.progress else SETTLE_RETRY


def acquire_request(subjects: Iterable[pb.Subject], ttl: float | None) -> pb.AcquireConcurrentRequest:
    req = pb.AcquireConcurrentRequest(subjects=list(subjects))
    d = duration(ttl)
    if d is not None:
        req.ttl.CopyFrom(d)
    return req


@dataclass
class Usage:
    """What a guarded call actually used, set with ``Guard.record`` (or, so
    far, with ``Guard.progress``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float | None = None


@dataclass
class GuardState:
    """The part of a guard both clients share: what was asked, what was
    decided, and which settlement its exit sends."""

    subjects: list[pb.Subject]
    model: str
    estimated_tokens: int
    estimated_cost_usd: float | None
    provider: str
    decision: pb.CheckLimitsResponse | None = None
    lease_id: str = ""
    usage: Usage | None = None
    settlement: pb.RecordUsageResponse | None = None
    #: The answer to the last progress record.
    last_progress: pb.RecordUsageResponse | None = None
    #: The number of the last record sent for the reservation (0: none).
    sequence: int = 0
    _settled: bool = field(default=False, repr=False)

    def next_sequence(self) -> int:
        self.sequence += 1
        return self.sequence

    def progress_request(self, usage: Usage) -> pb.RecordUsageRequest:
        """The progress record of ``usage``, the usage so far of a streamed
        response, numbered after the records sent before it. ``usage``
        becomes what the exit records (unless ``record`` sets another)."""
        if self.decision is None:
            raise RuntimeError("limitsd: progress() needs an entered guard: use it inside the guard's block")
        if not self.decision.reservation_id:
            raise RuntimeError("limitsd: progress() needs a reservation, and limitsd reserved nothing for this guard")
        if self._settled:
            raise RuntimeError("limitsd: progress() after the guard settled its reservation")
        # Kept even if the call fails: the tokens were streamed all the same.
        self.usage = usage
        return self._numbered_record(usage, progress=True)

    def _numbered_record(self, usage: Usage, *, progress: bool) -> pb.RecordUsageRequest:
        """The next record of the guard's reservation: ``usage``, numbered
        after the records sent before it."""
        assert self.decision is not None
        return record_request(
            self.subjects,
            reservation_id=self.decision.reservation_id,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            cost_usd=usage.cost_usd,
            model=self.effective_model,
            provider=self.provider,
            progress=progress,
            sequence=self.next_sequence(),
        )

    def settle_request(self, failed: bool) -> pb.RecordUsageRequest | None:
        """The RecordUsage to send on exit, or None when there is nothing to
        settle.

        - usage set with ``record`` is charged, even when the block then
          raised (it was used);
        - otherwise, a block that raised or was cancelled settles zero, so
          its hold is released now rather than at its expiry;
        - otherwise (the block finished without saying what it used) the
          estimate that was checked is charged: never less than was held.

        The usage of the last ``progress`` counts as set with ``record``.
        The settlement is numbered after the progress records, so that one
        of them arriving late is a duplicate.
        """
        if self._settled or self.decision is None or not self.decision.reservation_id:
            return None
        self._settled = True
        if self.usage is not None:
            usage = self.usage
        elif failed:
            usage = Usage(cost_usd=0.0)
        else:
            usage = Usage(prompt_tokens=self.estimated_tokens, cost_usd=self.decision.estimated_cost_usd)
        return self._numbered_record(usage, progress=False)

    @property
    def effective_model(self) -> str:
        if self.decision is not None and self.decision.downgrade_to:
            return self.decision.downgrade_to
        return self.model


class GuardBase:
    """The caller's view of a guarded request (``as g``)."""

    _state: GuardState

    @property
    def model(self) -> str:
        """The model to call: the one asked for, or the cheaper one limitsd
        downgraded the request to."""
        return self._state.effective_model

    @property
    def downgraded(self) -> bool:
        d = self._state.decision
        return d is not None and bool(d.downgrade_to)

    @property
    def headers(self) -> dict[str, str]:
        """The HTTP headers to copy onto the gateway's response."""
        d = self._state.decision
        return dict(d.headers) if d is not None else {}

    @property
    def decision(self) -> pb.CheckLimitsResponse:
        """The CheckLimits answer that admitted the request."""
        assert self._state.decision is not None, "the guard has not been entered"
        return self._state.decision

    @property
    def settlement(self) -> pb.RecordUsageResponse | None:
        """The RecordUsage answer sent on exit (after the block)."""
        return self._state.settlement

    @property
    def last_progress(self) -> pb.RecordUsageResponse | None:
        """The answer to the last ``progress`` record (``None`` before the
        first): ``may_continue``, and ``reason`` when it is false."""
        return self._state.last_progress

    def record(
        self,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        *,
        cost_usd: float | None = None,
        total_tokens: int = 0,
    ) -> None:
        """Sets the usage the exit records (the last call wins, ``progress``
        included). Without ``cost_usd``, limitsd prices the tokens from its
        pricing table."""
        self._state.usage = Usage(prompt_tokens, completion_tokens, total_tokens, cost_usd)
