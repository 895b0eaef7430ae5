#!/usr/bin/env python3
"""Checks that the Grafana dashboard only queries metrics limitsd exports.

Every metric name (and every label it filters, groups or names in a legend)
used by the dashboard's queries must appear in a real scrape of limitsd's
/metrics endpoint. The scrape comes from one of:

  --limitsd BIN        start BIN on 127.0.0.1:0 with a small config, drive a
                       few gRPC calls (so labelled counters exist), reload its
                       config once well and once badly, then scrape it;
  --metrics-url URL    scrape a running limitsd;
  --metrics-file FILE  read a saved scrape (Prometheus text format), for
                       offline testing.

With --rules FILE, the metric names used by the alerting rules are also
looked up; those are reported but only fail the run with --strict-rules,
since some counters (store errors) only appear once the event happens.

--self-test checks the checker itself on synthetic scrapes and needs nothing
else. Exit status: 0 when everything is found, 1 when something is missing,
2 on a usage or environment error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DASHBOARD = REPO / "deploy" / "grafana" / "limitsd-dashboard.json"
PROTO_DIR = REPO / "proto"

# Every wait below is bounded by this.
DEADLINE_S = 20.0

# ---------------------------------------------------------------------------
# PromQL: metric names and labels a query uses
# ---------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME = re.compile(r"(?<![A-Za-z0-9_:.$])([A-Za-z_:][A-Za-z0-9_:]*)")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
# label_values(LABEL) or label_values(SELECTOR, LABEL): the label is last.
_LABEL_VALUES = re.compile(r"label_values\((?:.*,)?\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)")
_LEGEND = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

METRIC_PREFIX = "mercator_"


@dataclass
class Use:
    """What one query asks of the scrape."""

    where: str
    expr: str
    metrics: set[str] = field(default_factory=set)
    # metric -> [(label, op, value)]
    matchers: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    # labels that must exist on at least one of `metrics`
    labels: set[str] = field(default_factory=set)


def parse_query(expr: str, where: str, legend: str = "") -> Use:
    use = Use(where=where, expr=expr)
    strings = [m.span() for m in _STRING.finditer(expr)]

    def in_string(pos: int) -> bool:
        return any(a <= pos < b for a, b in strings)

    for m in _NAME.finditer(expr):
        name = m.group(1)
        if not name.startswith(METRIC_PREFIX) or in_string(m.start()):
            continue
        use.metrics.add(name)
        rest = expr[m.end():].lstrip()
        if rest.startswith("{"):
            body = rest[1:rest.find("}")] if "}" in rest else rest[1:]
            use.matchers.setdefault(name, []).extend(_MATCHER.findall(body))
    for m in _GROUPING.finditer(expr):
        use.labels.update(x.strip() for x in m.group(1).split(",") if x.strip())
    for m in _LABEL_VALUES.finditer(expr):
        use.labels.add(m.group(1))
    use.labels.update(_LEGEND.findall(legend))
    return use


def dashboard_uses(dashboard: dict) -> list[Use]:
    uses = []

    def walk(panels: list[dict]) -> None:
        for p in panels:
            for t in p.get("targets", []) or []:
                expr = t.get("expr")
                if expr:
                    where = f'panel "{p.get("title", "?")}" ({t.get("refId", "?")})'
                    uses.append(parse_query(expr, where, t.get("legendFormat", "")))
            walk(p.get("panels", []) or [])

    walk(dashboard.get("panels", []))
    for v in dashboard.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and isinstance(q, str) and q:
            uses.append(parse_query(q, f'variable "${v.get("name")}"'))
    return uses


def rules_uses(path: Path) -> list[Use]:
    import yaml  # PyYAML; installed with kubernetes-validate

    doc = yaml.safe_load(path.read_text())
    uses = []
    for g in doc.get("groups", []):
        for r in g.get("rules", []):
            name = r.get("alert") or r.get("record") or "?"
            uses.append(parse_query(str(r.get("expr", "")), f'rule "{name}"'))
    return uses


# ---------------------------------------------------------------------------
# The scrape
# ---------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+\S+")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass
class Scrape:
    families: dict[str, str] = field(default_factory=dict)  # name -> type
    samples: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.samples or name in self.families

    def labels_of(self, name: str) -> set[str]:
        out: set[str] = set()
        for labels in self.samples.get(name, []):
            out.update(labels)
        return out

    def values_of(self, name: str, label: str) -> set[str]:
        return {s[label] for s in self.samples.get(name, []) if label in s}


def parse_scrape(text: str) -> Scrape:
    scrape = Scrape()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                scrape.families[parts[2]] = parts[3]
            continue
        m = _SAMPLE.match(line)
        if m:
            labels = dict(_LABEL.findall(m.group(3) or ""))
            scrape.samples.setdefault(m.group(1), []).append(labels)
    return scrape


# ---------------------------------------------------------------------------
# Comparing
# ---------------------------------------------------------------------------


def compare(uses: list[Use], scrape: Scrape) -> list[str]:
    """Returns one line per problem; empty when every use is satisfied."""
    problems = []
    for use in uses:
        present = set()
        for name in sorted(use.metrics):
            if not scrape.has(name):
                problems.append(f"MISSING metric {name}\n    used by {use.where}: {one_line(use.expr)}")
                continue
            present.add(name)
            have = scrape.labels_of(name)
            for label, op, value in use.matchers.get(name, []):
                if label == "__name__":
                    continue
                if label not in have:
                    problems.append(
                        f"MISSING label {name}{{{label}}} (the metric has: {', '.join(sorted(have)) or 'no labels'})"
                        f"\n    used by {use.where}: {one_line(use.expr)}"
                    )
                elif op == "=" and "$" not in value and value not in scrape.values_of(name, label):
                    seen = ", ".join(sorted(scrape.values_of(name, label)))
                    problems.append(
                        f'MISSING value {name}{{{label}="{value}"}} (seen: {seen})'
                        f"\n    used by {use.where}: {one_line(use.expr)}"
                    )
        if present:
            have = set().union(*(scrape.labels_of(n) for n in present))
            for label in sorted(use.labels - have):
                problems.append(
                    f"MISSING label {label} on {', '.join(sorted(present))} (they have: {', '.join(sorted(have))})"
                    f"\n    used by {use.where}: {one_line(use.expr)}"
                )
    return problems


def one_line(expr: str) -> str:
    return " ".join(expr.split())


def report(title: str, uses: list[Use], scrape: Scrape) -> list[str]:
    names = sorted(set().union(*(u.metrics for u in uses))) if uses else []
    print(f"{title}: {len(uses)} queries using {len(names)} metric names")
    for n in names:
        print(f"  {'ok     ' if scrape.has(n) else 'MISSING'} {n}")
    problems = compare(uses, scrape)
    for p in problems:
        print(f"  {p}")
    return problems


# ---------------------------------------------------------------------------
# Driving a real limitsd
# ---------------------------------------------------------------------------

CONFIG = """\
limits:
  budgets:
    alert_threshold: 0.5
    by_api_key:
      "dash-key":
        alias: dashboard-check
        hourly: 50.00
        daily: 100.00
        monthly: 1000.00
    by_user:
      "dash-user":
        daily: 1.00
  rate_limits:
    by_api_key:
      "dash-key":
        requests_per_second: 2
        tokens_per_minute: 100000
        max_concurrent: 1
  enforcement:
    action: block
  storage:
    backend: memory
{extra}"""


def generate_stubs(out: Path) -> None:
    from grpc_tools import protoc  # grpcio-tools
    import importlib.resources

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
            str(PROTO_DIR / "mercator" / "limits" / "v1" / "limits.proto")]
    if protoc.main(args) != 0:
        raise SystemExit(f"check_dashboard: protoc failed on {PROTO_DIR}")


class Limitsd:
    def __init__(self, binary: str, workdir: Path):
        self.config = workdir / "limits.yaml"
        self.config.write_text(CONFIG.format(extra=""))
        self.proc = subprocess.Popen(
            [binary, "--config", str(self.config), "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"],
            cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.addrs = self._read_addrs()

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))

    def _read_addrs(self) -> dict[str, str]:
        box: dict[str, dict[str, str]] = {}

        def read() -> None:
            for line in self.proc.stdout:
                if line.startswith("limitsd listening"):
                    box["addrs"] = dict(t.split("=", 1) for t in line.split()[2:] if "=" in t)
                    return

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(DEADLINE_S)
        if "addrs" not in box:
            self.stop()
            tail = "\n".join(self.stderr[-20:])
            raise SystemExit(f"check_dashboard: limitsd did not print its listening line\n{tail}")
        # Keep draining stdout so the child never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        return box["addrs"]

    def reload(self, text: str) -> None:
        self.config.write_text(text)
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def drive(grpc_addr: str, stubs: Path) -> None:
    """A few calls that make every labelled series exist: allowed and denied
    checks (rate limit and budget), usage, an alert, leases."""
    sys.path.insert(0, str(stubs))
    import grpc
    from mercator.limits.v1 import limits_pb2 as pb
    from mercator.limits.v1 import limits_pb2_grpc as pbg

    key = pb.Subject(dimension=pb.DIMENSION_API_KEY, id="dash-key")
    usr = pb.Subject(dimension=pb.DIMENSION_USER, id="dash-user")
    with grpc.insecure_channel(grpc_addr) as ch:
        grpc.channel_ready_future(ch).result(timeout=DEADLINE_S)
        s = pbg.LimitsServiceStub(ch)
        t = 5.0
        for _ in range(3):  # 2 per second: the third hits the rate limit
            s.CheckLimits(pb.CheckLimitsRequest(subjects=[key], model="gpt-4", estimated_tokens=100,
                                                estimated_cost_usd=0.01), timeout=t)
        s.RecordUsage(pb.RecordUsageRequest(subjects=[key, usr], request_tokens=10, response_tokens=5,
                                            cost_usd=1.0, provider="openai", model="gpt-4"), timeout=t)
        # dash-user's daily budget is spent: a budget hit.
        s.CheckLimits(pb.CheckLimitsRequest(subjects=[usr], model="gpt-4", estimated_cost_usd=0.01), timeout=t)
        # Over the alert threshold of dash-key's hourly budget.
        s.RecordUsage(pb.RecordUsageRequest(subjects=[key], cost_usd=30.0, model="gpt-4"), timeout=t)
        lease = s.AcquireConcurrent(pb.AcquireConcurrentRequest(subjects=[key]), timeout=t)
        s.AcquireConcurrent(pb.AcquireConcurrentRequest(subjects=[key]), timeout=t)  # full
        s.GetUsage(pb.GetUsageRequest(subject=key), timeout=t)
        # The lease stays held so the concurrency gauge is non-zero at scrape
        # time.
        if not lease.acquired:
            raise SystemExit("check_dashboard: AcquireConcurrent was refused on an idle key")
        other = s.AcquireConcurrent(pb.AcquireConcurrentRequest(subjects=[usr]), timeout=t)
        s.ReleaseConcurrent(pb.ReleaseConcurrentRequest(lease_id=other.lease_id), timeout=t)


def scrape_url(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def scrape_limitsd(binary: str) -> str:
    with tempfile.TemporaryDirectory(prefix="limitsd-dash-") as tmp:
        tmp = Path(tmp)
        stubs = tmp / "gen"
        stubs.mkdir()
        generate_stubs(stubs)
        d = Limitsd(binary, tmp)
        try:
            print(f"limitsd started: {' '.join(f'{k}={v}' for k, v in d.addrs.items())}")
            if "metrics" not in d.addrs:
                raise SystemExit(
                    "check_dashboard: limitsd printed no metrics= address on its listening line, so it has no "
                    "metrics endpoint yet: every metric the dashboard uses is missing.\n"
                    f"  dashboard metrics: {', '.join(sorted(all_metrics()))}"
                )
            drive(d.addrs["grpc"], stubs)
            # A good reload, then a bad one: the reload counter gets both results.
            d.reload(CONFIG.format(extra="# reloaded\n"))
            time.sleep(0.5)
            d.reload("limits:\n  enforcement:\n    action: not-an-action\n")
            url = f"http://{d.addrs['metrics']}/metrics"
            text = ""
            started = time.monotonic()
            while time.monotonic() - started < 5.0:
                try:
                    text = scrape_url(url)
                except OSError as e:
                    raise SystemExit(f"check_dashboard: cannot scrape {url}: {e}")
                if 'result="failure"' in text:
                    break
                time.sleep(0.2)
            d.reload(CONFIG.format(extra=""))
            return text
        finally:
            d.stop()


def all_metrics() -> set[str]:
    dash = json.loads(DEFAULT_DASHBOARD.read_text())
    return set().union(*(u.metrics for u in dashboard_uses(dash)))


# ---------------------------------------------------------------------------
# Self-test
# ---------------------------------------------------------------------------


def synthetic_scrape(uses: list[Use], drop: str | None = None) -> str:
    lines = []
    for use in uses:
        for name in use.metrics:
            if name == drop:
                continue
            labels = {lab: "x" for lab in use.labels}
            for m_name, ms in use.matchers.items():
                if m_name == name:
                    labels.update({lab: val for lab, op, val in ms if op == "=" and "$" not in val})
                    labels.update({lab: "x" for lab, op, val in ms if lab not in labels})
            body = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{body}}} 1")
    return "\n".join(lines) + "\n"


def self_test(dashboard: dict) -> int:
    uses = dashboard_uses(dashboard)
    names = set().union(*(u.metrics for u in uses))
    assert names, "the dashboard uses no mercator_ metrics"
    full = parse_scrape(synthetic_scrape(uses))
    assert compare(uses, full) == [], compare(uses, full)
    for drop in sorted(names):
        problems = compare(uses, parse_scrape(synthetic_scrape(uses, drop=drop)))
        assert any(f"MISSING metric {drop}" in p for p in problems), drop
    # A wrong label value and a missing label are caught.
    bad = parse_scrape(synthetic_scrape(uses).replace('window="daily"', 'window="24h"'))
    assert any('window="daily"' in p for p in compare(uses, bad))
    u = parse_query('sum by (action) (rate(mercator_x_total{identifier=~"$identifier"}[5m]))', "t", "{{action}}")
    assert u.metrics == {"mercator_x_total"} and u.labels == {"action"}
    assert compare([u], parse_scrape('mercator_x_total{identifier="a"} 1\n'))  # no `action` label
    assert not compare([u], parse_scrape('mercator_x_total{identifier="a",action="block"} 1\n'))
    # Names inside strings are not metrics.
    u = parse_query('label_values({__name__=~"mercator_limits_.*"}, identifier)', "t")
    assert u.metrics == set() and u.labels == {"identifier"}
    # Exposition parsing: TYPE lines, labels with escapes, histograms.
    s = parse_scrape('# TYPE mercator_h histogram\nmercator_h_bucket{le="0.1",op="a\\"b"} 3\nmercator_h_count 3\n')
    assert s.has("mercator_h") and s.has("mercator_h_bucket") and s.labels_of("mercator_h_bucket") == {"le", "op"}
    print(f"check_dashboard self-test: ok ({len(names)} metric names)")
    return 0


# ---------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dashboard", type=Path, default=DEFAULT_DASHBOARD)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--limitsd", metavar="BIN", help="start this limitsd binary and scrape it")
    src.add_argument("--metrics-url", metavar="URL", help="scrape a running limitsd, e.g. http://127.0.0.1:9090/metrics")
    src.add_argument("--metrics-file", type=Path, metavar="FILE", help="a saved scrape (Prometheus text format)")
    ap.add_argument("--rules", type=Path, help="also look up the metrics of this Prometheus rules file")
    ap.add_argument("--strict-rules", action="store_true", help="fail when a rule's metric is not in the scrape")
    ap.add_argument("--save-scrape", type=Path, metavar="FILE", help="write the scrape here")
    ap.add_argument("--self-test", action="store_true", help="test this checker on synthetic scrapes and exit")
    args = ap.parse_args()

    try:
        dashboard = json.loads(args.dashboard.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"check_dashboard: cannot read the dashboard {args.dashboard}: {e}", file=sys.stderr)
        return 2
    if args.self_test:
        return self_test(dashboard)

    if args.metrics_file:
        text = args.metrics_file.read_text()
        origin = str(args.metrics_file)
    elif args.metrics_url:
        text = scrape_url(args.metrics_url)
        origin = args.metrics_url
    elif args.limitsd:
        if not os.access(args.limitsd, os.X_OK):
            print(f"check_dashboard: {args.limitsd} is not an executable", file=sys.stderr)
            return 2
        text = scrape_limitsd(str(Path(args.limitsd).resolve()))
        origin = f"a live {args.limitsd}"
    else:
        ap.error("give one of --limitsd, --metrics-url, --metrics-file or --self-test")
    if args.save_scrape:
        args.save_scrape.write_text(text)

    scrape = parse_scrape(text)
    exported = sorted(n for n in scrape.families if n.startswith(METRIC_PREFIX))
    print(f"scrape of {origin}: {len(exported)} {METRIC_PREFIX}* metric families: {', '.join(exported) or 'none'}")

    problems = report(f"dashboard {args.dashboard.name}", dashboard_uses(dashboard), scrape)
    rule_problems = []
    if args.rules:
        rule_problems = report(f"rules {args.rules.name}", rules_uses(args.rules), scrape)
        if rule_problems and not args.strict_rules:
            print("  (rules: reported only; some counters appear only once their event happens)")

    failed = bool(problems) or (args.strict_rules and bool(rule_problems))
    print(f"check_dashboard: {'FAILED' if failed else 'ok'}: "
          f"{len(problems)} dashboard problem(s), {len(rule_problems)} rule problem(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
