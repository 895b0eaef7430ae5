#!/usr/bin/env python3
"""Checks the rendered Kubernetes manifests for what limitsd needs.

Schema validity is kubernetes-validate's job; this checks the deployment
choices that a schema cannot see and that are easy to lose in an edit:

  check_manifests.py --overlay sidecar RENDERED.yaml [--extract-config OUT]

- the limitsd container: --config /etc/limitsd/limits.yaml, gRPC probes
  (grpc.health.v1) on 50051, ports 50051 and 9090, resources, the hardened
  securityContext (uid 65532);
- the config mounted as a whole ConfigMap directory (no subPath: hot reload);
- the store at /var/lib/limitsd: an emptyDir (sidecar) or a PVC (standalone);
  none in the redis overlay, whose environment switches the store to Redis;
- terminationGracePeriodSeconds 30 and the prometheus.io scrape annotations;
- the ConfigMap's limits.yaml: sled at /var/lib/limitsd/limits.sled, gRPC on
  0.0.0.0:50051, metrics on 0.0.0.0:9090;
- standalone: one replica, Recreate, a Service with grpc and metrics ports;
- redis: several replicas, no local store, storage.backend and the Redis URL
  from the environment, a Redis Deployment and Service beside limitsd's.

--extract-config writes the ConfigMap's limits.yaml to a file so that
`limitsd --check-config` can validate it; --extract-env writes the limitsd
container's literal environment (NAME=VALUE lines) to check it with. Exit status 1 lists every problem.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

CONFIG_DIR = "/etc/limitsd"
STORE_DIR = "/var/lib/limitsd"
UID = 65532
SERVICE = "mercator.limits.v1.LimitsService"


class Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.problems.append(what)


def limitsd_container(pod: dict) -> tuple[dict | None, str]:
    for kind in ("containers", "initContainers"):
        for c in pod.get(kind, []) or []:
            if c.get("name") == "limitsd":
                return c, kind
    return None, ""


def effective(pod: dict, c: dict, key: str):
    """A securityContext setting: the container's, else the pod's."""
    v = (c.get("securityContext") or {}).get(key)
    return v if v is not None else (pod.get("securityContext") or {}).get(key)


def check_deployment(ck: Checker, dep: dict, overlay: str) -> None:
    name = dep["metadata"]["name"]
    spec = dep["spec"]
    tmpl = spec["template"]
    pod = tmpl["spec"]
    where = f"Deployment {name}"
    c, kind = limitsd_container(pod)
    ck.expect(c is not None, f"{where}: no container named limitsd")
    if c is None:
        return
    cw = f"{where}, {kind} limitsd"
    if overlay == "sidecar":
        ck.expect(kind == "containers" or c.get("restartPolicy") == "Always",
                  f"{cw}: an init container must have restartPolicy: Always to be a sidecar")
        ck.expect(any(x.get("name") != "limitsd" for x in pod.get("containers", [])),
                  f"{where}: the sidecar overlay has no gateway container next to limitsd")

    args = c.get("args", []) + c.get("command", [])
    ck.expect("--config" in args and f"{CONFIG_DIR}/limits.yaml" in args,
              f"{cw}: args must include --config {CONFIG_DIR}/limits.yaml (got {args})")
    ports = {p.get("containerPort") for p in c.get("ports", [])}
    ck.expect({50051, 9090} <= ports, f"{cw}: container ports must include 50051 and 9090 (got {sorted(ports)})")

    for probe in ("livenessProbe", "readinessProbe"):
        p = c.get(probe) or {}
        ck.expect((p.get("grpc") or {}).get("port") == 50051,
                  f"{cw}: {probe} must be a grpc probe on port 50051 (grpc.health.v1)")
    for probe in ("startupProbe", "readinessProbe"):
        p = (c.get(probe) or {}).get("grpc") or {}
        if p:
            ck.expect(p.get("service") == SERVICE,
                      f"{cw}: {probe} should ask grpc.health.v1 about {SERVICE} (ready once the store is open)")

    res = c.get("resources") or {}
    for part in ("requests", "limits"):
        ck.expect(bool((res.get(part) or {}).get("memory")), f"{cw}: resources.{part}.memory is not set")
    ck.expect(bool((res.get("requests") or {}).get("cpu")), f"{cw}: resources.requests.cpu is not set")

    ck.expect(effective(pod, c, "runAsNonRoot") is True, f"{cw}: runAsNonRoot must be true")
    ck.expect(effective(pod, c, "runAsUser") == UID, f"{cw}: runAsUser must be {UID}")
    sc = c.get("securityContext") or {}
    ck.expect(sc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem must be true")
    ck.expect(sc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation must be false")
    ck.expect("ALL" in ((sc.get("capabilities") or {}).get("drop") or []), f"{cw}: capabilities must drop ALL")
    ck.expect((effective(pod, c, "seccompProfile") or {}).get("type") == "RuntimeDefault",
              f"{cw}: seccompProfile must be RuntimeDefault")

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    cfg = mounts.get(CONFIG_DIR)
    ck.expect(cfg is not None, f"{cw}: the config must be mounted at {CONFIG_DIR}")
    if cfg:
        ck.expect("subPath" not in cfg and "subPathExpr" not in cfg,
                  f"{cw}: the config mount must not use subPath (ConfigMap updates would never arrive)")
        vol = volumes.get(cfg["name"], {})
        ck.expect((vol.get("configMap") or {}).get("name") == "limitsd-config",
                  f"{cw}: {CONFIG_DIR} must be the ConfigMap limitsd-config")
    for m in c.get("volumeMounts", []):
        if m["mountPath"] != CONFIG_DIR and "subPath" in m and volumes.get(m["name"], {}).get("configMap"):
            ck.problems.append(f"{cw}: ConfigMap volume {m['name']} is mounted with subPath")
    store = mounts.get(STORE_DIR)
    if overlay == "redis":
        env = {e["name"]: e.get("value") for e in c.get("env", []) or []}
        ck.expect(env.get("MERCATOR_LIMITS_STORAGE_BACKEND") == "redis",
                  f"{cw}: the redis overlay must set MERCATOR_LIMITS_STORAGE_BACKEND=redis")
        ck.expect(str(env.get("MERCATOR_LIMITS_STORAGE_REDIS_URL", "")).startswith("redis"),
                  f"{cw}: the redis overlay must set MERCATOR_LIMITS_STORAGE_REDIS_URL")
        ck.expect(store is None, f"{cw}: no local store in the redis overlay (the counters live in Redis)")
        ck.expect((spec.get("replicas") or 1) >= 2, f"{where}: the redis overlay runs several replicas")
    else:
        ck.expect(store is not None, f"{cw}: the store must be mounted at {STORE_DIR}")
    if store and overlay != "redis":
        vol = volumes.get(store["name"], {})
        want = "emptyDir" if overlay == "sidecar" else "persistentVolumeClaim"
        ck.expect(want in vol, f"{cw}: the store volume must be a{'n' if want[0] == 'e' else ''} {want} "
                               f"in the {overlay} overlay (got {sorted(k for k in vol if k != 'name')})")

    ck.expect(pod.get("terminationGracePeriodSeconds") == 30,
              f"{where}: terminationGracePeriodSeconds must be 30 (limitsd's grace is 10 s)")
    ann = tmpl.get("metadata", {}).get("annotations") or {}
    for k, v in (("prometheus.io/scrape", "true"), ("prometheus.io/port", "9090"), ("prometheus.io/path", "/metrics")):
        ck.expect(ann.get(k) == v, f"{where}: pod annotation {k} must be {v!r} (got {ann.get(k)!r})")

    if overlay == "standalone":
        ck.expect(spec.get("replicas") == 1, f"{where}: replicas must be 1 (more need the Redis backend)")
        ck.expect((spec.get("strategy") or {}).get("type") == "Recreate",
                  f"{where}: strategy must be Recreate (the store is one ReadWriteOnce volume)")


def check_config_map(ck: Checker, cm: dict) -> str | None:
    text = (cm.get("data") or {}).get("limits.yaml")
    ck.expect(text is not None, "ConfigMap limitsd-config: no limits.yaml key")
    if text is None:
        return None
    limits = (yaml.safe_load(text) or {}).get("limits") or {}
    storage = limits.get("storage") or {}
    server = limits.get("server") or {}
    ck.expect(storage.get("backend") == "sled", "limits.yaml: storage.backend must be sled")
    ck.expect((storage.get("sled") or {}).get("path") == f"{STORE_DIR}/limits.sled",
              f"limits.yaml: storage.sled.path must be {STORE_DIR}/limits.sled")
    ck.expect(server.get("grpc_addr") == "0.0.0.0:50051", "limits.yaml: server.grpc_addr must be 0.0.0.0:50051")
    ck.expect(server.get("metrics_addr") == "0.0.0.0:9090", "limits.yaml: server.metrics_addr must be 0.0.0.0:9090")
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rendered", type=Path)
    ap.add_argument("--overlay", choices=["sidecar", "standalone", "redis"], required=True)
    ap.add_argument("--extract-config", type=Path, metavar="OUT")
    ap.add_argument("--extract-env", type=Path, metavar="OUT")
    args = ap.parse_args()

    docs = [d for d in yaml.safe_load_all(args.rendered.read_text()) if d]
    ck = Checker()
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d.get("kind", "?"), []).append(d)

    all_deps = by_kind.get("Deployment", [])
    deps = [d for d in all_deps if limitsd_container(d["spec"]["template"]["spec"])[0] is not None]
    ck.expect(len(deps) == 1, f"expected one Deployment running limitsd, got {len(deps)}")
    others = len(all_deps) - len(deps)
    ck.expect(others == (1 if args.overlay == "redis" else 0),
              f"{args.overlay}: unexpected number of other Deployments ({others})")
    for dep in deps:
        check_deployment(ck, dep, args.overlay)
    if args.extract_env and deps:
        c, _ = limitsd_container(deps[0]["spec"]["template"]["spec"])
        lines = [f"{e['name']}={e['value']}" for e in (c.get("env") or []) if "value" in e]
        args.extract_env.write_text("".join(line + "\n" for line in lines))
    cms = [c for c in by_kind.get("ConfigMap", []) if c["metadata"]["name"] == "limitsd-config"]
    ck.expect(len(cms) == 1, "expected one ConfigMap named limitsd-config (without a hash suffix)")
    config = check_config_map(ck, cms[0]) if cms else None

    if args.overlay in ("standalone", "redis"):
        ck.expect(len(by_kind.get("PersistentVolumeClaim", [])) == 1,
                  f"{args.overlay}: expected one PersistentVolumeClaim")
        svcs = by_kind.get("Service", [])
        if args.overlay == "redis":
            names = sorted(s["metadata"]["name"] for s in svcs)
            ck.expect(names == ["limitsd", "limitsd-redis"], f"redis: expected Services limitsd and limitsd-redis (got {names})")
            svcs = [s for s in svcs if s["metadata"]["name"] == "limitsd"]
        ck.expect(len(svcs) == 1, f"{args.overlay}: expected one Service for limitsd")
        for s in svcs:
            ports = {p.get("name"): p.get("port") for p in s["spec"].get("ports", [])}
            ck.expect(ports.get("grpc") == 50051 and ports.get("metrics") == 9090,
                      f"Service {s['metadata']['name']}: needs ports grpc:50051 and metrics:9090 (got {ports})")
    else:
        ck.expect("Service" not in by_kind and "PersistentVolumeClaim" not in by_kind,
                  "sidecar: no Service or PVC expected (limitsd is reached on localhost, its store is an emptyDir)")

    if args.extract_config and config is not None:
        args.extract_config.write_text(config)

    kinds = ", ".join(f"{k} x{len(v)}" for k, v in sorted(by_kind.items()))
    if ck.problems:
        print(f"check_manifests {args.overlay}: {len(ck.problems)} problem(s) in {kinds}")
        for p in ck.problems:
            print(f"  - {p}")
        return 1
    print(f"check_manifests {args.overlay}: ok ({kinds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
