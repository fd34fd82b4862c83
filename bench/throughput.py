"""Figure 2, throughput: images per second end to end with 1, 2, 4 and 8 concurrent clients,
against the raw engine's own best throughput (1, 2 or 4 threads) on the same two cores, in
interleaved rounds; with how many cores each side kept busy."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bench import media
from bench.mesh import RawEngine, RunningMesh
from bench.stats import cpu_seconds, ratio

CLIENTS = (1, 2, 4, 8)
RAW_THREADS = (1, 2, 4)
GOAL = 0.8
METHOD = (
    "1080p one-face JPEG. Mesh: N client threads in the bench process, each with its own gRPC "
    "channel, upload back to back for {window} s; images/s = completed uploads / wall time. "
    "Raw: T threads in the bench process run LocalEngine + ExactIndex (one OpenCV model pair "
    "per thread) back to back for {window} s; raw best = the best T. Windows alternate raw and "
    "mesh, {rounds} rounds each starting one configuration further along; median per "
    "configuration. cores_busy = CPU seconds of the bench process plus the five mesh processes "
    "(/proc/<pid>/stat) / wall seconds, out of {cores} cores. Ratio = mesh at its best client "
    "count / raw best."
)


class _Threads:
    """Long-lived worker threads, so per-thread state (OpenCV models, gRPC channels) is made
    once, in the warm-up, never inside a measured window."""

    def __init__(self, count: int, work: Callable[[], object]) -> None:
        self.count = count
        self.work = work
        self.pool = ThreadPoolExecutor(count)
        barrier = threading.Barrier(count)

        def warm() -> None:
            barrier.wait()  # one task per thread: every thread warms up once
            work()

        for future in [self.pool.submit(warm) for _ in range(count)]:
            future.result()

    def window(self, threads: int, seconds: float, pids: list[int]) -> dict:
        stop = threading.Event()
        counts = [0] * threads
        barrier = threading.Barrier(threads + 1)

        def loop(slot: int) -> None:
            barrier.wait()
            while not stop.is_set():
                self.work()
                counts[slot] += 1

        futures = [self.pool.submit(loop, slot) for slot in range(threads)]
        cpu_before = cpu_seconds(pids)
        try:
            barrier.wait()
            started = time.perf_counter()
            stop.wait(seconds)
        finally:  # also on Ctrl-C: the loops must end, or the pool never shuts down
            stop.set()
        for future in futures:
            future.result()
        wall = time.perf_counter() - started
        return _rates(sum(counts), wall, cpu_seconds(pids) - cpu_before)

    def close(self) -> None:
        self.pool.shutdown()


def _rates(done: int, wall: float, cpu: float) -> dict:
    return {
        "images_per_s": done / wall,
        "cores_busy": cpu / wall,
    }


def run(mesh: RunningMesh, raw: RawEngine, smoke: bool) -> dict:
    window, rounds = (2.0, 1) if smoke else (6.0, 7)
    data = media.jpeg(media.photo_1080p())
    me = [os.getpid()]
    everything = me + mesh.pids
    measured: dict[str, list[dict]] = {}
    raw_threads = _Threads(max(RAW_THREADS), lambda: raw.run(data))
    mesh_threads = _Threads(max(CLIENTS), lambda: mesh.upload(data))
    try:
        # Raw and mesh windows alternate, and each round starts one step further along, so
        # a change of load on the shared machine lands on every configuration alike.
        plan = [("raw", 1), ("mesh", 1), ("raw", 2), ("mesh", 2), ("raw", 4), ("mesh", 4)]
        plan.append(("mesh", 8))
        for round_number in range(rounds):
            shift = round_number % len(plan)
            for side, count in plan[shift:] + plan[:shift]:
                if side == "raw":
                    figure = raw_threads.window(count, window, me)
                else:
                    figure = mesh_threads.window(count, window, everything)
                measured.setdefault(f"{side}_{count}", []).append(figure)
    finally:
        raw_threads.close()
        mesh_threads.close()
    medians = {
        key: {
            "images_per_s": round(float(np.median([r["images_per_s"] for r in runs])), 2),
            "cores_busy": round(float(np.median([r["cores_busy"] for r in runs])), 2),
        }
        for key, runs in measured.items()
    }
    raw_best_key = max((f"raw_{t}" for t in RAW_THREADS), key=lambda k: medians[k]["images_per_s"])
    mesh_best_key = max((f"mesh_{c}" for c in CLIENTS), key=lambda k: medians[k]["images_per_s"])
    best = ratio(medians[mesh_best_key]["images_per_s"], medians[raw_best_key]["images_per_s"])
    return {
        "method": METHOD.format(window=window, rounds=rounds, cores=os.cpu_count()),
        "goal": f"mesh best / raw best >= {GOAL}",
        "raw": {k.split("_")[1]: v for k, v in medians.items() if k.startswith("raw_")},
        "mesh": {k.split("_")[1]: v for k, v in medians.items() if k.startswith("mesh_")},
        "raw_best": {"threads": int(raw_best_key.split("_")[1]), **medians[raw_best_key]},
        "mesh_best": {"clients": int(mesh_best_key.split("_")[1]), **medians[mesh_best_key]},
        "ratio_best": best,
        "met": best >= GOAL,
    }
