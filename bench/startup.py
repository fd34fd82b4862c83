"""Figure 6, start-up: wall time from launching `mixip up` to its "ready" line (printed once all
five services answer health checks with SERVING), and when each service logged "serving"."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.stats import summary
from mixip.runtime.config import SERVICES

METHOD = (
    "`python -m mixip.cli.main --data-dir <fresh temp dir> --json up` as a subprocess, {reps} "
    "times; seconds from Popen to its ready line (every service's health check answered "
    "SERVING, and the dev account made). Per service: when its log line `event=serving` "
    "was written, from the launch: that line follows the app's start-up work, which for the "
    "matcher includes loading and warming the models in every inference thread (its health "
    "check says SERVING just before). First start on a fresh data directory "
    "(keys, tables, model checks), like a new install."
)
_TS = re.compile(r"ts=(\S+)Z .*event=serving")


def _once() -> tuple[float, dict[str, float]]:
    root = Path(tempfile.mkdtemp(prefix="mixip-bench-up-"))
    data_dir = root / "data"
    keys = {"MIXIP_KEY_DIR": str(root / "keys")}  # apart from data, removed with it
    launched = time.time()
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "mixip.cli.main", "--data-dir", str(data_dir), "--json", "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | keys,
    )
    try:
        line = process.stdout.readline()
        elapsed = time.perf_counter() - started
        if json.loads(line or "{}").get("event") != "ready":
            raise RuntimeError(f"mixip up did not become ready: {process.stderr.read()[-2000:]}")
        per_service: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while len(per_service) < len(SERVICES) and time.monotonic() < deadline:
            for name in set(SERVICES) - set(per_service):
                log = data_dir / "logs" / f"{name}.log"
                found = _TS.search(log.read_text()) if log.exists() else None
                if found:
                    stamp = datetime.fromisoformat(found.group(1) + "+00:00").timestamp()
                    per_service[name] = round(stamp - launched, 2)
            time.sleep(0.05)
        return elapsed, per_service
    finally:
        time.sleep(0.5)  # `mixip up` installs its signal handlers just after the ready line
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _stop_leftovers(data_dir)
        shutil.rmtree(root, ignore_errors=True)


def _stop_leftovers(data_dir: Path) -> None:
    """Services of this run still alive (the launcher died before stopping them), by pid."""
    marker = f"MIXIP_DATA_DIR={data_dir}".encode()
    leftovers = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                leftovers.append(int(environ.parent.name))
        except OSError:
            continue
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if leftovers:
        print(f"  startup: stopped {len(leftovers)} service(s) the launcher left behind")


def run(smoke: bool) -> dict:
    reps = 1 if smoke else 5
    totals, services = [], {}
    for _ in range(reps):
        total, per_service = _once()
        totals.append(total)
        for name, seconds in per_service.items():
            services.setdefault(name, []).append(seconds)
    medians = {name: sorted(v)[len(v) // 2] for name, v in services.items()}
    return {
        "method": METHOD.format(reps=reps),
        "goal": "reported (no target)",
        "seconds": summary(totals, scale=1.0),
        "service_started_seconds": medians,
        "slowest_service": max(medians, key=medians.get) if medians else "",
    }
