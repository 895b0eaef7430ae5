"""Builds the package, generating the gRPC stubs from the repository's protos.

The stubs are never committed: every build (wheel, sdist or editable) runs
grpc_tools.protoc on proto/mercator/limits/v1/limits.proto and
proto/mercator/limits/admin/v1/admin.proto (two levels up, or
$LIMITSD_PROTO_DIR) into src/limitsd/_proto/, then rewrites the absolute
imports protoc writes (``from mercator.limits.v1 import limits_pb2``) to
point inside this package, so that ``limitsd`` owns no top-level
``mercator`` package that another client of the same protos could clash
with.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop
from setuptools.command.egg_info import egg_info

HERE = Path(__file__).resolve().parent
OUT = HERE / "src" / "limitsd" / "_proto"
#: Each proto, and the folder protoc writes its modules to.
PROTOS = {
    "mercator/limits/v1/limits.proto": "mercator/limits/v1",
    "mercator/limits/admin/v1/admin.proto": "mercator/limits/admin/v1",
}
#: The imports protoc writes between the generated modules (in the .py, the
#: .pyi and the _grpc.py files), rewritten to the package's own copies.
IMPORT = re.compile(r"^from mercator\.limits(?:\.admin)?\.v1 import (\w+_pb2) as", re.M)


def proto_dir() -> Path:
    raw = os.environ.get("LIMITSD_PROTO_DIR")
    candidates = [Path(raw)] if raw else [HERE.parents[1] / "proto", HERE / "proto"]
    for c in candidates:
        if all((c / p).is_file() for p in PROTOS):
            return c
    raise RuntimeError(
        f"cannot find {' and '.join(PROTOS)} under {', '.join(map(str, candidates))}: build "
        "from the limitsd repository (pip install ./clients/python) or set LIMITSD_PROTO_DIR"
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
            *PROTOS,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        OUT.mkdir(parents=True, exist_ok=True)
        # Every module protoc wrote, with its imports of the others rewritten.
        # The counts say that protoc still writes the imports this expects.
        expected = {
            "limits_pb2.py": 0,
            "limits_pb2.pyi": 0,
            "limits_pb2_grpc.py": 1,
            "admin_pb2.py": 1,
            "admin_pb2.pyi": 1,
            "admin_pb2_grpc.py": 1,
        }
        for folder in PROTOS.values():
            for gen in sorted((Path(tmp) / folder).glob("*_pb2*")):
                text, n = IMPORT.subn(r"from limitsd._proto import \1 as", gen.read_text())
                if n != expected.pop(gen.name, -1):
                    raise RuntimeError(f"unexpected protoc output: {n} imports of the limits protos in {gen.name}")
                (OUT / gen.name).write_text(text)
        if expected:
            raise RuntimeError(f"protoc wrote no {', '.join(expected)}")


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
