"""limitsd as the budget and rate-limit backend of a LiteLLM proxy.

Name the ready instance in the proxy's config, with limitsd's address in the
environment (``LIMITSD_TARGET=127.0.0.1:50051``)::

    litellm_settings:
      callbacks: limitsd.integrations.litellm.callback

or build your own ``LimitsdCallback(...)`` in a module beside the config and
name that (``callbacks: my_limits.callback``).

For every model call the callback maps LiteLLM's key, user and team onto
limitsd subjects, takes a concurrency slot, checks with a reservation
(denying with LiteLLM's own HTTP 429 error and ``Retry-After``), switches
the model when limitsd downgrades the request, records the actual usage and
cost LiteLLM computed when the call succeeds, settles zero when it fails,
and always releases the slot. Requests it holds nothing for (the model
listing, a key without subjects) pass untouched.

What it relies on in LiteLLM: ``async_pre_call_hook`` (which may raise
``HTTPException`` and may set ``data["model"]``), ``litellm_call_id``, which
follows a request into ``async_log_success_event`` (with ``response_cost``
and the response's ``usage``) and ``async_post_call_failure_hook`` (which
the proxy calls once for a failed request, after the router's retries; a
deployment's own failure event is not used, since a retry or a fallback may
still succeed), and ``async_post_call_response_headers_hook`` to add
limitsd's headers to the answer. A client that disconnects fires no hook of
its own: the proxy finishes the call and the success event settles it; if
nothing ever comes, the reservation and the slot expire after their TTLs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
from fastapi import HTTPException
from litellm.integrations.custom_logger import CustomLogger

from limitsd._channel import TLS, Token
from limitsd._common import LimitExceeded, LimitsError, Metadata, api_key, team, user
from limitsd._proto import limits_pb2 as pb
from limitsd.aio import AsyncLimitsClient

log = logging.getLogger("limitsd.litellm")

#: The call types that run a model and are charged (both spellings LiteLLM uses).
MODEL_CALL_TYPES = frozenset(
    {
        "completion",
        "acompletion",
        "text_completion",
        "atext_completion",
        "embeddings",
        "aembedding",
        "responses",
        "aresponses",
        "anthropic_messages",
        "image_generation",
        "aimage_generation",
    }
)


@dataclass(frozen=True)
class Estimate:
    """What a request is expected to use, checked (and held) before it runs.
    ``cost_usd=None`` lets limitsd price ``tokens`` from its pricing table
    (at the model's higher per-token price)."""

    tokens: int
    cost_usd: float | None = None


def default_estimate(data: dict[str, Any], default_output_tokens: int = 256) -> Estimate:
    """A token estimate from the request alone, with no tokenizer: the
    prompt's length in characters over four, plus ``max_tokens`` (or
    ``max_completion_tokens``, else ``default_output_tokens``)."""
    prompt = data.get("messages") or data.get("input") or data.get("prompt") or ""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, default=str)
    out = data.get("max_tokens") or data.get("max_completion_tokens") or default_output_tokens
    try:
        out_tokens = max(0, int(out))
    except (TypeError, ValueError):
        out_tokens = default_output_tokens
    return Estimate(tokens=math.ceil(len(text) / 4) + out_tokens)


def default_subjects(auth: Any, data: dict[str, Any], api_key_id: Literal["token", "alias"] = "token") -> list[pb.Subject]:
    """LiteLLM's identity as limitsd subjects: the key, its user and its team.

    The API key subject is LiteLLM's own id for the key (``token``, the
    SHA-256 of the key that LiteLLM stores and shows; never the raw key), or
    with ``api_key_id="alias"`` the key's alias when it has one. LiteLLM's
    organisation has no limitsd dimension yet and is not sent.
    """
    subjects: list[pb.Subject] = []
    key_id = None
    if api_key_id == "alias":
        key_id = getattr(auth, "key_alias", None)
    key_id = key_id or getattr(auth, "token", None)
    if key_id:
        subjects.append(api_key(str(key_id)))
    if getattr(auth, "user_id", None):
        subjects.append(user(str(auth.user_id)))
    if getattr(auth, "team_id", None):
        subjects.append(team(str(auth.team_id)))
    return subjects


