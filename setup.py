"""The build hook: every wheel carries the gRPC code generated from protos/, which is never
committed. Everything else about the package is in pyproject.toml.

An editable install (`make gen`) skips the hook: the Makefile generates into the tree instead.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROTOS = Path(__file__).resolve().parent / "protos"


def protoc(protos: Path, out: Path, *options: str) -> None:
    """Runs grpc_tools' protoc on every .proto under `protos`, writing under `out`."""
    from grpc_tools import protoc as grpc_protoc

    files = sorted(str(p.relative_to(protos)) for p in protos.rglob("*.proto"))
    if not files:
        raise SystemExit(f"no .proto files under {protos}")
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    argv = ["protoc", f"-I{protos}", f"-I{well_known}", *options, *files]
    if grpc_protoc.main(argv) != 0:
        raise SystemExit(f"protoc failed: {' '.join(argv)}")


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        out = Path(self.build_lib)
        protoc(PROTOS, out, f"--python_out={out}", f"--grpc_python_out={out}", f"--pyi_out={out}")


if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildPyWithProtos})
