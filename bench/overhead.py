"""Figure 1, mesh overhead: end-to-end UploadMedia through the gateway against the raw engine
call on the same image, interleaved pair by pair (ABBA order), medians and p99. Three images:
a ~0.3 MP one-face photo (where the fixed cost per upload shows most), a 1080p one-face photo
and a 4K ten-face group photo, each with its own goal."""

from __future__ import annotations

import time

from bench import media
from bench.mesh import RawEngine, RunningMesh
from bench.stats import ratio, summary

METHOD = (
    "Same JPEG bytes, measured in pairs in one run: raw = LocalEngine + ExactIndex in the bench "
    "process (decode + detect + embed + search, 2 enrolled talents); mesh = UploadMedia through "
    "the gateway of a `mixip up` mesh (5 processes, SQLite, encrypted media dir) with a real API "
    "key, 1 MiB chunks, one client: auth, streaming, sniffing, encrypted store, matcher "
    "(decode, detect, embed, search, consent batch check), audit append, result rows. Pairs "
    "alternate order (raw-mesh, mesh-raw); {warmup} warm-up calls of each are discarded. "
    "Ratio = mesh / raw of the p50s and of the p99s."
)
# The p50 ratio each image must stay under (issue 13: 1.15 at 1080p, 1.25 for a ~0.3 MP photo;
# round one's 1.25 for the 4K group).
GOALS_P50 = {"photo_03mp_1face": 1.25, "photo_1080p_1face": 1.15, "group_4k_10faces": 1.25}


def run(mesh: RunningMesh, raw: RawEngine, smoke: bool) -> dict:
    samples = {
        "photo_03mp_1face": 4 if smoke else 80,
        "photo_1080p_1face": 4 if smoke else 60,
        "group_4k_10faces": 2 if smoke else 30,
    }
    warmup = 1 if smoke else 5
    images = {
        "photo_03mp_1face": media.jpeg(media.photo_03mp()),
        "photo_1080p_1face": media.jpeg(media.photo_1080p()),
        "group_4k_10faces": media.jpeg(media.group_4k()),
    }
    result: dict = {
        "method": METHOD.format(warmup=warmup),
        "goal": ", ".join(f"{name}: p50 ratio <= {goal}" for name, goal in GOALS_P50.items()),
    }
    for name, data in images.items():
        expected = raw.run(data)
        reply = mesh.upload(data)
        if len(reply.faces) != expected:
            raise RuntimeError(f"{name}: mesh found {len(reply.faces)} faces, raw {expected}")
        for _ in range(warmup):
            raw.run(data)
            mesh.upload(data)
        raw_times, mesh_times = [], []
        for i in range(samples[name]):
            order = ("raw", "mesh") if i % 2 == 0 else ("mesh", "raw")
            for side in order:
                started = time.perf_counter()
                if side == "raw":
                    raw.run(data)
                    raw_times.append(time.perf_counter() - started)
                else:
                    mesh.upload(data)
                    mesh_times.append(time.perf_counter() - started)
        raw_ms, mesh_ms = summary(raw_times), summary(mesh_times)
        p50 = ratio(mesh_ms["p50"], raw_ms["p50"])
        result[name] = {
            "bytes": len(data),
            "faces": expected,
            "raw_ms": raw_ms,
            "mesh_ms": mesh_ms,
            "ratio_p50": p50,
            "ratio_p99": ratio(mesh_ms["p99"], raw_ms["p99"]),
            "goal_p50": GOALS_P50[name],
            "met": p50 <= GOALS_P50[name],
        }
    return result
