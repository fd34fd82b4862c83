"""Issue 19's goals for long video jobs, side by side in one run: a 1080p video uploaded by
`mixip match --resumable-above 0` through the gateway to the local store, analysed as a job by
segments over the matcher; realtime factor with one matcher, wall time with two replicas each
pinned to one core against one pinned replica, the matcher's peak RSS (VmHWM) for a short and a
long video, upload MB/s, the bytes a resumed upload sends after a kill at 50 %, and the time
from the upload's end to the first progress event of WatchJob.

Video length: `MIXIP_BENCH_VIDEO_MINUTES` (default 10) for every figure; the short video of the
RSS comparison is a sixth of it (10 vs 60 minutes with `MIXIP_BENCH_VIDEO_MINUTES=60`). The
generated files are cached under `MIXIP_BENCH_CACHE` (default ~/.cache/mixip-bench), keyed by
their parameters."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import grpc
import numpy as np

from mixip.cli.dev_mesh import ensure_dev_account
from mixip.cli.launcher import Mesh
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.runtime.connection import Connection
from mixip.runtime.times import utcnow
from services.matcher.video import DEFAULT_RATE_HZ
from tests.support import faces
from tests.support.gateway_calls import consent, enroll
from tests.support.relay import StallingRelay

PROJECT = "bench-jobs"
FPS = 25
SIZE = (1920, 1080)
GOP_SECONDS = 10
CYCLE = (("", 40.0), ("astronaut", 30.0), ("", 20.0), ("hopper", 20.0), ("", 10.0))
GOALS = {
    "realtime_factor": 12.0,
    "replica_wall_ratio": 0.6,
    "rss_bytes": 1.5 * 1024**3,
    "rss_growth": 0.10,
    "upload_mb_per_s": 100.0,
    "resumed_fraction": 0.55,
    "first_progress_seconds": 2.0,
}
METHOD = (
    "A {minutes:g}-minute {w}x{h} MP4 ({fps} fps, MPEG-4 part 2 by PyAV, a keyframe every {gop}"
    " s, mostly static: black, then the astronaut or Grace Hopper for 20-30 s, in a 120 s "
    "cycle), {mb:.1f} MB, and a {short:g}-minute one made the same way; for the upload figures,"
    " a {big} MB MP4 of random 1080p keyframes (few frames, many bytes). A `mixip up` launcher "
    "mesh per configuration (SQLite, local encrypted store, default segments and sampling "
    "{rate:g} Hz). Uploads by `mixip match --resumable-above 0 --no-wait --json` (a fresh CLI "
    "process; upload MB/s = file bytes / the command's wall time, CLI start included). Realtime"
    " factor = video seconds / (DONE - upload end) with one matcher, unpinned. Replicas: the "
    "same job with one matcher pinned to core 0 (sched_setaffinity on its pid) against two "
    "replicas pinned to cores 0 and 1. RSS: VmHWM of the matcher process from /proc/PID/status "
    "after the short job, then after the long one (same process). Resume: the upload through a "
    "relay that stalls after half the file, the CLI SIGKILLed once the session's durable offset"
    " stops growing, the same command again (through the relay, which passes all once cut); "
    "fraction = bytes the second run sent / file size (from its --json). First progress: from "
    "the CLI's exit (upload end) to the first WatchJob message with state RUNNING or "
    "frames_done > 0 (which is said; the largest over the jobs)."
)


def _cache_dir() -> Path:
    default = Path.home() / ".cache" / "mixip-bench"
    path = Path(os.environ.get("MIXIP_BENCH_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _canvas(image: np.ndarray | None) -> np.ndarray:
    width, height = SIZE
    frame = np.zeros((height, width, 3), np.uint8)
    if image is not None:
        scale = height / image.shape[0]
        resized = cv2.resize(image, (int(image.shape[1] * scale), height))
        left = (width - resized.shape[1]) // 2
        frame[:, left : left + resized.shape[1]] = resized[:, : width - left]
    return frame


def video(seconds: float) -> Path:
    """The cached 1080p video of `seconds` (generated once per set of parameters)."""
    key = hashlib.sha256(repr((seconds, FPS, SIZE, GOP_SECONDS, CYCLE, 1)).encode())
    path = _cache_dir() / f"jobs-{seconds:g}s-{key.hexdigest()[:12]}.mp4"
    if path.exists():
        return path
    people = {"": None, "astronaut": faces.astronaut(), "hopper": faces.grace_hopper()}
    partial = path.with_suffix(".part.mp4")
    started = time.perf_counter()
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.gop_size = GOP_SECONDS * FPS
        stream.bit_rate = 2_000_000
        frames, at = int(seconds * FPS), 0
        while at < frames:
            for who, shot in CYCLE:
                image = people[who]
                rgb = _canvas(None if image is None else image[:, :, ::-1].copy())
                still = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
                for _ in range(min(int(shot * FPS), frames - at)):
                    still.pts = None
                    container.mux(stream.encode(still))
                    at += 1
                if at >= frames:
                    break
        container.mux(stream.encode(None))
    partial.rename(path)
    print(f"  generated {path.name} in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def noise_video(megabytes: int) -> Path:
    """A cached 1080p MP4 of random frames (every frame a keyframe, ~2.5 MB each) of about
    `megabytes`: a large file of few frames, for the upload figures."""
    path = _cache_dir() / f"jobs-noise-{megabytes}MB-{FPS}fps-1.mp4"
    if path.exists():
        return path
    rng = np.random.default_rng(19)
    width, height = SIZE
    pool = [
        av.VideoFrame.from_ndarray(
            rng.integers(0, 256, (height, width, 3), np.uint8), format="rgb24"
        ).reformat(format="yuv420p")
        for _ in range(5)
    ]
    partial = path.with_suffix(".part.mp4")
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.gop_size = 1
        stream.bit_rate = 500_000_000
        stream.options = {"qmin": "1", "qmax": "2"}
        for i in range(max(2, megabytes * 10 // 25)):
            frame = pool[i % len(pool)]
            frame.pts = None
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    partial.rename(path)
    return path


class _JobsMesh:
    def __init__(self, root: Path, replicas: int) -> None:
        self.mesh = Mesh(root / "data", replicas={"matcher": replicas} if replicas > 1 else {})
        self.root = root

    def __enter__(self) -> _JobsMesh:
        self.mesh.start()
        conn = Connection(self.mesh.data_dir, self.mesh.addresses["gateway"])
        ensure_dev_account(conn)
        self.stub, self.meta = conn.gateway()
        calls = type("Calls", (), {"stub": self.stub})()
        request = pb.CreateProjectRequest(project_id=PROJECT, display_name="Bench jobs")
        self.stub.CreateProject(request, metadata=self.meta)
        for talent, image in (("astronaut", faces.astronaut()), ("hopper", faces.grace_hopper())):
            consent(calls, self.meta, utcnow, talent, cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
            consent(calls, self.meta, utcnow, talent, cpb.CONSENT_SCOPE_FACE_USAGE, project=PROJECT)
            enroll(calls, self.meta, talent, image)
        return self

    def __exit__(self, *exc) -> None:
        self.mesh.stop()

    def matchers(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.mesh.processes.items() if n.startswith("matcher")}

    def match(self, path: Path, gateway: str | None = None, state: str = "s") -> subprocess.Popen:
        command = [
            *(sys.executable, "-m", "mixip.cli.main", "--json"),
            *("--data-dir", str(self.mesh.data_dir)),
            *("--gateway", gateway or self.mesh.listen["gateway"], "match", str(path)),
            *("--project", PROJECT, "--resumable-above", "0", "--no-wait"),
        ]
        env = os.environ | {"XDG_STATE_HOME": str(self.root / state)}
        return subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def upload(self, path: Path, state: str = "s") -> tuple[dict, float, float]:
        """The CLI's document, its wall seconds, and the monotonic time it ended."""
        started = time.monotonic()
        process = self.match(path, state=state)
        out, err = process.communicate(timeout=3600)
        ended = time.monotonic()
        if process.returncode:
            raise RuntimeError(f"mixip match failed: {err[-2000:]}")
        return json.loads(out), ended - started, ended

    def watch(self, job_id: str, upload_end: float) -> dict:
        """Seconds from upload end to the first progress event, and to DONE."""
        first, what, done = None, "", None
        while done is None:
            stream = self.stub.WatchJob(
                pb.WatchJobRequest(job_id=job_id), metadata=self.meta
            )  # the channel's deadline (30 s) ends a watch: then watch again
            for message in _until_deadline(stream):
                job = message.job
                now = time.monotonic() - upload_end
                if first is None and (job.frames_done > 0 or job.state == pb.JOB_STATE_RUNNING):
                    first = now
                    what = "frames_done > 0" if job.frames_done > 0 else "state RUNNING"
                if job.state == pb.JOB_STATE_DONE:
                    done = now
                elif job.state in (pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
                    raise RuntimeError(f"job {job_id} ended {job.state}: {job.error}")
        return {"first_progress_seconds": first, "first_progress_event": what, "done": done}


def _until_deadline(stream):
    try:
        yield from stream
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def _job(mesh: _JobsMesh, path: Path, seconds: float, state: str) -> dict:
    document, upload_s, ended = mesh.upload(path, state)
    watched = mesh.watch(document["job_id"], ended)
    wall = watched["done"]
    size = path.stat().st_size
    return {
        "video_seconds": seconds,
        "bytes": size,
        "upload_seconds": round(upload_s, 2),
        "upload_mb_per_s": round(size / upload_s / 1e6, 1),
        "job_wall_seconds": round(wall, 2),
        "realtime_factor": round(seconds / wall, 2) if seconds else None,
        "first_progress_seconds": round(watched["first_progress_seconds"] or -1, 3),
        "first_progress_event": watched["first_progress_event"],
    }


def _resume(mesh: _JobsMesh, path: Path) -> dict:
    """Kill at 50 %: the relay stalls after half the bytes; the CLI is killed; again."""
    size = path.stat().st_size
    relay = StallingRelay(mesh.mesh.listen["gateway"], budget=size // 2)
    state = mesh.root / "resume"
    try:
        first = mesh.match(path, relay.address, "resume")
        wait = threading.Event()
        deadline = time.monotonic() + 600
        saved = None
        while saved is None and time.monotonic() < deadline:
            saved = next(iter((state / "mixip" / "uploads").glob("*.json")), None)
            wait.wait(0.05)
        if saved is None:
            raise RuntimeError("no session state file")
        session_id = json.loads(saved.read_text())["session_id"]

        def durable() -> int:
            request = pb.GetUploadSessionRequest(session_id=session_id)
            return mesh.stub.GetUploadSession(request, metadata=mesh.meta).session.durable_offset

        last, stable_since = -1, time.monotonic()
        while time.monotonic() < deadline:  # stalled: the offset has not moved for 1 s
            now = durable()
            if now != last:
                last, stable_since = now, time.monotonic()
            elif relay.sent > relay.budget and time.monotonic() - stable_since > 1.0:
                break
            wait.wait(0.1)
        first.kill()
        first.communicate(timeout=30)
        relay.cut()
        held = durable()
        rerun = mesh.match(path, relay.address, "resume")  # the CLI keys its state by address
        out, err = rerun.communicate(timeout=3600)
        if rerun.returncode:
            raise RuntimeError(f"resumed mixip match failed: {err[-2000:]}")
        document = json.loads(out)
    finally:
        relay.close()
    sent = document["upload"]["bytes"]
    return {
        "bytes": size,
        "durable_at_kill": held,
        "resumed_from": document["upload"]["resumed_from"],
        "resumed_bytes_sent": sent,
        "resumed_fraction": round(sent / size, 3),
        "job_id": document["job_id"],
    }


def _pin(pids: dict[str, int], cores: dict[str, int]) -> None:
    for name, pid in pids.items():
        os.sched_setaffinity(pid, {cores[name]})
        for task in Path(f"/proc/{pid}/task").iterdir():  # threads already started
            os.sched_setaffinity(int(task.name), {cores[name]})


def run(smoke: bool, root: Path | None = None) -> dict:
    import tempfile

    minutes = 0.2 if smoke else float(os.environ.get("MIXIP_BENCH_VIDEO_MINUTES", "10"))
    seconds, short_seconds = minutes * 60, minutes * 10
    long_path, short_path = video(seconds), video(short_seconds)
    size = long_path.stat().st_size
    big_path = noise_video(8 if smoke else 256)
    work = Path(tempfile.mkdtemp(prefix="mixip-bench-jobs-"))
    out: dict = {}
    with _JobsMesh(work / "one", 1) as mesh:
        pid = mesh.matchers()["matcher"]
        out["short"] = _job(mesh, short_path, short_seconds, "short")
        out["rss_short_bytes"] = vm_hwm(pid)
        print(f"  short: {out['short']}", flush=True)
        out["one"] = _job(mesh, long_path, seconds, "long")
        out["rss_long_bytes"] = vm_hwm(pid)
        print(f"  one matcher: {out['one']}", flush=True)
        out["upload"] = _job(mesh, big_path, 0.0, "upload")
        print(f"  upload: {out['upload']}", flush=True)
        out["resume"] = _resume(mesh, big_path)
        mesh.watch(out["resume"]["job_id"], time.monotonic())  # let it finish first
        print(f"  resume: {out['resume']}", flush=True)
        _pin(mesh.matchers(), {"matcher": 0})
        out["one_pinned"] = _job(mesh, long_path, seconds, "pinned")
        print(f"  one pinned: {out['one_pinned']}", flush=True)
    with _JobsMesh(work / "two", 2) as mesh:
        _pin(mesh.matchers(), {"matcher": 0, "matcher-2": 1})
        out["two_pinned"] = _job(mesh, long_path, seconds, "two")
        print(f"  two pinned: {out['two_pinned']}", flush=True)
    one, two = out["one"], out["two_pinned"]
    ratio = round(two["job_wall_seconds"] / out["one_pinned"]["job_wall_seconds"], 3)
    growth = round(out["rss_long_bytes"] / out["rss_short_bytes"] - 1, 3)
    resumed = out["resume"]["resumed_fraction"]
    upload = out["upload"]["upload_mb_per_s"]
    firsts = [out[k]["first_progress_seconds"] for k in ("short", "one", "upload", "one_pinned")]
    g = GOALS
    return {
        "method": METHOD.format(
            minutes=minutes,
            w=SIZE[0],
            h=SIZE[1],
            fps=FPS,
            gop=GOP_SECONDS,
            mb=size / 1e6,
            short=round(minutes / 6, 3),
            big=big_path.stat().st_size // 10**6,
            rate=DEFAULT_RATE_HZ,
        ),
        "video_minutes": minutes,
        "runs": out,
        "realtime_factor": {
            "value": one["realtime_factor"],
            "goal": f">= {g['realtime_factor']:g}x",
            "met": one["realtime_factor"] >= g["realtime_factor"],
        },
        "replica_wall_ratio": {
            "value": ratio,
            "goal": f"<= {g['replica_wall_ratio']:g}",
            "met": ratio <= g["replica_wall_ratio"],
        },
        "rss_peak_bytes": {
            "value": out["rss_long_bytes"],
            "goal": "<= 1.5 GiB",
            "met": out["rss_long_bytes"] <= g["rss_bytes"],
        },
        "rss_growth": {
            "value": growth,
            "goal": f"<= {g['rss_growth']:.0%} between {minutes / 6:.3g} and {minutes:g} minutes",
            "met": abs(growth) <= g["rss_growth"],
        },
        "upload_mb_per_s": {
            "value": upload,
            "goal": f">= {g['upload_mb_per_s']:g} MB/s",
            "met": upload >= g["upload_mb_per_s"],
        },
        "resumed_fraction": {
            "value": resumed,
            "goal": f"<= {g['resumed_fraction']:.0%} of the bytes",
            "met": resumed <= g["resumed_fraction"],
        },
        "first_progress_seconds": {
            "value": max(firsts),
            "goal": f"<= {g['first_progress_seconds']:g} s",
            "met": max(firsts) <= g["first_progress_seconds"],
        },
    }
