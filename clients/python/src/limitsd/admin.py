"""The admin API of limitsd (``mercator.limits.admin.v1.LimitsAdminService``):
subjects' limits at runtime, budget operations and the audit trail.

``AdminClient`` blocks; ``AsyncAdminClient`` is its asyncio twin, method for
method. Limits are named by the fields of a runtime entry (``"daily_usd"``,
``"requests_per_minute"``, ...), money is US dollars as floats, instants are
aware ``datetime``s, answers are the typed values below, and a call limitsd
refuses raises ``LimitsError`` with the server's message (an
``INVALID_ARGUMENT`` names the field).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar, Union

import grpc
import grpc.aio
from google.protobuf import field_mask_pb2, timestamp_pb2

from limitsd._channel import TLS, Token, aio_channel, call_metadata, sync_channel
from limitsd._common import IDEMPOTENT_RETRY, NO_RETRY, Metadata, RetryPolicy, seconds_of
from limitsd._proto import admin_pb2 as apb
from limitsd._proto import admin_pb2_grpc as apb_grpc
from limitsd._proto import limits_pb2 as pb
from limitsd.aio import unary as aio_unary
from limitsd.client import unary as sync_unary

if TYPE_CHECKING:
    from typing_extensions import Unpack

R = TypeVar("R")

#: A limit, by the name of its field in a runtime entry.
Kind = Literal[
    "hourly_usd",
    "daily_usd",
    "weekly_usd",
    "monthly_usd",
    "requests_per_second",
    "requests_per_minute",
    "requests_per_hour",
    "tokens_per_minute",
    "tokens_per_hour",
    "input_tokens_per_minute",
    "input_tokens_per_hour",
    "output_tokens_per_minute",
    "output_tokens_per_hour",
    "max_concurrent",
]
_KINDS: dict[Kind, pb.LimitKind] = {
    "hourly_usd": pb.LIMIT_KIND_BUDGET_HOURLY,
    "daily_usd": pb.LIMIT_KIND_BUDGET_DAILY,
    "weekly_usd": pb.LIMIT_KIND_BUDGET_WEEKLY,
    "monthly_usd": pb.LIMIT_KIND_BUDGET_MONTHLY,
    "requests_per_second": pb.LIMIT_KIND_REQUESTS_PER_SECOND,
    "requests_per_minute": pb.LIMIT_KIND_REQUESTS_PER_MINUTE,
    "requests_per_hour": pb.LIMIT_KIND_REQUESTS_PER_HOUR,
    "tokens_per_minute": pb.LIMIT_KIND_TOKENS_PER_MINUTE,
    "tokens_per_hour": pb.LIMIT_KIND_TOKENS_PER_HOUR,
    "input_tokens_per_minute": pb.LIMIT_KIND_INPUT_TOKENS_PER_MINUTE,
    "input_tokens_per_hour": pb.LIMIT_KIND_INPUT_TOKENS_PER_HOUR,
    "output_tokens_per_minute": pb.LIMIT_KIND_OUTPUT_TOKENS_PER_MINUTE,
    "output_tokens_per_hour": pb.LIMIT_KIND_OUTPUT_TOKENS_PER_HOUR,
    "max_concurrent": pb.LIMIT_KIND_MAX_CONCURRENT,
}
_KIND_NAMES: dict[int, Kind] = {int(v): k for k, v in _KINDS.items()}

Dimension = Literal["api_key", "user", "team", "org"]
_DIMENSIONS: dict[Dimension, pb.Dimension] = {
    "api_key": pb.DIMENSION_API_KEY,
    "user": pb.DIMENSION_USER,
    "team": pb.DIMENSION_TEAM,
    "org": pb.DIMENSION_ORG,
}


@dataclass(frozen=True)
class Calendar:
    """Where calendar budget periods begin: the daily, weekly and monthly
    budgets of an entry with a calendar reset at local midnight, on
    ``week_start`` and on ``month_anchor_day`` (clamped to short months) in
    ``time_zone``, an IANA name, instead of rolling."""

    time_zone: str = "UTC"
    week_start: str = "monday"
    month_anchor_day: int = 1


@dataclass(frozen=True, repr=False)
class ModelScope:
    """Limits for the requests of some models only, beside the entry's own:
    ``model`` is an exact model name (``"claude-3-opus"``) or a glob with
    ``*``, ``?`` or ``[...]`` (``"gpt-4*"``). A request for a model meets
    the entry's own limits and those of its most specific matching scope (an
    exact name before any glob; among globs, the one with more characters
    that are not wildcards). A scope holds budgets and request and token
    rates, named like the entry's; its budgets follow the entry's calendar.
    A limit left None is no limit of that kind in the scope."""

    model: str
    hourly_usd: float | None = None
    daily_usd: float | None = None
    weekly_usd: float | None = None
    monthly_usd: float | None = None
    requests_per_second: int | None = None
    requests_per_minute: int | None = None
    requests_per_hour: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_hour: int | None = None
    input_tokens_per_minute: int | None = None
    input_tokens_per_hour: int | None = None
    output_tokens_per_minute: int | None = None
    output_tokens_per_hour: int | None = None

    def __repr__(self) -> str:
        """The pattern and the limits set: ``ModelScope('gpt-4*', daily_usd=50.0)``."""
        limits = "".join(f", {n}={getattr(self, n)!r}" for n in _SCOPE_FIELDS if getattr(self, n) is not None)
        return f"ModelScope({self.model!r}{limits})"


#: The limits a model scope may hold: its fields but ``model``.
_SCOPE_FIELDS = tuple(f.name for f in dataclass_fields(ModelScope) if f.name != "model")


class Limits(TypedDict, total=False):
    """The fields of a runtime entry: keyword arguments of ``create_limits``
    and ``update_limits``. A limit left out (or ``None``) is no limit of
    that kind: the subject's config entry does not show through."""

    #: USD budgets over the last hour, 24 hours, 7 days and 30 days (with a
    #: calendar: today, this week, this month).
    hourly_usd: float | None
    daily_usd: float | None
    weekly_usd: float | None
    monthly_usd: float | None
    #: Request and token rates.
    requests_per_second: int | None
    requests_per_minute: int | None
    requests_per_hour: int | None
    tokens_per_minute: int | None
    tokens_per_hour: int | None
    #: Input (prompt) and output (completion) token rates.
    input_tokens_per_minute: int | None
    input_tokens_per_hour: int | None
    output_tokens_per_minute: int | None
    output_tokens_per_hour: int | None
    #: Requests in flight at once.
    max_concurrent: int | None
    #: The name reasons, metrics and the audit trail show instead of the id.
    alias: str | None
    #: When the entry falls away by itself: an aware datetime, or a
    #: timedelta from now.
    expire_time: datetime | timedelta | None
    #: Put the budgets on a calendar; None (or left out) keeps them rolling.
    calendar: Calendar | None
    #: Limits for some models only (``ModelScope``), at most one per
    #: pattern. An update replaces the whole list: give every scope to keep
    #: (``[*entry.model_scopes, ModelScope(...)]``); None or ``[]`` removes
    #: them all.
    model_scopes: Sequence[ModelScope] | None
    #: The entry's own alert thresholds, fractions of each budget in (0, 1]
    #: (``[0.5, 0.8, 0.95]``; at most 8), in place of the config's
    #: ``limits.budgets.alert_thresholds``; its model scopes use them too.
    #: An update replaces the list; None or ``[]`` goes back to the config's.
    alert_thresholds: Sequence[float] | None


