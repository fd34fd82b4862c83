"""The README runs as written: its shell blocks, in order, in one shell, from a fresh directory
holding only the checkout's installed `.venv`, against the real `mixip up` its first block
starts. A block after an HTML comment `<!-- not run ... -->` is not run (the whole demo and suite,
grpcurl)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mixip.runtime import statelock
from mixip.runtime.config import SERVICES
from mixip.runtime.connection import SUPERVISOR_LOCK
from tests.support.databases import BACKENDS, fresh_schema_url

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
NOT_RUN = "<!-- not run"
BASH = shutil.which("bash") or "/bin/bash"
_BLOCK = re.compile(r"(?:^(<!--[^\n]*-->)\n)?^```sh\n(.*?)^```", re.M | re.S)


def readme_blocks(text: str) -> list[str]:
    """The README's ```sh blocks a reader runs, in order."""
    return [body for marker, body in _BLOCK.findall(text) if not (marker or "").startswith(NOT_RUN)]


def test_the_readme_marks_what_it_does_not_run():
    text = (ROOT / "README.md").read_text()
    skipped = [body for marker, body in _BLOCK.findall(text) if marker.startswith(NOT_RUN)]
    assert any("make demo" in body for body in skipped)
    assert any("grpcurl" in body for body in skipped)
    assert all("mixip" not in body or "grpcurl" in body for body in skipped)
    assert len(readme_blocks(text)) >= 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_readme_runs_as_written(backend, tmp_path, pg_test_database):
    blocks = readme_blocks((ROOT / "README.md").read_text())
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")  # the installed `mixip` (make install)
    script = ["set -euo pipefail"]
    for number, block in enumerate(blocks):
        script += [block, f"echo '--- README block {number} ran'"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIXIP_")}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's code, whichever tree .venv was installed from
    if backend == "postgresql":
        for service in SERVICES:
            env[f"MIXIP_{service.upper()}_DATABASE_URL"] = fresh_schema_url(
                pg_test_database, service
            )
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    try:
        with stdout.open("w") as out, stderr.open("w") as err:
            result = subprocess.run(
                [BASH, "-c", "\n".join(script)],
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                timeout=300,
            )
    finally:
        _stop_a_mesh_left_running(tmp_path / "var")
    printed, said = stdout.read_text(), stderr.read_text()
    ran = re.findall(r"^--- README block (\d+) ran$", printed, re.M)
    assert result.returncode == 0, f"block {len(ran)} failed:\n{printed[-2000:]}\n{said[-3000:]}"
    assert ran == [str(n) for n in range(len(blocks))]
    assert (tmp_path / "var" / "samples" / "face.jpg").is_file()
    assert (tmp_path / "var" / "samples" / "annotated.png").is_file()
    assert "mesh ready" in printed and "client port: plaintext on loopback" in printed
    assert re.search(r"\[0\] UNKNOWN .*\n\s+\[1\] CLEARED\s+astronaut", printed)
    assert "you are reviewer of film-1" in printed
    assert re.search(r"decided: approved_for_release by .*: release on file", printed)
    assert re.search(r"decided: needs_release_form by .*: who is this\?", printed)
    assert (tmp_path / "var" / "results.jsonl").read_text().count("\n") == 3  # the folder run
    assert "Traceback" not in said
    assert "mesh stopped" in printed  # `mixip down`, which returns once the mesh is gone
    assert "SIGTERM: stopping the mesh" in (tmp_path / "var" / "logs" / "up.log").read_text()
    assert not (tmp_path / "var" / "mesh.json").exists()


def _stop_a_mesh_left_running(data_dir: Path) -> None:
    """A failed block leaves the background `mixip up` running: stop it by the pid it wrote in
    mesh.json, or (still starting) by the pid holding its data directory's lock."""
    try:
        pid = json.loads((data_dir / "mesh.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        pid = statelock.holders(data_dir).get(SUPERVISOR_LOCK) if data_dir.is_dir() else None
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # not our child: no wait(), poll until it is gone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
