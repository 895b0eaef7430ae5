"""The main README's "Try it" for LiteLLM runs as written: its limits.yaml
and litellm.yaml, the ready callback configured from LIMITSD_TARGET, and the
request its curl line sends."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import limitsd
from limitsd import LimitsClient, pb
from procs import REPO, Limitsd, LiteLLMProxy, wait_for

SECTION = REPO.joinpath("README.md").read_text().split("## Using limitsd as LiteLLM's budget backend", 1)[1]
BLOCKS = {m.group(1): m.group(0)[len("```yaml\n") : -len("```")] for m in re.finditer(r"```yaml\n# (\S+)[^\n]*\n.*?```", SECTION, re.S)}


def test_the_readme_try_it_runs(tmp_path: Path) -> None:
    assert {"limits.yaml", "litellm.yaml"} <= BLOCKS.keys(), BLOCKS.keys()
    master = re.search(r"master_key: (\S+)", BLOCKS["litellm.yaml"])
    assert master
    d = Limitsd(BLOCKS["limits.yaml"], tmp_path / "limitsd")  # the helper binds port 0 over the file's address
    try:
        proxy = LiteLLMProxy(BLOCKS["litellm.yaml"], tmp_path / "proxy", env={"LIMITSD_TARGET": d.grpc_addr})
        try:
            r = httpx.post(
                f"{proxy.url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {master.group(1)}"},
                json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
                timeout=30,
                trust_env=False,
            )
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == "hello from gpt-4o"
            assert r.headers["x-budget-limit"] == "1.00"
            with LimitsClient(d.grpc_addr, options=[("grpc.enable_http_proxy", 0)], timeout=5) as c:
                # Without a database every request is LiteLLM's master key,
                # under the id the README names.
                key = limitsd.api_key("litellm_proxy_master_key")

                def charged() -> bool:
                    u = c.usage(key)
                    daily = next(s for s in u.statuses if s.kind == pb.LIMIT_KIND_BUDGET_DAILY)
                    cost = float(r.headers["x-litellm-response-cost"])
                    return not u.reservations and not u.leases and abs(daily.used - cost) <= 1e-9

                wait_for("the call to be charged to the master key", charged)
        finally:
            proxy.stop()
    finally:
        d.stop()