_USD_FIELDS = frozenset({"hourly_usd", "daily_usd", "weekly_usd", "monthly_usd"})
_COUNT_FIELDS = frozenset(_KINDS) - _USD_FIELDS
_FIELDS = frozenset(Limits.__annotations__)


@dataclass(frozen=True)
class KeyHash:
    """An API key named by the keyed hash that answers show
    (``SubjectLimits.key_hash``, 32 hex digits) rather than by the key."""

    hash: str


def api_key_hash(key_hash: str) -> KeyHash:
    """The API key whose hash is ``key_hash``, for admin calls."""
    return KeyHash(key_hash)


@dataclass(frozen=True)
class BudgetIncrease:
    """An amount added to one limit of a subject until ``expire_time``
    (``raise_budget``), in the limit's unit (USD for budgets)."""

    kind: Kind
    amount: float
    expire_time: datetime
    reason: str


@dataclass(frozen=True)
class SubjectLimits:
    """The runtime entry of one subject: the limits that apply to it in
    place of its config entry. For an API key, ``subject.id`` is empty and
    ``key_hash`` names it (the key itself is never answered). Pass the
    entry, or ``etag``, back to name the subject and to make a change only
    if nobody changed the entry in between."""

    subject: pb.Subject
    key_hash: str
    hourly_usd: float | None
    daily_usd: float | None
    weekly_usd: float | None
    monthly_usd: float | None
    requests_per_second: int | None
    requests_per_minute: int | None
    requests_per_hour: int | None
    tokens_per_minute: int | None
    tokens_per_hour: int | None
    max_concurrent: int | None
    alias: str
    expire_time: datetime | None
    etag: str
    create_time: datetime | None
    update_time: datetime | None
    #: Temporary increases still active.
    increases: tuple[BudgetIncrease, ...]
    #: The calendar the budgets reset on; None when they roll.
    calendar: Calendar | None = None
    input_tokens_per_minute: int | None = None
    input_tokens_per_hour: int | None = None
    output_tokens_per_minute: int | None = None
    output_tokens_per_hour: int | None = None
    #: Limits for some models only, most specific first (as limitsd
    #: answers them).
    model_scopes: tuple[ModelScope, ...] = ()
    #: The entry's own alert thresholds, ascending; empty when the config's
    #: apply.
    alert_thresholds: tuple[float, ...] = ()


