"""`python -m bench [--smoke] [--output DIR] [--only a,b]`: every figure of the performance
issue, written to DIR/results.json (figures and how each was measured) and DIR/results.md."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import report
from bench.stats import load_average

SECTIONS = (
    "overhead",
    "causes",
    "profile",
    "throughput",
    "search",
    "audit",
    "video",
    "startup",
    "jobs",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the bench works")
    parser.add_argument("--output", default=str(Path(__file__).parent), help="results directory")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {SECTIONS}")
    args = parser.parse_args(argv)
    only = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    results: dict = {
        "run": {
            "smoke": args.smoke,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": _host(),
            "load_average_at_start": load_average(),
        },
        "figures": {},
    }
    figures = results["figures"]

    def done(name: str, figure: dict) -> None:
        figures[name] = figure
        print(f"\n== {name} ==\n{figure['method']}", flush=True)
        print(json.dumps({k: v for k, v in figure.items() if k != "method"}, indent=1), flush=True)

    if {"overhead", "causes", "profile", "throughput", "video"} & set(only):
        from bench import causes, overhead, profile, throughput, video
        from bench.mesh import RawEngine, RunningMesh

        raw = RawEngine()
        with RunningMesh() as mesh:  # one mesh for the three figures that drive it
            if "overhead" in only:
                done("overhead", overhead.run(mesh, raw, args.smoke))
            if "profile" in only:
                done("profile", profile.run(mesh, args.smoke))
            if "throughput" in only:
                done("throughput", throughput.run(mesh, raw, args.smoke))
            if "video" in only:
                done("video", video.run(mesh, args.smoke))
        if "causes" in only:  # a mesh of its own: its services export their spans
            done("causes", causes.run(raw, args.smoke))
    for name in ("search", "audit", "startup", "jobs"):
        if name in only:
            module = __import__(f"bench.{name}", fromlist=["run"])
            done(name, module.run(args.smoke))

    results["run"]["duration_seconds"] = round(time.perf_counter() - started, 1)
    results["run"]["load_average_at_end"] = load_average()
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output / "results.md").write_text(report.markdown(results))
    print(f"\nwrote {output / 'results.json'} and {output / 'results.md'}")
    missing = report.missing(results) if only == list(SECTIONS) else []
    if missing:
        print(f"missing figures: {missing}", file=sys.stderr)
        return 1
    return 0


def _host() -> dict:
    versions = {}
    for module in ("numpy", "cv2", "grpc", "faiss", "sqlalchemy"):
        with contextlib.suppress(ImportError):
            versions[module] = __import__(module).__version__
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        **versions,
    }


if __name__ == "__main__":
    raise SystemExit(main())
