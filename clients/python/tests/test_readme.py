"""The package README's examples run as they are, against a real limitsd:
plaintext, or, for the examples that read ``LIMITSD_CA_CERT``, one that
serves TLS and asks for tokens (given a write token in ``LIMITSD_TOKEN``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import WRITE_TOKEN, Secure
from procs import Limitsd

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)

BODY = """
  budgets:
    by_api_key:
      "sk-example": { daily: 10.00 }
  rate_limits:
    by_api_key:
      "sk-example": { max_concurrent: 4 }
  enforcement:
    action: downgrade
    model_downgrades: { "gpt-4": "gpt-4-turbo" }
  pricing:
    "gpt-4": { input_per_1k: 0.03, output_per_1k: 0.06 }
    "gpt-4-turbo": { input_per_1k: 0.01, output_per_1k: 0.03 }
"""
CONFIG = "limits:" + BODY + "  storage: { backend: memory }\n"


def test_the_readme_has_examples() -> None:
    assert len(EXAMPLES) >= 6
    assert sum("LIMITSD_CA_CERT" in e for e in EXAMPLES) >= 3, "the TLS and admin examples"


@pytest.mark.parametrize("n", range(len(EXAMPLES)))
def test_readme_example_runs(
    n: int, start_limitsd: Callable[[str], Limitsd], start_secure: Callable[..., Secure], tmp_path: Path
) -> None:
    script = tmp_path / f"example_{n}.py"
    script.write_text(EXAMPLES[n])
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    if "LIMITSD_CA_CERT" in EXAMPLES[n]:
        s = start_secure(BODY)
        env.update(LIMITSD_TARGET=s.target, LIMITSD_CA_CERT=str(s.ca.cert), LIMITSD_TOKEN=WRITE_TOKEN)
    else:
        env["LIMITSD_TARGET"] = start_limitsd(CONFIG).grpc_addr
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    if "print(" in EXAMPLES[n]:
        assert out.stdout.strip(), "the example printed nothing"
        assert not out.stdout.startswith("429"), out.stdout