@dataclass(frozen=True)
class LimitState:
    """One limit of a subject after an adjustment or a reset. ``subject``
    names an API key by its key hash. (Where each limit comes from, and how
    much of it is raised, ``LimitsClient.usage`` says: ``source``,
    ``raised``.)"""

    subject: pb.Subject
    kind: Kind
    #: The rolling window; None for ``max_concurrent``.
    window: timedelta | None
    limit: float
    used: float
    remaining: float
    #: When the oldest amount in the window expires; None when it is empty.
    #: For a calendar budget, when its period ends.
    reset_at: datetime | None
    #: For a budget, ``"rolling"`` or ``"calendar"``; None for other limits.
    period: str | None = None
    #: The pattern of the model scope the limit belongs to (``"gpt-4*"``);
    #: None for the subject's own limits.
    model_scope: str | None = None


@dataclass(frozen=True)
class AuditEvent:
    """One admin change. ``actor`` is the token's name (or
    ``cert:<name>``); ``subject`` the alias, an API key's hash or a user's
    or team's id; ``before`` and ``after`` the states parsed from their
    JSON (None when there was none)."""

    time: datetime
    actor: str
    method: str
    subject: str
    before: Any
    after: Any
    reason: str


#: How an admin call names a subject: a ``pb.Subject`` (``api_key(...)``,
#: ``user(...)``, ``team(...)``), an API key's hash, or an entry an answer gave.
SubjectName = Union[pb.Subject, KeyHash, SubjectLimits]


# ---- requests: built the same way for both clients, without I/O ---------------


def _ref(subject: SubjectName) -> apb.SubjectRef:
    if isinstance(subject, KeyHash):
        return apb.SubjectRef(subject=pb.Subject(dimension=pb.DIMENSION_API_KEY), key_hash=subject.hash)
    if isinstance(subject, SubjectLimits):
        if subject.key_hash:
            return apb.SubjectRef(subject=pb.Subject(dimension=subject.subject.dimension), key_hash=subject.key_hash)
        return apb.SubjectRef(subject=subject.subject)
    if isinstance(subject, pb.Subject):
        return apb.SubjectRef(subject=subject)
    raise TypeError(
        f"subject: expected api_key(...), user(...), team(...), api_key_hash(...) or an entry, got {subject!r}"
    )


def _kind(kind: Kind) -> pb.LimitKind:
    try:
        return _KINDS[kind]
    except KeyError:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(_KINDS)}") from None


