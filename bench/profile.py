"""Where the mesh's remaining overhead goes (issue 13): what the second hop of the media bytes
costs, what a storage reference would put in series instead, and py-spy profiles of the
gateway and the matcher processes while they serve uploads.

- **Hop**: `MatchMedia` on the mesh's own matcher (mutual TLS as the gateway, the gateway's
  certificate), once carrying the image and once carrying nothing, both refused at the first
  field check (an empty account id) before any work: their difference is what sending the
  bytes over the gateway→matcher hop costs (serialise, TLS, loopback, parse). Alternated, p50.
- **Store**: `LocalEncryptedStore.put` of the same bytes (envelope encryption + fsync), the
  step a storage reference would have to finish before the matcher could start (today it runs
  while the matcher works), and the matcher would need the media key to read it.
- **Profiles**: `py-spy record` (raw collapsed stacks, 100 Hz) on the gateway and the matcher
  while one client uploads the 0.3 MP and the 1080p photo in turn: first on-CPU samples (top
  functions by self share, and the project's own functions by inclusive share), then wall time
  with `--idle` (waiting included) inside `UploadMedia` and `MatchMedia`: the share of one
  request's time under each of the project's functions. Skipped (and
  said so) where py-spy is not installed or may not attach.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc

from bench import media
from bench.mesh import RunningMesh
from bench.stats import summary
from gateway.media_store import LocalEncryptedStore
from mixip.matcher.v1 import matcher_pb2, matcher_pb2_grpc
from mixip.runtime.keys import LocalKeyWrapper
from mixip.runtime.tls import channel_credentials

METHOD = __doc__.split("\n\n", 1)[1].strip()
TOP = 12


def run(mesh: RunningMesh, smoke: bool) -> dict:
    images = {
        "photo_03mp_1face": media.jpeg(media.photo_03mp()),
        "photo_1080p_1face": media.jpeg(media.photo_1080p()),
        "group_4k_10faces": media.jpeg(media.group_4k()),
    }
    calls = 6 if smoke else 60
    result: dict = {"method": METHOD, "hop_ms": {}, "store_ms": {}}
    channel = _matcher_channel(mesh)
    stub = matcher_pb2_grpc.MatcherServiceStub(channel)
    try:
        for name, data in images.items():
            result["hop_ms"][name] = _hop(stub, data, calls)
            result["store_ms"][name] = _store(data, max(3, calls // 3))
    finally:
        channel.close()
    seconds = 3.0 if smoke else 20.0
    result["profile_seconds"] = seconds
    result["profiles"] = _profiles(
        mesh, [images["photo_03mp_1face"], images["photo_1080p_1face"]], seconds
    )
    return result


def _matcher_channel(mesh: RunningMesh) -> grpc.Channel:
    address = mesh.mesh.addresses["matcher"]
    tls_dir = mesh.mesh.tls_dir
    if tls_dir is None:
        channel = grpc.insecure_channel(address)
    else:  # the gateway's own identity: the one caller MatchMedia accepts
        channel = grpc.secure_channel(
            address,
            channel_credentials(tls_dir, "gateway"),
            options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],
        )
    return channel


def _hop(stub: matcher_pb2_grpc.MatcherServiceStub, data: bytes, calls: int) -> dict:
    """p50 of a refused MatchMedia with the bytes, without them, and their difference."""
    with_bytes = matcher_pb2.MatchMediaRequest(account_id="", project_id="p", media=data)
    without = matcher_pb2.MatchMediaRequest(account_id="", project_id="p", media=b"")
    times: dict[str, list[float]] = {"with": [], "without": []}
    for i in range(calls + 2):
        for side in ("with", "without") if i % 2 == 0 else ("without", "with"):
            request = with_bytes if side == "with" else without
            started = time.perf_counter()
            try:
                stub.MatchMedia(request, timeout=30)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
            if i >= 2:  # two warm-up rounds
                times[side].append(time.perf_counter() - started)
    full, empty = summary(times["with"]), summary(times["without"])
    return {
        "bytes": len(data),
        "with_bytes_p50": full["p50"],
        "without_bytes_p50": empty["p50"],
        "bytes_p50": round(full["p50"] - empty["p50"], 2),
    }


def _store(data: bytes, calls: int) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="mixip-bench-store-"))
    try:
        store = LocalEncryptedStore(directory / "media", LocalKeyWrapper(directory / "kek.key"))
        store.put("acct", data)  # the key file is made once
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            store.put("acct", data)
            times.append(time.perf_counter() - started)
        return summary(times)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# Where one request's wall time goes: the handler whose subtree is read, per process.
WALL_ROOTS = {"gateway": "GatewayServicer.UploadMedia", "matcher": "MatcherServicer.MatchMedia"}


def _profiles(mesh: RunningMesh, images: list[bytes], seconds: float) -> dict:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {"skipped": "py-spy is not installed (it is in the dev extra)"}
    stop = threading.Event()
    uploads = [0]

    def load() -> None:
        while not stop.is_set():
            mesh.upload(images[uploads[0] % len(images)])
            uploads[0] += 1

    directory = Path(tempfile.mkdtemp(prefix="mixip-bench-spy-"))
    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        found: dict = {}
        # CPU (threads on a CPU), then wall time (every thread, waiting too)
        for mode, extra in (("cpu", []), ("wall", ["--idle"])):
            recorded = _record(spy, mesh, directory, mode, extra, seconds)
            for name, collapsed in recorded.items():
                entry = found.setdefault(name, {})
                if isinstance(collapsed, str) and mode == "cpu":
                    entry.update(_top(collapsed))
                elif isinstance(collapsed, str):
                    entry["wall_in_" + WALL_ROOTS[name]] = _wall(collapsed, WALL_ROOTS[name])
                else:
                    entry["skipped"] = collapsed["skipped"]
        found["uploads_during"] = uploads[0]
        return found
    finally:
        stop.set()
        worker.join(60)
        shutil.rmtree(directory, ignore_errors=True)


def _record(
    spy: str, mesh: RunningMesh, directory: Path, mode: str, extra: list[str], seconds: float
) -> dict:
    """py-spy's raw output per process (or why there is none), gateway and matcher at once."""
    recorders = {}
    for name in WALL_ROOTS:
        out = directory / f"{name}-{mode}.txt"
        command = [spy, "record", "--pid", str(mesh.mesh.processes[name].pid), "--rate", "100"]
        command += ["--duration", str(int(seconds)), "--format", "raw", "--output", str(out)]
        command += ["--nonblocking", *extra]
        recorders[name] = (
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
            out,
        )
    recorded: dict = {}
    for name, (process, out) in recorders.items():
        _, errors = process.communicate(timeout=seconds + 60)
        if process.returncode != 0 or not out.exists():
            recorded[name] = {"skipped": f"py-spy could not record: {errors.strip()[-200:]}"}
        else:
            recorded[name] = out.read_text()
    return recorded


