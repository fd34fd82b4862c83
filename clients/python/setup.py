"""The build hook of `mixip-client`: messages, gRPC stubs and mypy-protobuf type stubs generated
from the repository's protos/ into the wheel, with a `py.typed` marker in every package; and the
audit log's verifier, `mixip.tlog` (pure Python on `cryptography`), copied from the repository."""

from __future__ import annotations

import importlib.resources
import shutil
import sys
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

PROTOS = (Path(__file__).resolve().parent / ".." / ".." / "protos").resolve()
TLOG = (Path(__file__).resolve().parent / ".." / ".." / "mixip" / "tlog").resolve()
PLUGINS = {"mypy": "mypy_protobuf.main:main", "mypy_grpc": "mypy_protobuf.main:grpc"}


def _plugin(directory: Path, name: str, entry: str) -> str:
    """protoc's option for plugin `name`, run by this interpreter (PATH may lack its script)."""
    module, function = entry.split(":")
    script = directory / f"protoc-gen-{name}"
    script.write_text(f"#!{sys.executable}\nfrom {module} import {function}\n{function}()\n")
    script.chmod(0o755)
    return f"--plugin=protoc-gen-{name}={script}"


class BuildTypedStubs(build_py):
    def run(self) -> None:
        super().run()
        from grpc_tools import protoc

        out = Path(self.build_lib)
        out.mkdir(parents=True, exist_ok=True)
        files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
        if not files:
            raise SystemExit(f"no .proto files under {PROTOS}")
        well_known = importlib.resources.files("grpc_tools") / "_proto"
        with tempfile.TemporaryDirectory() as tmp:
            plugins = [_plugin(Path(tmp), name, entry) for name, entry in PLUGINS.items()]
            argv = [
                "protoc",
                f"-I{PROTOS}",
                f"-I{well_known}",
                *plugins,
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                f"--mypy_out={out}",
                f"--mypy_grpc_out={out}",
                *files,
            ]
            if protoc.main(argv) != 0:
                raise SystemExit(f"protoc failed: {' '.join(argv)}")
        tlog = out / "mixip" / "tlog"
        shutil.copytree(TLOG, tlog, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # PEP 561: `mixip` is a namespace package, so each package carries its own marker.
        for directory in {(out / f).parent for f in files} | {tlog}:
            while directory != out:
                (directory / "py.typed").touch()
                directory = directory.parent


class GeneratedOnly(Distribution):
    """No package is in this folder, yet build_py must run: the hook writes them all."""

    def has_pure_modules(self) -> bool:
        return True


setup(distclass=GeneratedOnly, cmdclass={"build_py": BuildTypedStubs})
