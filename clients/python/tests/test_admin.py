"""The admin clients against a real limitsd serving TLS and asking for
tokens: a key's runtime limits enforced at once, a top-up that lets it
through again, the audit trail of both, and each refusal (no token, too
small a scope, a stale etag, bad input) surfaced as ``LimitsError``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import grpc
import pytest

from conftest import CLIENT_CN, DATA_TOKEN, READ_TOKEN, WRITE_TOKEN, Secure
from limitsd import (
    TLS,
    AdminClient,
    AsyncAdminClient,
    AsyncLimitsClient,
    Calendar,
    LimitsClient,
    LimitsError,
    ModelScope,
    api_key,
    api_key_hash,
    pb,
    team,
    user,
)

KEY_ID = "sk-admin-flow-7f3a"
KEY = api_key(KEY_ID)
OPTIONS = [("grpc.enable_http_proxy", 0)]

Start = Callable[..., Secure]


def admin(s: Secure, token: str | None = WRITE_TOKEN, **kw: Any) -> AdminClient:
    return AdminClient(s.target, tls=TLS(ca_cert=s.ca.cert), token=token, options=OPTIONS, **kw)


def limits(s: Secure, **kw: Any) -> LimitsClient:
    return LimitsClient(s.target, tls=TLS(ca_cert=s.ca.cert), options=OPTIONS, timeout=5, **kw)


def allowed(c: LimitsClient, usd: float, subject: pb.Subject = KEY) -> bool:
    return c.check([subject], model="gpt-4", estimated_cost_usd=usd).allowed


def daily(c: LimitsClient, subject: pb.Subject = KEY) -> pb.LimitStatus:
    return next(s for s in c.usage(subject).statuses if s.kind == pb.LIMIT_KIND_BUDGET_DAILY)


def test_a_key_limited_then_topped_up_and_the_audit_trail_shows_both(start_secure: Start) -> None:
    s = start_secure()
    with admin(s) as a, limits(s) as c:
        assert allowed(c, 0.50), "no limit before the runtime entry"

        entry = a.create_limits(KEY, daily_usd=0.10, alias="acme-prod", reason="new customer")
        assert (entry.daily_usd, entry.alias, entry.requests_per_minute) == (0.10, "acme-prod", None)
        assert entry.subject.id == "" and len(entry.key_hash) == 32, "the key is never answered"
        assert entry.etag and entry.create_time is not None
        assert not allowed(c, 0.50), "$0.50 does not fit a daily $0.10"
        st = daily(c)
        assert (st.limit, st.source) == (pytest.approx(0.10), pb.LIMIT_SOURCE_RUNTIME)

        until = datetime.now(timezone.utc) + timedelta(hours=1)
        increases = a.raise_budget(KEY, "daily_usd", 1.00, until=until, reason="launch top-up")
        assert [(i.kind, i.amount, i.reason) for i in increases] == [("daily_usd", 1.0, "launch top-up")]
        assert abs(increases[0].expire_time - until) < timedelta(seconds=1)
        assert allowed(c, 0.50), "allowed again after the top-up"
        st = daily(c)
        assert (st.limit, st.raised) == (pytest.approx(1.10), pytest.approx(1.0))
        assert [i.kind for i in a.get_limits(KEY).increases] == ["daily_usd"]

    with admin(s, READ_TOKEN) as reader:
        events = list(reader.list_audit_events())
    assert [e.method for e in events] == ["RaiseBudget", "CreateSubjectLimits"], "newest first"
    assert {e.actor for e in events} == {"ops"}, "the write token's name"
    assert [e.reason for e in events] == ["launch top-up", "new customer"]
    assert events[0].time >= events[1].time
    assert events[1].before is None and events[1].after is not None
    assert KEY_ID not in repr(events), "a raw key in the audit trail"
    assert WRITE_TOKEN not in repr(events)


def test_a_runtime_entry_puts_budgets_on_a_calendar(start_secure: Start) -> None:
    s = start_secure()
    subject = team("calendar-team")
    with admin(s) as a, limits(s) as c:
        entry = a.create_limits(
            subject,
            daily_usd=2.0,
            weekly_usd=5.0,
            calendar=Calendar(time_zone="Asia/Tokyo", week_start="sunday"),
            reason="budgets reset at midnight in Tokyo",
        )
        assert entry.weekly_usd == 5.0
        assert entry.calendar == Calendar(time_zone="Asia/Tokyo", week_start="sunday", month_anchor_day=1)
        st = daily(c, subject)
        assert st.period == pb.BUDGET_PERIOD_CALENDAR
        # Tokyo has no daylight saving: its midnight is 15:00 UTC.
        assert st.reset_at.seconds % 86_400 == 15 * 3_600
        c.record([subject], model="gpt-4", cost_usd=1.5)
        assert not allowed(c, 1.0, subject), "$1.50 of today's $2 is spent"
        # Taking the calendar away makes the budgets roll again.
        rolled = a.update_limits(entry, calendar=None, etag=entry.etag, reason="back to rolling")
        assert rolled.calendar is None and rolled.weekly_usd == 5.0
        assert daily(c, subject).period == pb.BUDGET_PERIOD_ROLLING
        with pytest.raises(LimitsError) as bad:
            a.update_limits(entry, calendar=Calendar(time_zone="Mars/Olympus"), reason="typo")
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert bad.value.field == "subject_limits.calendar.time_zone"


def test_a_runtime_entry_holds_model_scopes(start_secure: Start) -> None:
    s = start_secure()
    subject = team("scoped-team")
    gpt4 = ModelScope("gpt-4*", daily_usd=1.0, tokens_per_minute=1_000)
    opus = ModelScope("claude-3-opus", requests_per_minute=5)
    with admin(s) as a, limits(s) as c:
        entry = a.create_limits(subject, daily_usd=10.0, model_scopes=[gpt4, opus], reason="per-model budgets")
        assert entry.model_scopes == (opus, gpt4), "most specific (the exact name) first"
        assert entry.daily_usd == 10.0 and entry.tokens_per_minute is None, "the scope's limits are its own"

        # $2 of gpt-4o is over gpt-4*'s $1: denied, and the status says which scope.
        denied = c.check([subject], model="gpt-4o", estimated_cost_usd=2.0)
        assert not denied.allowed
        over = [st for st in denied.statuses if st.exceeded]
        assert [(st.model_scope, st.kind) for st in over] == [("gpt-4*", pb.LIMIT_KIND_BUDGET_DAILY)]
        assert "in model scope 'gpt-4*'" in denied.reason, denied.reason
        # A model no scope matches meets the entry's own $10 only.
        outside = c.check([subject], model="gpt-3.5-turbo", estimated_cost_usd=2.0)
        assert outside.allowed, outside.reason
        assert {st.model_scope for st in outside.statuses} == {""}
        # GetUsage lists the subject's own limits, then every scope's.
        listed = {(st.model_scope, st.kind) for st in c.usage(subject).statuses}
        assert ("gpt-4*", pb.LIMIT_KIND_TOKENS_PER_MINUTE) in listed
        assert ("claude-3-opus", pb.LIMIT_KIND_REQUESTS_PER_MINUTE) in listed
        # An adjustment counts against the subject's own limits (model_scope None).
        states = a.adjust_usage(subject, usd=0.25, reason="billed elsewhere")
        assert [(x.kind, x.model_scope, x.used) for x in states] == [("daily_usd", None, 0.25)]

        # An update of model_scopes replaces the list: keep gpt-4*, at $3.
        kept = a.update_limits(
            entry, model_scopes=[ModelScope("gpt-4*", daily_usd=3.0)], etag=entry.etag, reason="one scope"
        )
        assert kept.model_scopes == (ModelScope("gpt-4*", daily_usd=3.0),)
        assert c.check([subject], model="gpt-4o", estimated_cost_usd=2.0).allowed
        # None removes every scope; the entry's own limits stay.
        none = a.update_limits(kept, model_scopes=None, etag=kept.etag, reason="no scopes")
        assert none.model_scopes == () and none.daily_usd == 10.0

        # A bad glob is refused naming the field; a wrong type, before calling.
        with pytest.raises(LimitsError) as bad:
            a.update_limits(subject, model_scopes=[gpt4, ModelScope("gpt-[4", daily_usd=1.0)], reason="typo")
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert bad.value.field == "subject_limits.model_scopes[1].model"
        with pytest.raises(TypeError, match=r"model_scopes\[0\]\.daily_usd: expected US dollars"):
            a.update_limits(subject, model_scopes=[ModelScope("m", daily_usd="1")])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="expected a list of ModelScope"):
            a.update_limits(subject, model_scopes=gpt4)  # type: ignore[arg-type]
        assert a.get_limits(subject).model_scopes == (), "the refused calls changed nothing"


def test_an_entrys_own_alert_thresholds_and_their_crossings_watched(start_secure: Start) -> None:
    s = start_secure(data_plane_auth=True)
    subject = team("alerting-team")
    with admin(s) as a, limits(s, token=DATA_TOKEN) as c:
        entry = a.create_limits(subject, daily_usd=10.0, alert_thresholds=[0.9, 0.5], reason="warn early")
        assert entry.alert_thresholds == (0.5, 0.9), "ascending"
        assert a.get_limits(subject).alert_thresholds == (0.5, 0.9)
        a.create_limits(KEY, daily_usd=1.0, alert_thresholds=[0.5], reason="a key's")

        # The stream asks for the data plane's token, like every data-plane call.
        with limits(s) as anonymous, pytest.raises(LimitsError) as info:
            anonymous.watch_alerts()
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED

        with c.watch_alerts() as alerts:
            # A watchdog: if no event comes, the stream is closed and next() answers None.
            watchdog = threading.Timer(15, alerts.close)
            watchdog.start()
            try:
                c.record([subject], model="gpt-4", cost_usd=6.0)
                first = next(alerts, None)
                c.record([subject], model="gpt-4", cost_usd=3.5)
                second = next(alerts, None)
                c.record([KEY], model="gpt-4", cost_usd=0.6)
                by_key = next(alerts, None)
            finally:
                watchdog.cancel()
        assert first is not None and second is not None and by_key is not None, "an event within 15 s"
        assert (first.threshold, first.used_usd, first.limit_usd) == (0.5, 6.0, 10.0)
        assert (first.dimension, first.subject, first.model_scope) == (pb.DIMENSION_TEAM, "alerting-team", "")
        assert (first.kind, first.period) == (pb.LIMIT_KIND_BUDGET_DAILY, pb.BUDGET_PERIOD_ROLLING)
        assert len(first.id) == 32 and first.time.seconds > 0
        assert (second.threshold, second.used_usd) == (0.9, 9.5)
        assert second.id != first.id
        assert (by_key.dimension, by_key.threshold) == (pb.DIMENSION_API_KEY, 0.5)
        assert by_key.subject and KEY_ID not in str(by_key), "the key is never sent"
        assert list(alerts) == [], "closed: the iteration is over"

        # A bad fraction is refused naming the element; a wrong type, before calling.
        with pytest.raises(LimitsError) as bad:
            a.update_limits(subject, alert_thresholds=[0.5, 1.5], reason="typo")
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert bad.value.field == "subject_limits.alert_thresholds[1]"
        with pytest.raises(TypeError, match="expected a list of fractions"):
            a.update_limits(subject, alert_thresholds=0.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"alert_thresholds\[0\]: expected a fraction"):
            a.update_limits(subject, alert_thresholds=["0.5"])  # type: ignore[arg-type]
        # An update replaces the list; other fields stay; None or [] goes back to the config's.
        replaced = a.update_limits(subject, alert_thresholds=[0.75], reason="one threshold")
        assert (replaced.alert_thresholds, replaced.daily_usd) == ((0.75,), 10.0)
        cleared = a.update_limits(replaced, alert_thresholds=None, etag=replaced.etag, reason="the config's")
        assert cleared.alert_thresholds == () and cleared.daily_usd == 10.0
        a.update_limits(subject, alert_thresholds=[0.75])
        assert a.update_limits(subject, alert_thresholds=[]).alert_thresholds == ()


def test_the_asyncio_client_watches_alerts(start_secure: Start) -> None:
    s = start_secure()
    tls = TLS(ca_cert=s.ca.cert)
    subject = team("async-alerting")
    with admin(s) as a:
        a.create_limits(subject, daily_usd=2.0, alert_thresholds=[0.25], reason="x")

    async def main() -> pb.AlertEvent:
        async with AsyncLimitsClient(s.target, tls=tls, options=OPTIONS, timeout=5) as c:
            async with await c.watch_alerts() as alerts:
                await c.record([subject], cost_usd=1.0)
                return await asyncio.wait_for(alerts.__anext__(), 15)

    event = asyncio.run(asyncio.wait_for(main(), 30))
    assert (event.subject, event.threshold, event.used_usd, event.limit_usd) == ("async-alerting", 0.25, 1.0, 2.0)


def test_the_asyncio_clients_credit_usage_back(start_secure: Start) -> None:
    s = start_secure()
    tls = TLS(ca_cert=s.ca.cert)

    async def main() -> None:
        async with AsyncAdminClient(s.target, tls=tls, token=WRITE_TOKEN, options=OPTIONS) as a, AsyncLimitsClient(
            s.target, tls=tls, options=OPTIONS, timeout=5
        ) as c:
            await a.create_limits(KEY, daily_usd=0.10, reason="trial")
            await c.record([KEY], cost_usd=0.08)
            assert not (await c.check([KEY], estimated_cost_usd=0.05)).allowed

            states = await a.adjust_usage(KEY, usd=-0.08, reason="refund of a failed batch")
            d = next(x for x in states if x.kind == "daily_usd")
            assert (d.used, d.limit, d.window) == (0.0, pytest.approx(0.10), timedelta(days=1))
            assert (await c.check([KEY], estimated_cost_usd=0.05)).allowed

            await a.update_limits(KEY, daily_usd=0.20, reason="upgrade")
            assert [e.method async for e in a.list_audit_events()] == [
                "UpdateSubjectLimits",
                "AdjustUsage",
                "CreateSubjectLimits",
            ]
            assert [x.daily_usd async for x in a.list_limits()] == [0.20]

    asyncio.run(asyncio.wait_for(main(), 30))


def test_without_a_token_the_admin_api_is_unauthenticated(start_secure: Start) -> None:
    s = start_secure()
    with admin(s, token=None) as a, pytest.raises(LimitsError) as info:
        a.create_limits(KEY, daily_usd=0.10)
    err = info.value
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
    assert "credential is required" in str(err) and str(err).startswith("UNAUTHENTICATED: "), str(err)
    with admin(s, token="not-a-token") as a, pytest.raises(LimitsError) as info:
        list(a.list_limits())
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "unknown token" in info.value.details


def test_a_read_token_reads_but_a_change_is_permission_denied(start_secure: Start) -> None:
    s = start_secure()
    with admin(s, READ_TOKEN) as reader:
        with pytest.raises(LimitsError) as info:
            reader.create_limits(KEY, daily_usd=0.10)
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "auditor has the read scope" in info.value.details, info.value.details
        assert list(reader.list_limits()) == [], "the refused call changed nothing"
        assert list(reader.list_audit_events()) == []


def test_a_stale_etag_is_aborted_and_changes_nothing(start_secure: Start) -> None:
    s = start_secure()
    with admin(s) as a:
        v1 = a.create_limits(KEY, daily_usd=1.0, requests_per_minute=60, reason="first")
        v2 = a.update_limits(v1, daily_usd=2.0, etag=v1.etag, reason="second")
        assert v2.etag != v1.etag
        assert (v2.daily_usd, v2.requests_per_minute) == (2.0, 60), "only the field given changes"
        with pytest.raises(LimitsError) as info:
            a.update_limits(v1, daily_usd=3.0, etag=v1.etag, reason="from a stale read")
        assert info.value.code == grpc.StatusCode.ABORTED
        with pytest.raises(LimitsError) as info:
            a.delete_limits(KEY, etag=v1.etag)
        assert info.value.code == grpc.StatusCode.ABORTED
        now = a.get_limits(KEY)
        assert (now.daily_usd, now.etag) == (2.0, v2.etag)


def test_update_masks_clears_lists_pages_and_deletes(start_secure: Start) -> None:
    s = start_secure()
    with admin(s) as a:
        created = a.create_limits(KEY, daily_usd=1.0, requests_per_minute=60, alias="acme", reason="x")
        # None clears a field; fields not given keep their values.
        cleared = a.update_limits(api_key_hash(created.key_hash), requests_per_minute=None, reason="y")
        assert (cleared.daily_usd, cleared.requests_per_minute, cleared.alias) == (1.0, None, "acme")
        # allow_missing creates, with an expiry.
        u = a.update_limits(user("alice"), hourly_usd=0.5, expire_time=timedelta(days=1), allow_missing=True)
        assert u.hourly_usd == 0.5 and u.expire_time is not None
        assert u.expire_time - datetime.now(timezone.utc) > timedelta(hours=23)
        a.create_limits(team("research"), monthly_usd=25_000.0, max_concurrent=8)
        a.create_limits(team("ml"), tokens_per_minute=100_000)
        everything = list(a.list_limits(page_size=1))
        assert [(e.subject.dimension, e.subject.id) for e in everything] == [
            (pb.DIMENSION_API_KEY, ""),
            (pb.DIMENSION_USER, "alice"),
            (pb.DIMENSION_TEAM, "ml"),
            (pb.DIMENSION_TEAM, "research"),
        ]
        assert [e.subject.id for e in a.list_limits(dimension="team")] == ["ml", "research"]
        a.delete_limits(team("ml"), reason="back to the config")
        with pytest.raises(LimitsError) as info:
            a.get_limits(team("ml"))
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(LimitsError) as info:
            a.create_limits(team("research"), monthly_usd=1.0)
        assert info.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_budget_operations_by_the_keys_hash(start_secure: Start) -> None:
    s = start_secure()
    with admin(s) as a, limits(s) as c:
        entry = a.create_limits(KEY, daily_usd=1.0, tokens_per_minute=1000, reason="x")
        by_hash = api_key_hash(entry.key_hash)
        states = a.adjust_usage(by_hash, usd=0.25, kind="daily_usd", reason="manual charge")
        assert next(x for x in states if x.kind == "daily_usd").used == pytest.approx(0.25)
        assert daily(c).used == pytest.approx(0.25)
        a.adjust_usage(entry, tokens=300, reason="tokens used elsewhere")
        states = a.reset_usage(KEY, kinds=["daily_usd"], reason="abuse cleared")
        used = {x.kind: x.used for x in states}
        assert used["daily_usd"] == 0.0 and used["tokens_per_minute"] == 300.0
        assert {x.limit for x in states} == {1.0, 1000.0}
        with pytest.raises(LimitsError) as info:
            a.raise_budget(KEY, "hourly_usd", 1.0, until=timedelta(hours=1), reason="no hourly limit")
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_bad_input_names_the_field(start_secure: Start) -> None:
    s = start_secure()
    with admin(s) as a:
        with pytest.raises(LimitsError) as info:
            a.create_limits(KEY, daily_usd=-1.0)
        err = info.value
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT
        assert err.field == "subject_limits.daily_usd" and err.details.startswith("subject_limits.daily_usd")
        with pytest.raises(LimitsError) as info:
            a.adjust_usage(KEY, usd=1.0, reason="")
        assert info.value.field == "reason"
        # What the client can tell by itself, it says before calling.
        with pytest.raises(ValueError, match="exactly one of usd, requests or tokens"):
            a.adjust_usage(KEY, usd=1.0, tokens=5, reason="x")
        with pytest.raises(ValueError, match="aware datetime"):
            a.raise_budget(KEY, "daily_usd", 1.0, until=datetime.now(), reason="x")
        with pytest.raises(TypeError, match="yearly_usd"):
            a.create_limits(KEY, yearly_usd=1.0)  # type: ignore[call-arg]
        with pytest.raises(ValueError, match="at least one field"):
            a.update_limits(KEY)


def test_a_client_certificate_is_a_credential(start_secure: Start) -> None:
    s = start_secure()
    tls = TLS(ca_cert=s.ca.cert, client_cert=s.client.cert, client_key=s.client.key)
    with AdminClient(s.target, tls=tls, options=OPTIONS) as a:
        a.create_limits(team("research"), monthly_usd=100.0, reason="by certificate")
        assert [e.actor for e in a.list_audit_events()] == [f"cert:{CLIENT_CN}"]


def test_tls_verifies_the_server_by_the_name_given(start_secure: Start, tmp_path: Any) -> None:
    s = start_secure()
    # The certificate lists localhost and 127.0.0.1: another name fails the
    # handshake, and naming one it lists passes.
    wrong = TLS(ca_cert=s.ca.cert, server_name="limitsd.example.com")
    with LimitsClient(s.target, tls=wrong, options=OPTIONS, timeout=2) as c, pytest.raises(LimitsError) as info:
        c.check([KEY], estimated_cost_usd=0.1)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    right = TLS(ca_cert=s.ca.cert.read_bytes(), server_name="localhost")
    with LimitsClient(s.target, tls=right, options=OPTIONS, timeout=5) as c:
        assert allowed(c, 0.1)
    # A client that does not trust the CA is refused; so is plaintext.
    from pki import CA

    other = CA(tmp_path / "other", "another CA")
    with LimitsClient(s.target, tls=TLS(ca_cert=other.cert), options=OPTIONS, timeout=2) as c:
        with pytest.raises(LimitsError) as info:
            c.check([KEY])
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    with LimitsClient(s.target, options=OPTIONS, timeout=2) as c, pytest.raises(LimitsError):
        c.check([KEY])
    with pytest.raises(ValueError, match="cannot read"):
        TLS(ca_cert=tmp_path / "missing.crt").credentials()
    with pytest.raises(ValueError, match="together"):
        TLS(client_cert=s.client.cert)


def test_the_data_plane_sends_a_token_when_limitsd_asks_for_one(start_secure: Start) -> None:
    s = start_secure(data_plane_auth=True)
    with limits(s) as c, pytest.raises(LimitsError) as info:
        c.check([KEY], estimated_cost_usd=0.1)
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    asked = []

    def token() -> str:
        asked.append(1)
        return DATA_TOKEN

    with limits(s, token=token) as c:
        assert allowed(c, 0.1)
        with c.guard([KEY], model="gpt-4", estimated_cost_usd=0.1, concurrency=False) as g:
            g.record(10, 10, cost_usd=0.05)
    assert len(asked) == 3, "the token function is called for every call"


def test_without_a_credential_configured_the_admin_api_is_off(start_limitsd: Callable[[str], Any]) -> None:
    d = start_limitsd("limits:\n  storage: { backend: memory }\n")
    with AdminClient(d.grpc_addr, token=WRITE_TOKEN, options=OPTIONS) as a, pytest.raises(LimitsError) as info:
        a.get_limits(KEY)
    assert info.value.code == grpc.StatusCode.UNIMPLEMENTED
    assert "admin API is off" in info.value.details
