"""limitsd as the budget backend of a real LiteLLM proxy.

One limitsd and one ``litellm --config`` proxy run for the module, both on
127.0.0.1 with port 0; the proxy loads the plug-in
(``limitsd.integrations.litellm``) from ``litellm_settings.callbacks`` and
its identities from ``general_settings.custom_auth`` (without a database
that is how LiteLLM knows keys, users and teams). Every model deployment
answers with ``mock_response``: nothing leaves the machine. The tests speak
the proxy's OpenAI-compatible HTTP API, as a gateway's clients would.

Money in these tests is in binary fractions (a token costs 2**-10 USD on
"big"), so that LiteLLM's float arithmetic and limitsd's integer
nano-dollars agree exactly: the mock's usage is always 10 prompt and 20
completion tokens, so a "big" call costs 30 * 2**-10 = $0.029296875 in both.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported

import limitsd
from limitsd import LimitsClient, pb
from procs import Limitsd, LiteLLMProxy, wait_for

TOKEN_BIG = 2.0**-10  # USD per token on "big"
TOKEN_SMALL = 2.0**-20  # and on "small"
CALL_BIG = 30 * TOKEN_BIG  # one mock call: 10 + 20 tokens
CALL_SMALL = 30 * TOKEN_SMALL
BURST = 50  # concurrent requests
FITS = 20  # of which the budget fits this many

KEYS = {
    # bearer key -> (user, team); the limitsd subjects are LiteLLM's hash of
    # the key (its "token"), the user and the team.
    "sk-daily": ("dana", "eng"),
    "sk-burst": ("bo", "eng"),
    "sk-down": ("dee", "eng"),
    "sk-fail": ("finn", "eng"),
    "sk-slow": ("sam", "eng"),
    "sk-stream": ("stu", "eng"),
}

AUTH_PY = f"""
from fastapi import HTTPException
from litellm.proxy._types import UserAPIKeyAuth

KEYS = {KEYS!r}


async def user_api_key_auth(request, api_key):
    if api_key not in KEYS:
        raise HTTPException(status_code=401, detail="unknown key")
    user_id, team_id = KEYS[api_key]
    return UserAPIKeyAuth(api_key=api_key, user_id=user_id, team_id=team_id)
"""

# The mock's usage is fixed (10 + 20 tokens), so the estimate is exact: see
# the module's docstring. A real deployment keeps the default estimate.
HOOK_PY = """
from limitsd.integrations.litellm import Estimate, LimitsdCallback

callback = LimitsdCallback(estimate=lambda data: Estimate(tokens=30), reservation_ttl=120, lease_ttl=120)
"""


def model_list(budget_usd: float | None = None) -> str:
    """The deployments; ``budget_usd`` puts LiteLLM's own per-deployment
    ``max_budget`` on "big" instead."""
    budget = f"\n      max_budget: {budget_usd!r}\n      budget_duration: 1d" if budget_usd is not None else ""
    return f"""
model_list:
  - model_name: big
    litellm_params:
      model: openai/gpt-4
      api_key: sk-not-used
      mock_response: "hello from big"{budget}
    model_info: {{ input_cost_per_token: {TOKEN_BIG!r}, output_cost_per_token: {TOKEN_BIG!r} }}
  - model_name: small
    litellm_params:
      model: openai/gpt-3.5-turbo
      api_key: sk-not-used
      mock_response: "hello from small"
    model_info: {{ input_cost_per_token: {TOKEN_SMALL!r}, output_cost_per_token: {TOKEN_SMALL!r} }}
  - model_name: broken
    litellm_params:
      model: openai/gpt-4
      api_key: sk-not-used
      mock_response: "litellm.InternalServerError"
  - model_name: slow
    litellm_params:
      model: openai/gpt-4
      api_key: sk-not-used
      mock_response: "hello, slowly"
      mock_delay: 5
    model_info: {{ input_cost_per_token: {TOKEN_BIG!r}, output_cost_per_token: {TOKEN_BIG!r} }}
"""


PROXY_CONFIG = model_list() + """
litellm_settings:
  callbacks: limits_hook.callback
general_settings:
  master_key: sk-master-not-used
  custom_auth: auth.user_api_key_auth
