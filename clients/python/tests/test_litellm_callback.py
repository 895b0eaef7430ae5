"""The LiteLLM callback's own rules, called in-process with LiteLLM's real
types: how identities become subjects, the default estimate, and what
happens when limitsd cannot decide."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from fastapi import HTTPException
from litellm.proxy._types import UserAPIKeyAuth, hash_token

from limitsd import pb
from limitsd.integrations.litellm import LimitsdCallback, default_estimate, default_subjects


def test_subjects_never_carry_the_raw_key() -> None:
    auth = UserAPIKeyAuth(api_key="sk-raw-secret", user_id="alice", team_id="eng", org_id="acme", key_alias="ci")
    subjects = default_subjects(auth, {})
    assert [(pb.Dimension.Name(s.dimension), s.id) for s in subjects] == [
        ("DIMENSION_API_KEY", hash_token("sk-raw-secret")),
        ("DIMENSION_USER", "alice"),
        ("DIMENSION_TEAM", "eng"),
    ]
    assert all("sk-raw-secret" not in s.id for s in subjects)
    assert default_subjects(auth, {}, api_key_id="alias")[0].id == "ci"


def test_default_estimate_is_prompt_over_four_plus_the_output_allowance() -> None:
    messages = [{"role": "user", "content": "x" * 400}]
    assert default_estimate({"messages": messages, "max_tokens": 100}).tokens > 100
    with_default = default_estimate({"messages": messages})
    assert with_default.tokens >= 100 + 256 and with_default.cost_usd is None
    assert default_estimate({"input": "abcd", "max_completion_tokens": 7}).tokens == 8


def dead_target() -> str:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def pre_call(cb: LimitsdCallback) -> Any:
    auth = UserAPIKeyAuth(api_key="sk-1", user_id="u")
    data = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "litellm_call_id": "c1"}
    return asyncio.run(cb.async_pre_call_hook(auth, None, data, "acompletion"))


def test_limitsd_unavailable_is_503_by_default() -> None:
    with pytest.raises(HTTPException) as info:
        pre_call(LimitsdCallback(dead_target(), options=[("grpc.enable_http_proxy", 0)]))
    assert info.value.status_code == 503


def test_limitsd_unavailable_lets_the_request_through_with_fail_open() -> None:
    data = pre_call(LimitsdCallback(dead_target(), options=[("grpc.enable_http_proxy", 0)], fail_open=True))
    assert data["model"] == "gpt-4" and "limitsd" not in data.get("metadata", {})


def test_calls_without_a_model_pass_untouched() -> None:
    cb = LimitsdCallback(dead_target())
    data = {"messages": []}
    assert asyncio.run(cb.async_pre_call_hook(UserAPIKeyAuth(api_key="sk-1"), None, data, "acompletion")) is data
    assert asyncio.run(cb.async_pre_call_hook(UserAPIKeyAuth(api_key="sk-1"), None, {"model": "m"}, "pass_through_endpoint")) == {"model": "m"}
