#!/usr/bin/env python3
"""Starts limitsd on a deployment config, the way the pod runs it, and checks
what Kubernetes will ask of it.

  smoke_config.py --limitsd BIN --config limits.yaml

The config is used as is (its storage backend included), except that the
store directory is redirected to a temp dir with
MERCATOR_LIMITS_STORAGE_SLED_PATH and the listeners are moved to
127.0.0.1:0 with --grpc-addr / --metrics-addr. Then:

- limitsd prints its listening line (within 20 s);
- grpc.health.v1 answers SERVING for "" (the liveness probe) and for
  mercator.limits.v1.LimitsService (the startup and readiness probes);
- GET /metrics answers 200 (the Prometheus scrape);
- after SIGTERM, limitsd exits 0 well within terminationGracePeriodSeconds.

`limitsd --check-config` validates the file; this shows the binary can
actually run with it (e.g. that its storage backend is available).
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

START_S = 20.0
STOP_S = 25.0  # under the pods' terminationGracePeriodSeconds (30)
SERVICE = "mercator.limits.v1.LimitsService"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limitsd", required=True)
    ap.add_argument("--config", required=True, type=Path)
    args = ap.parse_args()

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="limitsd-smoke-") as tmp:
        env = dict(os.environ)
        env["MERCATOR_LIMITS_STORAGE_SLED_PATH"] = str(Path(tmp) / "limits.sled")
        env["MERCATOR_LIMITS_STORAGE_SQLITE_PATH"] = str(Path(tmp) / "limits.db")
        log_path = Path(tmp) / "limitsd.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [str(Path(args.limitsd).resolve()), "--config", str(args.config.resolve()),
                 "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"],
                cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True,
            )
            lines: queue.Queue[str | None] = queue.Queue()

            def pump() -> None:
                for line in proc.stdout:
                    lines.put(line)
                lines.put(None)

            threading.Thread(target=pump, daemon=True).start()
            addrs = None
            deadline = time.monotonic() + START_S
            while addrs is None and time.monotonic() < deadline:
                try:
                    line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
                except queue.Empty:
                    break
                if line is None:
                    break
                if line.startswith("limitsd listening"):
                    addrs = dict(t.split("=", 1) for t in line.split()[2:] if "=" in t)
            try:
                if addrs is None:
                    problems.append(f"limitsd did not start on {args.config} (exit status {proc.poll()})")
                else:
                    print(f"limitsd started on {args.config}: {' '.join(f'{k}={v}' for k, v in addrs.items())}")
                    with grpc.insecure_channel(addrs["grpc"], options=[("grpc.enable_http_proxy", 0)]) as ch:
                        health = health_pb2_grpc.HealthStub(ch)
                        for service in ("", SERVICE):
                            try:
                                r = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5,
                                                 wait_for_ready=True)
                                status = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
                            except grpc.RpcError as e:
                                status = f"{e.code().name}: {e.details()}"
                            print(f"  grpc.health.v1 Check({service!r}): {status}")
                            if status != "SERVING":
                                problems.append(f"health of {service!r} is {status}, not SERVING")
                    if "metrics" not in addrs:
                        problems.append("no metrics= address on the listening line")
                    else:
                        try:
                            with urllib.request.urlopen(f"http://{addrs['metrics']}/metrics", timeout=5) as r:
                                print(f"  GET /metrics: {r.status}")
                                if r.status != 200:
                                    problems.append(f"GET /metrics answered {r.status}")
                        except OSError as e:
                            problems.append(f"GET /metrics failed: {e}")
            finally:
                if proc.poll() is None:
                    started = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
                    try:
                        code = proc.wait(timeout=STOP_S)
                        print(f"  SIGTERM: exited {code} after {time.monotonic() - started:.1f} s")
                        if code != 0:
                            problems.append(f"limitsd exited {code} after SIGTERM")
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                        problems.append(f"limitsd did not exit within {STOP_S} s of SIGTERM")
        if problems:
            print("  limitsd log (tail):")
            for line in log_path.read_text().splitlines()[-15:]:
                print(f"    {line}")
    for p in problems:
        print(f"  - {p}")
    print(f"smoke_config: {'FAILED' if problems else 'ok'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
