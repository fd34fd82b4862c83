"""A fast command line: `mixip --version` and `--help` import none of what is heavy (checked in a
fresh interpreter's `sys.modules`, not timed); the figures are `make bench`'s (bench/startup.py)."""

from __future__ import annotations

import json
import subprocess
import sys

# What only the commands that use it may import: the services' code, OpenCV, NumPy, video,
# AWS, databases, telemetry, and the gRPC stubs (each command opens its channel when it runs).
HEAVY = ("cv2", "numpy", "av", "boto3", "botocore", "sqlalchemy", "alembic", "opentelemetry")
HEAVY_PREFIXES = ("gateway", "services", "prometheus_client", "PIL", "skimage", "matplotlib")


def _imported_by(argv: list[str]) -> set[str]:
    script = (
        "import contextlib, io, json, sys\n"
        "from mixip.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"    main({argv!r})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(done.stdout))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(
        m for m in modules if m.split(".")[0] in HEAVY + HEAVY_PREFIXES or m.endswith("_pb2_grpc")
    )


def test_mixip_version_imports_neither_grpc_nor_anything_heavy():
    modules = _imported_by(["--version"])
    assert _heavy(modules) == []
    assert {"grpc", "google.protobuf", "mixip.cli.commands"} & modules == set()


def test_mixip_help_builds_every_command_without_importing_anything_heavy():
    modules = _imported_by(["--help"])
    assert "mixip.cli.commands" in modules  # the whole parser was built
    assert _heavy(modules) == []
