"""Fixtures for the Python client tests.

The client is generated from proto/ at test time (python -m grpc_tools.protoc
into gen/, which is gitignored), exactly as a gateway team would generate it.
Each test starts the real limitsd binary on 127.0.0.1:0 with its own config
and reads the bound addresses from the line limitsd prints on stdout:

    limitsd listening grpc=HOST:PORT metrics=HOST:PORT

The binary is $LIMITSD_BIN, default target/debug/limitsd under the repository
root (scripts/test-clients builds it).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
PROTO_DIR = REPO / "proto"
GEN_DIR = HERE / "gen"
START_TIMEOUT_S = 20.0


def _generate_stubs() -> None:
    """protoc every .proto under proto/ into gen/ (messages, gRPC stubs and
    type stubs). The well-known types (google/protobuf/*.proto) come from
    grpc_tools' bundled include directory."""
    import importlib.resources

    from grpc_tools import protoc

    GEN_DIR.mkdir(exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    # Only our own package: vendored google/* or grpc/* protos, if proto/
    # carries any, are already shipped by protobuf, googleapis-common-protos
    # and grpcio.
    protos = [p for p in protos if p.startswith("mercator/")]
    assert protos, f"no mercator/*.proto under {PROTO_DIR}"
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={GEN_DIR}",
        f"--pyi_out={GEN_DIR}",
        f"--grpc_python_out={GEN_DIR}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")


def pytest_configure(config: pytest.Config) -> None:
    _generate_stubs()
    sys.path.insert(0, str(GEN_DIR))


@pytest.fixture(scope="session")
def pb():
    from mercator.limits.v1 import limits_pb2

    return limits_pb2


@pytest.fixture(scope="session")
def pb_grpc():
    from mercator.limits.v1 import limits_pb2_grpc

    return limits_pb2_grpc


def limitsd_bin() -> Path:
    raw = os.environ.get("LIMITSD_BIN", "target/debug/limitsd")
    path = Path(raw)
    if not path.is_absolute():
        path = REPO / path
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"limitsd binary not found at {path}: build it with "
            "`cargo build -p limits-server --bin limitsd` or set LIMITSD_BIN",
            pytrace=False,
        )
    return path


class Limitsd:
    """A running limitsd, stopped (SIGTERM, then SIGKILL) by stop()."""

    def __init__(self, config_yaml: str, workdir: Path):
        self.workdir = workdir
        self.config = workdir / "limits.yaml"
        self.config.write_text(config_yaml)
        self.log = workdir / "limitsd.log"
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen(
            [
                str(limitsd_bin()),
                "--config", str(self.config),
                "--grpc-addr", "127.0.0.1:0",
                "--metrics-addr", "127.0.0.1:0",
            ],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
        )
        self.addrs = self._wait_for_listening_line()
        self.grpc_addr = self.addrs["grpc"]

    def _wait_for_listening_line(self) -> dict[str, str]:
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            for line in self.proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            left = deadline - time.monotonic()
            try:
                line = lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                line = None
            if line is None or left <= 0:
                self.stop()
                pytest.fail(
                    f"limitsd did not print its listening line within {START_TIMEOUT_S}s "
                    f"(exit status {self.proc.returncode}); log:\n{self.log.read_text()[-3000:]}",
                    pytrace=False,
                )
            if line.startswith("limitsd listening"):
                # Parse key=value tokens: grpc= is always there; metrics= too
                # once limitsd exports metrics.
                tokens = dict(t.split("=", 1) for t in line.split()[2:] if "=" in t)
                assert "grpc" in tokens, line
                return tokens

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self._log_file.close()


@pytest.fixture
def start_limitsd(tmp_path):
    """Returns start(config_yaml) -> Limitsd; every limitsd started is
    stopped at the end of the test."""
    started: list[Limitsd] = []

    def start(config_yaml: str) -> Limitsd:
        workdir = tmp_path / f"limitsd-{len(started)}"
        workdir.mkdir()
        d = Limitsd(config_yaml, workdir)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def connect(pb_grpc):
    """Returns connect(limitsd) -> LimitsServiceStub over a plaintext channel,
    closed at the end of the test."""
    import grpc

    channels = []

    def connect(d: Limitsd):
        # No proxy for loopback, whatever the environment says.
        ch = grpc.insecure_channel(d.grpc_addr, options=[("grpc.enable_http_proxy", 0)])
        grpc.channel_ready_future(ch).result(timeout=10)
        channels.append(ch)
        return pb_grpc.LimitsServiceStub(ch)

    yield connect
    for ch in channels:
        ch.close()
