"""Builds the package, generating the gRPC stubs from the repository's protos.

The stubs are never committed: every build (wheel, sdist or editable) runs
grpc_tools.protoc on proto/mercator/limits/v1/limits.proto (two levels up,
or $LIMITSD_PROTO_DIR) into src/limitsd/_proto/, then rewrites the one
absolute import protoc writes (``from mercator.limits.v1 import limits_pb2``)
to point inside this package, so that ``limitsd`` owns no top-level
``mercator`` package that another client of the same proto could clash with.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop
from setuptools.command.egg_info import egg_info

HERE = Path(__file__).resolve().parent
OUT = HERE / "src" / "limitsd" / "_proto"
PROTO = "mercator/limits/v1/limits.proto"


def proto_dir() -> Path:
    raw = os.environ.get("LIMITSD_PROTO_DIR")
    candidates = [Path(raw)] if raw else [HERE.parents[1] / "proto", HERE / "proto"]
    for c in candidates:
        if (c / PROTO).is_file():
            return c
    raise RuntimeError(
        f"cannot find {PROTO} under {', '.join(map(str, candidates))}: build from the "
        "limitsd repository (pip install ./clients/python) or set LIMITSD_PROTO_DIR"
    )


def generate() -> None:
    import importlib.resources

    from grpc_tools import protoc

    src = proto_dir()
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{src}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            PROTO,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        gen = Path(tmp) / "mercator" / "limits" / "v1"
        OUT.mkdir(parents=True, exist_ok=True)
        for name in ("limits_pb2.py", "limits_pb2.pyi"):
            shutil.copyfile(gen / name, OUT / name)
        grpc_py = (gen / "limits_pb2_grpc.py").read_text()
        grpc_py, n = re.subn(
            r"^from mercator\.limits\.v1 import limits_pb2 as",
            "from limitsd._proto import limits_pb2 as",
            grpc_py,
            flags=re.M,
        )
        if n != 1:
            raise RuntimeError("unexpected protoc output: the limits_pb2 import was not found")
        (OUT / "limits_pb2_grpc.py").write_text(grpc_py)


class _Generate:
    def run(self: Command) -> None:  # type: ignore[misc]
        generate()
        super().run()  # type: ignore[misc]


class BuildPy(_Generate, build_py):
    pass


class Develop(_Generate, develop):
    pass


class EggInfo(_Generate, egg_info):
    pass


setup(cmdclass={"build_py": BuildPy, "develop": Develop, "egg_info": EggInfo})