def _wall(collapsed: str, root: str) -> list[str]:
    """The project's functions called under `root`, by share of the wall time spent in `root`
    (waiting included): where one request's time goes."""
    under: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        at = next((i for i, f in enumerate(frames) if f.startswith(root + " ")), None)
        if at is None or not count.isdigit():
            continue
        total += int(count)
        below = frames[at + 1 :]
        for frame in {_short(f) for f in below if _ours(f)}:
            under[frame] += int(count)
        waiting = [f for f in below if f.startswith(("Condition.wait", "_MultiThreadedRendezvous"))]
        if waiting:
            under["(waiting on a future or a peer)"] += int(count)
    if not total:
        return []
    return [f"{100 * n / total:5.1f}%  {frame}" for frame, n in under.most_common(TOP)]


def _top(collapsed: str) -> dict:
    """Top functions of py-spy's raw output ("frame;frame;... count" lines): inclusive share
    (the function is anywhere on the stack) and self share (it is the innermost frame)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        raw = stack.split(";")
        frames = [_short(f) for f in raw]
        # inclusive: the project's own functions (the threads' and gRPC's plumbing frames
        # would top the list at ~100% and say nothing)
        for frame in {_short(f) for f in raw if _ours(f)}:
            inclusive[frame] += samples
        own[frames[-1]] += samples
    if not total:
        return {"samples": 0, "inclusive": [], "self": []}

    def share(counter: Counter[str]) -> list[str]:
        return [f"{100 * n / total:5.1f}%  {frame}" for frame, n in counter.most_common(TOP)]

    return {"samples": total, "inclusive": share(inclusive), "self": share(own)}


# py-spy names a file by its last two path parts: these are the project's own.
OURS = ("gateway/", "matcher/", "engines/", "runtime/", "audit/", "consent/", "retention/")


def _ours(frame: str) -> bool:
    where = "/" + frame.partition(" (")[2]
    return any(f"/{package}" in where for package in OURS)


def _short(frame: str) -> str:
    """`function (path/to/module.py:line)` → `function (module.py)`: one line per function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    tail = "/".join(parts[-2:]) if parts else path
    return f"{name} ({tail})"
