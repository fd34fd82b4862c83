"""Figure 5, video: seconds of 720p video processed per wall-clock second, end to end through
the mesh at the default sampling rate, and how the matcher's cost scales with the rate."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from bench import media
from bench.mesh import RunningMesh
from bench.stats import summary
from mixip.runtime.db import Database
from mixip.runtime.keys import LocalKeyRing
from mixip.runtime.times import utcnow
from mixip.runtime.vault import Vault
from services.matcher.engines.local import LocalEngine
from services.matcher.index import CollectionIndexes
from services.matcher.service import Matcher
from services.matcher.settings import DEFAULT_THRESHOLDS, Limits
from services.matcher.store import Base, TalentKeyRow, VaultStateRow
from services.matcher.video import DEFAULT_BURST_RATE_HZ, DEFAULT_BURST_SECONDS, DEFAULT_RATE_HZ

GOAL = 5.0
RATES = (0.5, 1.0, 2.0, 4.0, 8.0)
METHOD = (
    "A {seconds:.0f} s 1280x720 MP4 (mp4v, 25 fps, a pan across both faces so every frame "
    "differs and faces enter and leave). End to end: UploadMedia through the gateway of a "
    "`mixip up` mesh at the default sampling rate ({rate:g} Hz, and {burst:g} Hz for "
    "{burst_seconds:g} s after a face comes on screen), {reps} uploads, realtime factor "
    "= video seconds / p50 wall seconds; alternated (ABBA) with the matcher's own use case "
    "(services.matcher.service.Matcher.match, 2 inference threads, no gRPC) in the bench "
    "process on the same video, whose ratio is the mesh's cost. By rate: that in-process "
    "matcher at each rate (with the same denser sampling after new faces where it is "
    "faster than the rate), one run each; every frame is decoded at any rate "
    "(skipped frames are grabbed, not converted), sampled frames are detected and embedded."
)


class _AllConsent:
    def biometric_active(self, account_id: str, talent_id: str) -> bool:
        return True

    def active_sets(self, account_id, talent_ids, project_id):
        return set(talent_ids), set(talent_ids)


class _InProcess:
    """The matcher's own use case in this process: 2 inference threads, SQLite, no gRPC."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="mixip-bench-video-"))
        self.db = Database(f"sqlite:///{self.directory / 'matcher.db'}", Base.metadata)
        self.db.create_tables()
        self.vault = Vault(
            self.db,
            LocalKeyRing(self.directory / "keys" / "matcher-vault.key"),
            utcnow,
            name="matcher",
            state_model=VaultStateRow,
            secret_model=TalentKeyRow,
        )
        self.indexes = CollectionIndexes(self.db, self.vault)
        self.engine = LocalEngine(index_for=self.indexes.for_account)
        self.matchers: dict[float, Matcher] = {}

    def match(self, data: bytes, rate: float):
        matcher = self.matchers.get(rate)
        if matcher is None:
            matcher = self.matchers[rate] = Matcher(
                self.db,
                self.vault,
                self.engine,
                _AllConsent(),
                self.indexes,
                DEFAULT_THRESHOLDS["local"],
                Limits(video_rate_hz=rate),
                utcnow,
                workers=2,
            )
            matcher.warm_up()
        started = time.perf_counter()
        outcome = matcher.match("bench", "bench-film", data)
        return time.perf_counter() - started, outcome

    def close(self) -> None:
        for matcher in self.matchers.values():
            matcher.close()
        self.db.dispose()
        shutil.rmtree(self.directory, ignore_errors=True)


def _by_rate(local: _InProcess, data: bytes, seconds: float, rates: tuple[float, ...]) -> dict:
    out = {}
    for rate in rates:
        wall, outcome = local.match(data, rate)
        out[f"{rate:g}"] = {
            "wall_seconds": round(wall, 2),
            "frames_sampled": outcome.frames_sampled,
            "tracks": len(outcome.faces),
            "realtime_factor": round(seconds / wall, 2),
            "ms_per_sampled_frame": round(1000 * wall / max(1, outcome.frames_sampled), 1),
        }
        print(f"  video {rate:g} Hz: {out[f'{rate:g}']}", flush=True)
    return out


def run(mesh: RunningMesh, smoke: bool) -> dict:
    seconds, reps = (3.0, 1) if smoke else (30.0, 5)
    data = media.video_720p(seconds)
    reply = mesh.upload(data)  # warm-up, and a check that it is matched as a video
    if not reply.duration_seconds:
        raise RuntimeError("the video was not matched as a video")
    local = _InProcess()
    try:
        local.match(data, DEFAULT_RATE_HZ)  # warm-up
        walls, local_walls = [], []
        for i in range(reps):  # end to end and in-process alternate, in ABBA order
            for side in ("mesh", "local") if i % 2 == 0 else ("local", "mesh"):
                if side == "mesh":
                    started = time.perf_counter()
                    mesh.upload(data)
                    walls.append(time.perf_counter() - started)
                else:
                    local_walls.append(local.match(data, DEFAULT_RATE_HZ)[0])
        by_rate = _by_rate(local, data, seconds, (1.0, 2.0) if smoke else RATES)
    finally:
        local.close()
    wall, local_wall = summary(walls, scale=1.0), summary(local_walls, scale=1.0)
    factor = round(seconds / wall["p50"], 2)
    return {
        "method": METHOD.format(
            seconds=seconds,
            rate=DEFAULT_RATE_HZ,
            burst=DEFAULT_BURST_RATE_HZ,
            burst_seconds=DEFAULT_BURST_SECONDS,
            reps=reps,
        ),
        "goal": f">= {GOAL}x real time at {DEFAULT_RATE_HZ:g} Hz on two cores",
        "end_to_end": {
            "video_seconds": seconds,
            "rate_hz": DEFAULT_RATE_HZ,
            "bytes": len(data),
            "tracks": len(reply.faces),
            "wall_seconds": wall,
            "realtime_factor": factor,
            "in_process_wall_seconds": local_wall,
            "in_process_realtime_factor": round(seconds / local_wall["p50"], 2),
            "mesh_cost_ratio": round(wall["p50"] / local_wall["p50"], 3),
            "met": factor >= GOAL,
        },
        "by_rate": by_rate,
    }