def _timestamp(what: str, when: datetime | timedelta) -> timestamp_pb2.Timestamp:
    if isinstance(when, timedelta):
        when = datetime.now(timezone.utc) + when
    elif when.tzinfo is None:
        # A naive datetime would be taken as UTC, which datetime.now() is not.
        raise ValueError(f"{what}: give an aware datetime (e.g. datetime.now(timezone.utc) + ...) or a timedelta")
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def _entry(subject: pb.Subject | None, fields: Mapping[str, Any]) -> apb.SubjectLimits:
    """A SubjectLimits message with ``fields`` (``Limits``' keys) set."""
    msg = apb.SubjectLimits(subject=subject)
    for name, value in fields.items():
        if name not in _FIELDS:
            raise TypeError(f"{name!r} is not a field of a runtime entry (one of {', '.join(Limits.__annotations__)})")
        if value is None:
            continue
        if name == "alias":
            msg.alias = value
        elif name == "expire_time":
            msg.expire_time.CopyFrom(_timestamp(name, value))
        elif name == "model_scopes":
            if isinstance(value, (str, ModelScope)) or not isinstance(value, Iterable):
                raise TypeError(f"model_scopes: expected a list of ModelScope(model, ...), got {value!r}")
            msg.model_scopes.extend(_model_scope_message(i, s) for i, s in enumerate(value))
        elif name == "alert_thresholds":
            msg.alert_thresholds.extend(_thresholds(value))
        elif name == "calendar":
            if not isinstance(value, Calendar):
                raise TypeError(f"calendar: expected Calendar(time_zone=...), got {value!r}")
            msg.calendar.CopyFrom(
                apb.BudgetCalendar(
                    time_zone=value.time_zone,
                    week_start=value.week_start,
                    month_anchor_day=value.month_anchor_day,
                )
            )
        elif name in _USD_FIELDS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name}: expected US dollars as a float, got {value!r}")
            setattr(msg, name, float(value))
        else:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name}: expected a whole number, got {value!r}")
            setattr(msg, name, value)
    return msg


def _thresholds(value: Any) -> list[float]:
    """Alert thresholds as floats (limitsd checks their range, naming the
    element)."""
    if isinstance(value, (str, bytes, int, float)) or not isinstance(value, Iterable):
        raise TypeError(f"alert_thresholds: expected a list of fractions such as [0.5, 0.8], got {value!r}")
    out = []
    for i, t in enumerate(value):
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise TypeError(f"alert_thresholds[{i}]: expected a fraction of the budget as a float, got {t!r}")
        out.append(float(t))
    return out


def _model_scope_message(i: int, scope: ModelScope) -> apb.ModelScope:
    """A ModelScope message: the pattern, and the limits the scope sets."""
    if not isinstance(scope, ModelScope):
        raise TypeError(f"model_scopes[{i}]: expected ModelScope(model, daily_usd=...), got {scope!r}")
    limits = {name: getattr(scope, name) for name in _SCOPE_FIELDS}
    try:
        return apb.ModelScope(model=scope.model, limits=_entry(None, limits))
    except TypeError as e:
        raise TypeError(f"model_scopes[{i}].{e}") from None


def _create_request(subject: pb.Subject, reason: str, limits: Mapping[str, Any]) -> apb.CreateSubjectLimitsRequest:
    if not isinstance(subject, pb.Subject):
        raise TypeError(
            "subject: create_limits needs the subject itself (for API keys, the key): api_key(...), user(...), team(...)"
        )
    return apb.CreateSubjectLimitsRequest(subject_limits=_entry(subject, limits), reason=reason)


def _update_request(
    subject: SubjectName, etag: str, allow_missing: bool, reason: str, changes: Mapping[str, Any]
) -> apb.UpdateSubjectLimitsRequest:
    if not changes:
        raise ValueError("update_limits: name at least one field to change (e.g. daily_usd=2.0; None clears it)")
    return apb.UpdateSubjectLimitsRequest(
        subject=_ref(subject),
        subject_limits=_entry(None, changes),
        update_mask=field_mask_pb2.FieldMask(paths=list(changes)),
        etag=etag,
        allow_missing=allow_missing,
        reason=reason,
    )


def _adjust_request(
    subject: SubjectName, usd: float | None, requests: int | None, tokens: int | None, kind: Kind | None, reason: str
) -> apb.AdjustUsageRequest:
    amounts = ((apb.RESOURCE_USD, usd), (apb.RESOURCE_REQUESTS, requests), (apb.RESOURCE_TOKENS, tokens))
    given = [(r, a) for r, a in amounts if a is not None]
    if len(given) != 1:
        raise ValueError("adjust_usage: give exactly one of usd, requests or tokens")
    resource, amount = given[0]
    return apb.AdjustUsageRequest(
        subject=_ref(subject),
        resource=resource,
        amount=float(amount),
        kind=_kind(kind) if kind is not None else pb.LIMIT_KIND_UNSPECIFIED,
        reason=reason,
    )


def _reset_request(subject: SubjectName, kinds: Iterable[Kind], reason: str) -> apb.ResetUsageRequest:
    return apb.ResetUsageRequest(subject=_ref(subject), kinds=[_kind(k) for k in kinds], reason=reason)


