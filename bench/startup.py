"""Figure 6, start-up: wall time from launching `mixip up` to its "ready" line (printed once all
five services answer health checks with SERVING), and when each service logged "serving"; and
the command line's own start-up (issue 20): `mixip --version`, `mixip --help` and a typical
command against the running mesh, each against its goal."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
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
CLI_METHOD = (
    "`python -m mixip.cli.main ARGS` as a subprocess, {runs} times per mesh start, seconds from "
    "Popen to exit: `--version`, `--help`, and `projects list` (one ListProjects call through "
    "the gateway) against the mesh just started; wall seconds (the goal) and CPU seconds "
    "(user + system: what a loaded machine does not inflate)"
)
# The command line's goals (issue 20): what a person notices as a lag.
CLI_GOALS = {"version": 0.3, "help": 0.3, "projects_list": 0.5}
CLI_COMMANDS = {
    "version": ["--version"],
    "help": ["--help"],
    "projects_list": ["--data-dir", "{data_dir}", "projects", "list"],
}


def _cli_seconds(data_dir: Path, runs: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds of each CLI command, `runs` times, against the mesh on `data_dir`.
    CPU (user + system of the command's process) is what a busy machine does not inflate."""
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in CLI_COMMANDS}
    for _ in range(runs):
        for name, args in CLI_COMMANDS.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mixip.cli.main",
                    *(a.format(data_dir=data_dir) for a in args),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
                timeout=60,
            )
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            seconds[name].append((wall, cpu))
    return seconds


def _once(
    cli_runs: int,
) -> tuple[float, dict[str, float], dict[str, list[tuple[float, float]]]]:
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
        return elapsed, per_service, _cli_seconds(data_dir, cli_runs)
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
    cli_runs = 2 if smoke else 5
    totals, services = [], {}
    cli: dict[str, list[tuple[float, float]]] = {name: [] for name in CLI_COMMANDS}
    for _ in range(reps):
        total, per_service, cli_seconds = _once(cli_runs)
        totals.append(total)
        for name, seconds in per_service.items():
            services.setdefault(name, []).append(seconds)
        for name, samples in cli_seconds.items():
            cli[name] += samples
    medians = {name: sorted(v)[len(v) // 2] for name, v in services.items()}
    cli_figures = {}
    for name, samples in cli.items():
        wall = summary([w for w, _ in samples], scale=1.0, digits=3)
        cpu = summary([c for _, c in samples], scale=1.0, digits=3)
        cli_figures[name] = wall | {
            "cpu_p50": cpu["p50"],
            "goal_seconds": CLI_GOALS[name],
            "met": wall["p50"] <= CLI_GOALS[name],
        }
    return {
        "method": METHOD.format(reps=reps),
        "goal": "reported (no target)",
        "seconds": summary(totals, scale=1.0),
        "service_started_seconds": medians,
        "slowest_service": max(medians, key=medians.get) if medians else "",
        "cli": {"method": CLI_METHOD.format(runs=cli_runs)} | cli_figures,
    }
