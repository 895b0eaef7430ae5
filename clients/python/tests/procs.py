"""Real processes for the tests: limitsd and a LiteLLM proxy, each on
127.0.0.1 with a port of 0, found by the address each one logs."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 15.0, interval: float = 0.02) -> T:
    """Polls ``probe`` until it returns something truthy; fails with ``what``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def limitsd_bin() -> Path:
    raw = os.environ.get("LIMITSD_BIN", "target/debug/limitsd")
    path = Path(raw) if os.path.isabs(raw) else REPO / raw
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"no limitsd binary at {path}: build it or set LIMITSD_BIN")
    return path


class _Process:
    """A child process whose output lines are read into a queue and a log file."""

    def __init__(self, argv: list[str], workdir: Path, log_name: str, env: dict[str, str] | None = None):
        self.log = workdir / log_name
        self._log_file = self.log.open("w")
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log_file.write(line)
            self._log_file.flush()
            self._lines.put(line)
        self._lines.put(None)

    def wait_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(left, 0.01)) if left > 0 else None
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise RuntimeError(
                    f"{self.log.name}: no line matching {pattern.pattern!r} within {timeout}s "
                    f"(exit status {self.proc.returncode}); log tail:\n{self.log.read_text()[-4000:]}"
                )
            m = pattern.search(line)
            if m:
                return m

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        # The pump writes the last lines, then sees the end of the output.
        self._pump_thread.join(timeout=5)
        if not self._pump_thread.is_alive():
            self._log_file.close()


class Limitsd(_Process):
    """limitsd on 127.0.0.1:0 with ``config_yaml``; ``grpc_addr`` is where it listens."""

    LISTENING = re.compile(r"^limitsd listening (.*)$")

    def __init__(self, config_yaml: str, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "limits.yaml").write_text(config_yaml)
        super().__init__(
            [
                str(limitsd_bin()),
                "--config",
                "limits.yaml",
                "--grpc-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
            ],
            workdir,
            "limitsd.log",
        )
        m = self.wait_line(self.LISTENING, 20)
        tokens = dict(t.split("=", 1) for t in m.group(1).split() if "=" in t)
        self.grpc_addr = tokens["grpc"]


class LiteLLMProxy(_Process):
    """``litellm --config`` on 127.0.0.1:0 from this venv; ``url`` is its base URL.

    The environment keeps LiteLLM off the network: the model cost map is
    the copy LiteLLM ships, telemetry is off, and no proxy variable applies.
    """

    RUNNING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")

    def __init__(self, config_yaml: str, workdir: Path, env: dict[str, str] | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.yaml").write_text(config_yaml)
        full_env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        full_env.update(
            {
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_TELEMETRY": "False",
                "NO_PROXY": "*",
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(workdir),
            }
        )
        full_env.update(env or {})
        litellm = Path(sys.executable).with_name("litellm")
        super().__init__(
            [str(litellm), "--config", "config.yaml", "--host", "127.0.0.1", "--port", "0", "--telemetry", "False"],
            workdir,
            "litellm.log",
            full_env,
        )
        self.url = self.wait_line(self.RUNNING, 90).group(1)