"""


def limitsd_config() -> str:
    from litellm.proxy._types import hash_token

    budgets = {
        "sk-daily": 3 * CALL_BIG,
        "sk-burst": FITS * CALL_BIG,
        # Two "big" calls, then room for "small" only.
        "sk-down": 2 * CALL_BIG + 0.0014,
        "sk-fail": 1.0,
        "sk-slow": 1.0,
        "sk-stream": 1.0,
    }
    keys = "".join(
        f'    "{hash_token(k)}": {{ alias: {k[3:]}-key, daily: {v!r}, max_concurrent: {BURST + 10} }}\n'
        for k, v in budgets.items()
    )
    big, small = 1000 * TOKEN_BIG, 1000 * TOKEN_SMALL
    return f"""limits:
  by_api_key:
{keys}  enforcement:
    action: downgrade
    model_downgrades: {{ big: small }}
  pricing:
    big: {{ input_per_1k: {big!r}, output_per_1k: {big!r} }}
    slow: {{ input_per_1k: {big!r}, output_per_1k: {big!r} }}
    small: {{ input_per_1k: {small!r}, output_per_1k: {small!r} }}
  storage: {{ backend: memory }}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Limitsd, LiteLLMProxy]]:
    base = tmp_path_factory.mktemp("litellm")
    d = Limitsd(limitsd_config(), base / "limitsd")
    workdir = base / "proxy"
    workdir.mkdir()
    (workdir / "auth.py").write_text(AUTH_PY)
    (workdir / "limits_hook.py").write_text(HOOK_PY)
    try:
        proxy = LiteLLMProxy(PROXY_CONFIG, workdir, env={"LIMITSD_TARGET": d.grpc_addr})
    except BaseException:
        d.stop()
        raise
    yield d, proxy
    proxy.stop()
    d.stop()


@pytest.fixture(scope="module")
def limits(stack: tuple[Limitsd, LiteLLMProxy]) -> Iterator[LimitsClient]:
    with LimitsClient(stack[0].grpc_addr, options=[("grpc.enable_http_proxy", 0)], timeout=5) as c:
        yield c


@pytest.fixture(scope="module")
def url(stack: tuple[Limitsd, LiteLLMProxy]) -> str:
    return stack[1].url


def key_subject(k: str) -> pb.Subject:
    from litellm.proxy._types import hash_token

    return limitsd.api_key(hash_token(k))


def chat(url: str, key: str, model: str = "big", **body: Any) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], **body},
        timeout=30,
        trust_env=False,
    )


def settled(limits: LimitsClient, key: str) -> bool:
    """No open reservation and no live lease left on the key."""
    u = limits.usage(key_subject(key))
    return not u.reservations and not u.leases


def spent(limits: LimitsClient, key: str) -> float:
    u = limits.usage(key_subject(key))
    return next(s.used for s in u.statuses if s.kind == pb.LIMIT_KIND_BUDGET_DAILY)


def cost_of(r: httpx.Response) -> float:
    return float(r.headers["x-litellm-response-cost"])


def test_requests_pass_until_the_daily_budget_is_spent_then_429(url: str, limits: LimitsClient) -> None:
    costs = []
    for i in range(3):
        r = chat(url, "sk-daily")
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "hello from big"
        assert float(r.headers["x-budget-limit"]) == 3 * CALL_BIG, "limitsd's headers are on the answer"
        costs.append(cost_of(r))
        wait_for("the call to be settled", lambda: settled(limits, "sk-daily"))
    assert spent(limits, "sk-daily") == sum(costs) == 3 * CALL_BIG

    r = chat(url, "sk-daily")
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) >= 1
    error = r.json()["error"]
    assert "daily budget exceeded" in error["message"] and error["code"] == "429"
    assert "sk-daily" not in r.text, "the key is never shown"
    assert settled(limits, "sk-daily"), "a denied request holds nothing"


def burst(url: str, key: str, n: int) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, trust_env=False) as http:
            body = {"model": "big", "messages": [{"role": "user", "content": "hi"}]}
            return await asyncio.gather(
                *(http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body) for _ in range(n))
            )

    return asyncio.run(go())