def _raise_request(
    subject: SubjectName, kind: Kind, amount: float, until: datetime | timedelta, reason: str
) -> apb.RaiseBudgetRequest:
    return apb.RaiseBudgetRequest(
        subject=_ref(subject), kind=_kind(kind), amount=amount, expire_time=_timestamp("until", until), reason=reason
    )


def _list_request(dimension: Dimension | None, page_size: int, page_token: str) -> apb.ListSubjectLimitsRequest:
    dim = pb.DIMENSION_UNSPECIFIED if dimension is None else _DIMENSIONS[dimension]
    return apb.ListSubjectLimitsRequest(dimension=dim, page_size=page_size, page_token=page_token)


# ---- answers -------------------------------------------------------------------


def _time(msg: Any, name: str) -> datetime | None:
    if not msg.HasField(name):
        return None
    ts: timestamp_pb2.Timestamp = getattr(msg, name)
    return ts.ToDatetime(tzinfo=timezone.utc)


def _optional(msg: apb.SubjectLimits, name: str) -> Any:
    return getattr(msg, name) if msg.HasField(name) else None


def _increase(m: apb.BudgetIncrease) -> BudgetIncrease:
    return BudgetIncrease(
        kind=_KIND_NAMES[m.kind],
        amount=m.amount,
        expire_time=m.expire_time.ToDatetime(tzinfo=timezone.utc),
        reason=m.reason,
    )


def _subject_limits(m: apb.SubjectLimits) -> SubjectLimits:
    return SubjectLimits(
        subject=m.subject,
        key_hash=m.key_hash,
        hourly_usd=_optional(m, "hourly_usd"),
        daily_usd=_optional(m, "daily_usd"),
        weekly_usd=_optional(m, "weekly_usd"),
        monthly_usd=_optional(m, "monthly_usd"),
        requests_per_second=_optional(m, "requests_per_second"),
        requests_per_minute=_optional(m, "requests_per_minute"),
        requests_per_hour=_optional(m, "requests_per_hour"),
        tokens_per_minute=_optional(m, "tokens_per_minute"),
        tokens_per_hour=_optional(m, "tokens_per_hour"),
        input_tokens_per_minute=_optional(m, "input_tokens_per_minute"),
        input_tokens_per_hour=_optional(m, "input_tokens_per_hour"),
        output_tokens_per_minute=_optional(m, "output_tokens_per_minute"),
        output_tokens_per_hour=_optional(m, "output_tokens_per_hour"),
        max_concurrent=_optional(m, "max_concurrent"),
        alias=m.alias,
        expire_time=_time(m, "expire_time"),
        etag=m.etag,
        create_time=_time(m, "create_time"),
        update_time=_time(m, "update_time"),
        increases=tuple(_increase(i) for i in m.increases),
        calendar=_calendar(m.calendar) if m.HasField("calendar") else None,
        model_scopes=tuple(_model_scope(s) for s in m.model_scopes),
        alert_thresholds=tuple(m.alert_thresholds),
    )


def _model_scope(m: apb.ModelScope) -> ModelScope:
    return ModelScope(m.model, **{name: _optional(m.limits, name) for name in _SCOPE_FIELDS})


def _calendar(c: apb.BudgetCalendar) -> Calendar:
    return Calendar(time_zone=c.time_zone, week_start=c.week_start, month_anchor_day=c.month_anchor_day)


_PERIODS = {pb.BUDGET_PERIOD_ROLLING: "rolling", pb.BUDGET_PERIOD_CALENDAR: "calendar"}


def _limit_state(s: pb.LimitStatus) -> LimitState:
    return LimitState(
        subject=s.subject,
        kind=_KIND_NAMES[s.kind],
        window=timedelta(seconds=seconds_of(s.window)) if s.HasField("window") else None,
        limit=s.limit,
        used=s.used,
        remaining=s.remaining,
        reset_at=_time(s, "reset_at"),
        period=_PERIODS.get(s.period),
        model_scope=s.model_scope or None,
    )


def _audit_event(e: apb.AuditEvent) -> AuditEvent:
    return AuditEvent(
        time=e.time.ToDatetime(tzinfo=timezone.utc),
        actor=e.actor,
        method=e.method,
        subject=e.subject,
        before=json.loads(e.before) if e.before else None,
        after=json.loads(e.after) if e.after else None,
        reason=e.reason,
    )