@dataclass
class _Inflight:
    subjects: list[pb.Subject]
    reservation_id: str
    lease_id: str
    model: str
    expires: float
    headers: dict[str, str] = field(default_factory=dict)


class LimitsdCallback(CustomLogger):
    """The LiteLLM proxy callback. Every argument is optional.

    - ``target``: limitsd's ``host:port`` (default ``$LIMITSD_TARGET``, else
      ``127.0.0.1:50051``); ``tls``, ``credentials``, ``token``,
      ``metadata``, ``options`` as for ``AsyncLimitsClient``; or a ready
      ``client``.
    - ``subjects(auth, data)``: the subjects of a request, from LiteLLM's
      ``UserAPIKeyAuth`` and the request body (default
      ``default_subjects``); ``api_key_id`` picks the key's id there.
    - ``estimate(data)``: the ``Estimate`` checked and held (default
      ``default_estimate``).
    - ``concurrency``: take a slot (subjects with ``max_concurrent``).
    - ``reservation_ttl`` / ``lease_ttl``: seconds a hold or slot lives if
      its request never finishes (default: limitsd's configuration).
    - ``fail_open``: when limitsd cannot decide (``UNAVAILABLE``), let the
      request through unlimited instead of answering 503.
    - ``check_timeout``: seconds each check may take (give queue mode at
      least limitsd's ``queue_timeout``).
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        client: AsyncLimitsClient | None = None,
        tls: TLS | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: Token | None = None,
        metadata: Metadata = (),
        options: Sequence[tuple[str, Any]] = (),
        subjects: Callable[[Any, dict[str, Any]], list[pb.Subject]] | None = None,
        api_key_id: Literal["token", "alias"] = "token",
        estimate: Callable[[dict[str, Any]], Estimate] | None = None,
        concurrency: bool = True,
        reservation_ttl: float | None = None,
        lease_ttl: float | None = None,
        fail_open: bool = False,
        check_timeout: float = 1.0,
    ) -> None:
        super().__init__()
        self._target = target
        self._client = client
        self._tls = tls
        self._credentials = credentials
        self._token = token
        self._metadata = metadata
        self._options = options
        self._subjects = subjects or (lambda auth, data: default_subjects(auth, data, api_key_id))
        self._estimate = estimate or default_estimate
        self.concurrency = concurrency
        self.reservation_ttl = reservation_ttl
        self.lease_ttl = lease_ttl
        self.fail_open = fail_open
        self.check_timeout = check_timeout
        # Requests between their check and their settlement, by litellm_call_id,
        # oldest first; an entry older than any hold it names is dropped.
        self._inflight: OrderedDict[str, _Inflight] = OrderedDict()
        self._forget_after = max(reservation_ttl or 600.0, lease_ttl or 600.0) + 60.0

    @property
    def client(self) -> AsyncLimitsClient:
        """The limitsd client, made on first use inside the proxy's event loop."""
        if self._client is None:
            target = self._target or os.environ.get("LIMITSD_TARGET") or "127.0.0.1:50051"
            self._client = AsyncLimitsClient(
                target,
                tls=self._tls,
                credentials=self._credentials,
                token=self._token,
                metadata=self._metadata,
                options=self._options,
                timeout=self.check_timeout,
            )
        return self._client

    def _forget_expired(self) -> None:
        now = time.monotonic()
        while self._inflight:
            call_id, entry = next(iter(self._inflight.items()))
            if entry.expires > now:
                break
            del self._inflight[call_id]

    # ---- before the model call -------------------------------------------

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str
    ) -> dict[str, Any]:
        if call_type not in MODEL_CALL_TYPES or not data.get("model"):
            return data
        subjects = self._subjects(user_api_key_dict, data)
        if not subjects:
            return data
        self._forget_expired()
        call_id = data.get("litellm_call_id")
        if not call_id:
            import uuid

            call_id = data["litellm_call_id"] = str(uuid.uuid4())
        model = str(data["model"])
        est = self._estimate(data)
        lease_id = ""
        try:
            if self.concurrency:
                lease = await self.client.acquire(subjects, ttl=self.lease_ttl)
                if not lease.acquired:
                    raise LimitExceeded.from_acquire(lease)
                lease_id = lease.lease_id
            try:
                d = await self.client.check(
                    subjects,
                    model=model,
                    estimated_tokens=est.tokens,
                    estimated_cost_usd=est.cost_usd,
                    reserve=True,
                    reservation_ttl=self.reservation_ttl,
                )
            except BaseException:
                await self._release(lease_id)
                raise
            if not d.allowed:
                await self._release(lease_id)
                raise LimitExceeded.from_check(d)
        except LimitExceeded as denied:
            # LiteLLM's own limiters answer 429 with an HTTPException; the
            # proxy turns it into its usual OpenAI-style error body.
            raise HTTPException(status_code=429, detail=denied.reason, headers=denied.headers) from None
        except LimitsError as err:
            if self.fail_open and err.code == grpc.StatusCode.UNAVAILABLE:
                log.warning("limitsd unavailable, request let through unlimited (fail_open): %s", err.details)
                return data
            raise HTTPException(status_code=503, detail=f"limits service could not decide: {err.code.name}") from None

        served = d.downgrade_to or model
        if d.downgrade_to:
            data["model"] = d.downgrade_to
        headers = dict(d.headers)
        self._inflight[call_id] = _Inflight(
            subjects, d.reservation_id, lease_id, served, time.monotonic() + self._forget_after, headers
        )
        metadata = data.setdefault("metadata", {})
        if isinstance(metadata, dict):
            # Visible to the proxy's loggers: what was decided, nothing secret.
            metadata["limitsd"] = {
                "action": pb.Action.Name(d.action),
                "model_requested": model,
                "model": served,
                "alert": d.alert,
                "headers": headers,
            }
        return data

    async def async_post_call_response_headers_hook(
        self,
        data: dict[str, Any],
        user_api_key_dict: Any,
        response: Any,
        request_headers: dict[str, str] | None = None,
        litellm_call_info: dict[str, Any] | None = None,
    ) -> dict[str, str] | None:
        metadata = data.get("metadata")
        if isinstance(metadata, dict) and isinstance(metadata.get("limitsd"), dict):
            headers = metadata["limitsd"].get("headers")
            if isinstance(headers, dict):
                return {str(k): str(v) for k, v in headers.items()}
        return None

    # ---- after it ----------------------------------------------------------

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        entry = self._inflight.pop(str(kwargs.get("litellm_call_id")), None)
        if entry is None:
            return
        usage = getattr(response_obj, "usage", None)
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = kwargs.get("response_cost")
        try:
            await self.client.record(
                entry.subjects,
                reservation_id=entry.reservation_id,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cost_usd=float(cost) if cost is not None else None,
                model=entry.model,
                provider=str(kwargs.get("custom_llm_provider") or ""),
            )
        except LimitsError as err:
            log.warning("limitsd: recording a call's usage failed (its hold expires by itself): %s", err)
        finally:
            await self._release(entry.lease_id)

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        entry = self._inflight.pop(str(request_data.get("litellm_call_id")), None)
        if entry is None:
            return
        try:
            await self.client.record(
                entry.subjects, reservation_id=entry.reservation_id, cost_usd=0.0, model=entry.model
            )
        except LimitsError as err:
            log.warning("limitsd: settling a failed call failed (its hold expires by itself): %s", err)
        finally:
            await self._release(entry.lease_id)

    async def _release(self, lease_id: str) -> None:
        if not lease_id:
            return
        try:
            await self.client.release(lease_id)
        except LimitsError as err:
            log.warning("limitsd: releasing a slot failed (it expires by itself): %s", err)


#: The instance a proxy config names: ``limitsd.integrations.litellm.callback``,
#: configured from ``$LIMITSD_TARGET`` when it first runs.
callback = LimitsdCallback()
