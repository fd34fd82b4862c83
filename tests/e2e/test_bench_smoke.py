"""`python -m bench --smoke` still runs end to end and writes every figure of the performance
report (sizes are tiny and nothing is timed against a goal here: CI only keeps the bench
working)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import REQUIRED, lookup

pytestmark = pytest.mark.slow


def test_the_smoke_bench_writes_every_figure(tmp_path: Path):
    env = os.environ.copy()
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["run"]["smoke"] is True
    figures = results["figures"]
    assert [path for path in REQUIRED if lookup(figures, path) is None] == []
    for name, figure in figures.items():
        assert figure["method"], f"{name} says how it was measured"
    for image, causes in figures["causes"].items():  # every upload's spans reached the bench
        if image != "method":
            assert causes["traced"] == causes["uploads"], image
    table = (tmp_path / "results.md").read_text()
    for heading in (
        "Mesh overhead",
        "Where an upload's time goes",
        "Throughput",
        "Search top-5",
        "ShredTalentSalt",
        "Video",
    ):
        assert heading in table
    assert "Start-up" in table
    assert "Long video job" in table