# ---- the clients ---------------------------------------------------------------

# Reads are retried (on UNAVAILABLE and DEADLINE_EXCEEDED); changes never: a
# debit or an increase that reached limitsd and were sent again would count
# twice, and a create or an update with an etag would fail as a conflict
# with itself.
_READ = IDEMPOTENT_RETRY
_WRITE = NO_RETRY


class AdminClient:
    """A blocking client of limitsd's admin API.

    The channel's arguments are ``LimitsClient``'s: ``target``, ``tls``
    (or ``credentials``), ``token`` (a ``read`` token reads, a ``write``
    token also changes), ``metadata``, ``options``, or a ready ``channel``.
    ``timeout`` is each call's deadline in seconds. Reads are retried on
    ``UNAVAILABLE`` and ``DEADLINE_EXCEEDED``; changes never (a debit sent
    twice would count twice).

    Errors are ``LimitsError``: ``UNAUTHENTICATED`` (no token, or an unknown
    one), ``PERMISSION_DENIED`` (a ``read`` token on a change),
    ``UNIMPLEMENTED`` (limitsd has no credential configured: its admin API is
    off), ``INVALID_ARGUMENT`` (``field`` names the field), ``NOT_FOUND`` (no
    runtime entry), ``ALREADY_EXISTS`` (create found one), ``ABORTED`` (the
    etag given is stale), ``FAILED_PRECONDITION`` (the subject lacks the
    limit raised or debited). A call answered with an error changed nothing.
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
        timeout: float = 5.0,
    ):
        self._metadata = call_metadata(metadata, token)
        self._owns_channel = channel is None
        self._channel = sync_channel(target, credentials, tls, options) if channel is None else channel
        self._stub: Any = apb_grpc.LimitsAdminServiceStub(self._channel)  # type: ignore[no-untyped-call]  # generated
        self.timeout = timeout

    def close(self) -> None:
        """Closes the channel, if the client made it."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any, timeout: float | None, policy: RetryPolicy, response: type[R]) -> R:
        return sync_unary(
            getattr(self._stub, method), request, timeout or self.timeout, self._metadata, policy, response
        )

    def get_limits(self, subject: SubjectName, *, timeout: float | None = None) -> SubjectLimits:
        """The runtime entry of ``subject`` (``NOT_FOUND`` when it has none)."""
        req = apb.GetSubjectLimitsRequest(subject=_ref(subject))
        resp = self._call("GetSubjectLimits", req, timeout, _READ, apb.GetSubjectLimitsResponse)
        return _subject_limits(resp.subject_limits)

    def list_limits(
        self, *, dimension: Dimension | None = None, page_size: int = 0, timeout: float | None = None
    ) -> Iterator[SubjectLimits]:
        """Every runtime entry (of one dimension, if given), by dimension then
        id, fetching ``page_size`` at a time (0: limitsd's default) as the
        iteration goes."""
        page_token = ""
        while True:
            req = _list_request(dimension, page_size, page_token)
            page = self._call("ListSubjectLimits", req, timeout, _READ, apb.ListSubjectLimitsResponse)
            yield from (_subject_limits(m) for m in page.subject_limits)
            page_token = page.next_page_token
            if not page_token:
                return

    def create_limits(
        self, subject: pb.Subject, *, reason: str = "", timeout: float | None = None, **limits: Unpack[Limits]
    ) -> SubjectLimits:
        """Creates the runtime entry of ``subject`` (for an API key, named by
        the key), which must have none (else ``ALREADY_EXISTS``): e.g.
        ``create_limits(api_key(k), daily_usd=50.0, alias="acme")``."""
        req = _create_request(subject, reason, limits)
        resp = self._call("CreateSubjectLimits", req, timeout, _WRITE, apb.CreateSubjectLimitsResponse)
        return _subject_limits(resp.subject_limits)

    def update_limits(
        self,
        subject: SubjectName,
        *,
        etag: str = "",
        allow_missing: bool = False,
        reason: str = "",
        timeout: float | None = None,
        **changes: Unpack[Limits],
    ) -> SubjectLimits:
        """Changes the fields given, and only those (a field given as None is
        cleared): ``update_limits(entry, daily_usd=75.0, etag=entry.etag)``.
        With ``etag``, the change is made only if the entry is still at that
        version (else ``ABORTED``: read it again); with ``allow_missing``, an
        entry is created if there is none."""
        req = _update_request(subject, etag, allow_missing, reason, changes)
        resp = self._call("UpdateSubjectLimits", req, timeout, _WRITE, apb.UpdateSubjectLimitsResponse)
        return _subject_limits(resp.subject_limits)

    def delete_limits(
        self, subject: SubjectName, *, etag: str = "", reason: str = "", timeout: float | None = None
    ) -> None:
        """Removes the runtime entry: the subject's config entry (or its
        dimension's default) applies again."""
        req = apb.DeleteSubjectLimitsRequest(subject=_ref(subject), etag=etag, reason=reason)
        self._call("DeleteSubjectLimits", req, timeout, _WRITE, apb.DeleteSubjectLimitsResponse)

    def adjust_usage(
        self,
        subject: SubjectName,
        *,
        usd: float | None = None,
        requests: int | None = None,
        tokens: int | None = None,
        kind: Kind | None = None,
        reason: str,
        timeout: float | None = None,
    ) -> list[LimitState]:
        """Adds to the usage of ``subject`` (exactly one of ``usd``,
        ``requests``, ``tokens``): positive debits, negative credits (a
        refund; never below zero). Every window counting that resource, or
        only ``kind``'s. Answers every limit of the subject afterwards."""
        req = _adjust_request(subject, usd, requests, tokens, kind, reason)
        resp = self._call("AdjustUsage", req, timeout, _WRITE, apb.AdjustUsageResponse)
        return [_limit_state(s) for s in resp.statuses]

    def reset_usage(
        self, subject: SubjectName, *, kinds: Iterable[Kind] = (), reason: str, timeout: float | None = None
    ) -> list[LimitState]:
        """Empties the windows ``kinds`` of ``subject`` (every window when
        none is given); open reservations and leases are kept."""
        req = _reset_request(subject, kinds, reason)
        resp = self._call("ResetUsage", req, timeout, _WRITE, apb.ResetUsageResponse)
        return [_limit_state(s) for s in resp.statuses]

    def raise_budget(
        self,
        subject: SubjectName,
        kind: Kind,
        amount: float,
        *,
        until: datetime | timedelta,
        reason: str,
        timeout: float | None = None,
    ) -> list[BudgetIncrease]:
        """Adds ``amount`` to the limit ``kind`` of ``subject`` until
        ``until`` (an aware datetime, or a timedelta from now), after which
        the increase falls away by itself: ``raise_budget(key, "daily_usd",
        100.0, until=timedelta(days=7), reason="launch week")``. Answers the
        subject's increases still active, this one included."""
        req = _raise_request(subject, kind, amount, until, reason)
        resp = self._call("RaiseBudget", req, timeout, _WRITE, apb.RaiseBudgetResponse)
        return [_increase(i) for i in resp.increases]

    def list_audit_events(self, *, page_size: int = 0, timeout: float | None = None) -> Iterator[AuditEvent]:
        """The audit trail, newest first, fetching ``page_size`` events at a
        time (0: limitsd's default) as the iteration goes."""
        page_token = ""
        while True:
            req = apb.ListAuditEventsRequest(page_size=page_size, page_token=page_token)
            page = self._call("ListAuditEvents", req, timeout, _READ, apb.ListAuditEventsResponse)
            yield from (_audit_event(e) for e in page.events)
            page_token = page.next_page_token
            if not page_token:
                return


