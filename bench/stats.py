"""Small measurement helpers: percentiles, timers and CPU accounting across processes."""

from __future__ import annotations

import ctypes
import glob
import os
import resource
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

_TICKS = os.sysconf("SC_CLK_TCK")


def summary(samples: Sequence[float], scale: float = 1000.0, digits: int = 2) -> dict:
    """p50, p99, mean and count of samples in seconds, scaled (ms by default)."""
    values = np.asarray(samples, dtype=np.float64) * scale
    return {
        "p50": round(float(np.percentile(values, 50)), digits),
        "p99": round(float(np.percentile(values, 99)), digits),
        "mean": round(float(values.mean()), digits),
        "n": len(values),
    }


def ratio(numerator: float, denominator: float, digits: int = 3) -> float:
    return round(numerator / denominator, digits) if denominator else float("inf")


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of these processes (all their threads) so far."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    return total


def rss_bytes() -> int:
    """This process's resident set size now."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


@contextmanager
def single_threaded_blas() -> Iterator[bool]:
    """numpy's OpenBLAS on one thread for the block (True if it could be set).

    In a process that also loads faiss (which brings its own OpenMP OpenBLAS), numpy's BLAS
    threads and faiss's spin against each other on two cores: a 10^4-face brute-force search
    measured 0.25 ms alone and 6-12 ms when alternated with HNSW searches. One BLAS thread per
    search is what a server doing many searches at once wants anyway."""
    libraries = glob.glob(str(Path(np.__file__).parent.parent / "numpy.libs" / "*openblas*"))
    library = ctypes.CDLL(libraries[0]) if libraries else None
    setter = getattr(library, "scipy_openblas_set_num_threads64_", None)
    getter = getattr(library, "scipy_openblas_get_num_threads64_", None)
    if setter is None or getter is None:
        yield False
        return
    before = getter()
    setter(1)
    try:
        yield True
    finally:
        setter(before)