def test_concurrent_requests_admit_exactly_what_the_budget_fits(
    url: str, limits: LimitsClient, figures: dict[str, Any]
) -> None:
    responses = burst(url, "sk-burst", BURST)
    codes = sorted(r.status_code for r in responses)
    admitted = [r for r in responses if r.status_code == 200]
    figures["limitsd_admitted"] = len(admitted)
    assert len(admitted) == FITS, codes
    assert codes.count(429) == BURST - FITS, codes
    assert all("retry-after" in r.headers for r in responses if r.status_code == 429)
    wait_for("every admitted call to be settled", lambda: settled(limits, "sk-burst"))
    reported = sum(cost_of(r) for r in admitted)
    figures["limitsd_spent"] = spent(limits, "sk-burst")
    assert spent(limits, "sk-burst") == reported == FITS * CALL_BIG, "GetUsage is the sum the proxy reported"


def test_litellm_own_deployment_budget_on_the_same_burst(
    tmp_path: Path, limits: LimitsClient, figures: dict[str, Any]
) -> None:
    """The same burst against LiteLLM alone, with limitsd off and LiteLLM's
    own ``max_budget`` on the deployment set to what fits 20 calls: the
    figure the README quotes next to limitsd's."""
    budget = FITS * CALL_BIG
    proxy = LiteLLMProxy(
        model_list(budget_usd=budget) + "general_settings:\n  master_key: sk-litellm-only\n", tmp_path / "alone"
    )
    try:
        responses = burst(proxy.url, "sk-litellm-only", BURST)
    finally:
        proxy.stop()
    admitted = [r for r in responses if r.status_code == 200]
    figures["litellm_admitted"] = len(admitted)
    figures["litellm_spent"] = sum(cost_of(r) for r in admitted)
    figures["budget"] = budget
    # Not an assertion on LiteLLM's behaviour (it may change): the figure
    # is reported; it must only be a real run of the burst.
    assert all(r.status_code in (200, 429) for r in responses), [r.text for r in responses if r.status_code >= 500]


def test_a_spent_model_budget_downgrades_to_the_cheaper_model(url: str, limits: LimitsClient) -> None:
    served = []
    costs = []
    for _ in range(3):
        r = chat(url, "sk-down")
        assert r.status_code == 200, r.text
        served.append((r.headers["x-litellm-model-group"], r.json()["choices"][0]["message"]["content"]))
        costs.append(cost_of(r))
        wait_for("the call to be settled", lambda: settled(limits, "sk-down"))
    assert served == [("big", "hello from big"), ("big", "hello from big"), ("small", "hello from small")]
    assert costs == [CALL_BIG, CALL_BIG, CALL_SMALL]
    assert spent(limits, "sk-down") == pytest.approx(sum(costs), abs=1e-9)


def test_a_failed_upstream_call_leaves_no_hold_and_no_slot(url: str, limits: LimitsClient) -> None:
    r = chat(url, "sk-fail", model="broken")
    assert r.status_code == 500, r.text
    wait_for("the failed call to be settled", lambda: settled(limits, "sk-fail"))
    assert spent(limits, "sk-fail") == 0.0


def test_a_client_that_disconnects_is_still_settled(url: str, limits: LimitsClient) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as http:
            call = asyncio.create_task(
                http.post(
                    "/v1/chat/completions",
                    headers={"Authorization": "Bearer sk-slow"},
                    json={"model": "slow", "messages": [{"role": "user", "content": "hi"}]},
                )
            )
            await asyncio.to_thread(
                wait_for, "the request to be admitted", lambda: limits.usage(key_subject("sk-slow")).reservations
            )
            call.cancel()  # the client goes away mid-call
            with pytest.raises(asyncio.CancelledError):
                await call

    asyncio.run(go())
    u = limits.usage(key_subject("sk-slow"))
    assert len(u.reservations) == 1 and len(u.leases) == 1, "still running upstream"
    wait_for("the abandoned call to be settled", lambda: settled(limits, "sk-slow"), timeout=20)
    assert spent(limits, "sk-slow") == CALL_BIG, "what the proxy's call used is charged"


def test_a_streamed_call_is_charged_when_it_ends(url: str, limits: LimitsClient) -> None:
    r = chat(url, "sk-stream", stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200, r.text
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert text == "hello from big"
    cost = next(c["usage"]["cost"] for c in chunks if c.get("usage"))
    wait_for("the stream to be settled", lambda: settled(limits, "sk-stream"))
    # limitsd rounds each charge up to the nano-dollar.
    assert spent(limits, "sk-stream") == pytest.approx(cost, abs=1e-9), "the streamed usage LiteLLM reported is charged"