class AsyncAdminClient:
    """An asyncio client of limitsd's admin API: ``AdminClient``'s methods,
    arguments, answers and errors, awaited (the two listings are async
    iterators: ``async for e in admin.list_audit_events()``). Create it
    inside the event loop that uses it."""

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
        timeout: float = 5.0,
    ):
        self._metadata = call_metadata(metadata, token)
        self._owns_channel = channel is None
        if channel is None:
            channel = aio_channel(target, credentials, tls, options, interceptors)
        self._channel = channel
        self._stub: Any = apb_grpc.LimitsAdminServiceStub(channel)  # type: ignore[no-untyped-call]  # generated
        self.timeout = timeout

    async def close(self) -> None:
        """Closes the channel, if the client made it."""
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncAdminClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(
        self, method: str, request: Any, timeout: float | None, policy: RetryPolicy, response: type[R]
    ) -> R:
        return await aio_unary(
            getattr(self._stub, method), request, timeout or self.timeout, self._metadata, policy, response
        )

    async def get_limits(self, subject: SubjectName, *, timeout: float | None = None) -> SubjectLimits:
        """See ``AdminClient.get_limits``."""
        req = apb.GetSubjectLimitsRequest(subject=_ref(subject))
        resp = await self._call("GetSubjectLimits", req, timeout, _READ, apb.GetSubjectLimitsResponse)
        return _subject_limits(resp.subject_limits)

    async def list_limits(
        self, *, dimension: Dimension | None = None, page_size: int = 0, timeout: float | None = None
    ) -> AsyncIterator[SubjectLimits]:
        """See ``AdminClient.list_limits``."""
        page_token = ""
        while True:
            req = _list_request(dimension, page_size, page_token)
            page = await self._call("ListSubjectLimits", req, timeout, _READ, apb.ListSubjectLimitsResponse)
            for m in page.subject_limits:
                yield _subject_limits(m)
            page_token = page.next_page_token
            if not page_token:
                return

    async def create_limits(
        self, subject: pb.Subject, *, reason: str = "", timeout: float | None = None, **limits: Unpack[Limits]
    ) -> SubjectLimits:
        """See ``AdminClient.create_limits``."""
        req = _create_request(subject, reason, limits)
        resp = await self._call("CreateSubjectLimits", req, timeout, _WRITE, apb.CreateSubjectLimitsResponse)
        return _subject_limits(resp.subject_limits)

    async def update_limits(
        self,
        subject: SubjectName,
        *,
        etag: str = "",
        allow_missing: bool = False,
        reason: str = "",
        timeout: float | None = None,
        **changes: Unpack[Limits],
    ) -> SubjectLimits:
        """See ``AdminClient.update_limits``."""
        req = _update_request(subject, etag, allow_missing, reason, changes)
        resp = await self._call("UpdateSubjectLimits", req, timeout, _WRITE, apb.UpdateSubjectLimitsResponse)
        return _subject_limits(resp.subject_limits)

    async def delete_limits(
        self, subject: SubjectName, *, etag: str = "", reason: str = "", timeout: float | None = None
    ) -> None:
        """See ``AdminClient.delete_limits``."""
        req = apb.DeleteSubjectLimitsRequest(subject=_ref(subject), etag=etag, reason=reason)
        await self._call("DeleteSubjectLimits", req, timeout, _WRITE, apb.DeleteSubjectLimitsResponse)

    async def adjust_usage(
        self,
        subject: SubjectName,
        *,
        usd: float | None = None,
        requests: int | None = None,
        tokens: int | None = None,
        kind: Kind | None = None,
        reason: str,
        timeout: float | None = None,
    ) -> list[LimitState]:
        """See ``AdminClient.adjust_usage``."""
        req = _adjust_request(subject, usd, requests, tokens, kind, reason)
        resp = await self._call("AdjustUsage", req, timeout, _WRITE, apb.AdjustUsageResponse)
        return [_limit_state(s) for s in resp.statuses]

    async def reset_usage(
        self, subject: SubjectName, *, kinds: Iterable[Kind] = (), reason: str, timeout: float | None = None
    ) -> list[LimitState]:
        """See ``AdminClient.reset_usage``."""
        req = _reset_request(subject, kinds, reason)
        resp = await self._call("ResetUsage", req, timeout, _WRITE, apb.ResetUsageResponse)
        return [_limit_state(s) for s in resp.statuses]

    async def raise_budget(
        self,
        subject: SubjectName,
        kind: Kind,
        amount: float,
        *,
        until: datetime | timedelta,
        reason: str,
        timeout: float | None = None,
    ) -> list[BudgetIncrease]:
        """See ``AdminClient.raise_budget``."""
        req = _raise_request(subject, kind, amount, until, reason)
        resp = await self._call("RaiseBudget", req, timeout, _WRITE, apb.RaiseBudgetResponse)
        return [_increase(i) for i in resp.increases]

    async def list_audit_events(self, *, page_size: int = 0, timeout: float | None = None) -> AsyncIterator[AuditEvent]:
        """See ``AdminClient.list_audit_events``."""
        page_token = ""
        while True:
            req = apb.ListAuditEventsRequest(page_size=page_size, page_token=page_token)
            page = await self._call("ListAuditEvents", req, timeout, _READ, apb.ListAuditEventsResponse)
            for e in page.events:
                yield _audit_event(e)
            page_token = page.next_page_token
            if not page_token:
                return
