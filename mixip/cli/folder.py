"""`mixip match DIR --project P`: every photo and video under a folder, a few at a time, one
progress bar over the files, one results file (docs/jobs.md#whole-folders).

- Media are found by extension, recursively, in name order; anything else is skipped with a
  line saying so (the gateway still refuses a file that only looks like media: recorded as
  that file's failure).
- The results file holds one JSON line per file: its path (relative to the folder), size,
  modification time, SHA-256, and its media id, job id and faces with their labels, or the
  error that stopped it. A line is appended (and fsynced) as soon as its file is done, so an
  interrupted run loses at most the files in flight. The default file is private to the user
  (mode 0600 under $XDG_STATE_HOME/mixip/folders/, keyed by the gateway, the project and the
  folder): the lines name talents, and a folder of dailies is often shared or read-only.
- A rerun skips every file whose line holds no error and the same size and modification time
  (or, when the file was touched, the same SHA-256), and rewrites the file without the lines it
  will redo, so each file has one line. A file is sent with a request id derived from the
  project and its content: a file whose job was started but whose line was not written gets the
  same job back instead of a second upload (a file above `--resumable-above` resumes its upload
  session, as `mixip match FILE` does). A failed file gets a new request id on the rerun.
- Exit 0 when every file matched; 1 when any failed (each is recorded, the others run).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from mixip.cli import resumable
from mixip.cli.commands import jobs
from mixip.cli.media import face_json, start_job
from mixip.cli.output import CliError, Output, Progress
from mixip.common.v1 import common_pb2
from mixip.gateway.v1 import gateway_pb2
from mixip.runtime.connection import Connection, Metadata
from mixip.runtime.errors import error_details
from mixip.runtime.files import open_private, private_dir, write_private

if TYPE_CHECKING:
    from mixip.gateway.v1 import gateway_pb2_grpc

DEFAULT_JOBS = 2
MAX_JOBS = 16
# What the gateway accepts (mixip.runtime.media.SUPPORTED), by extension.
MEDIA_SUFFIXES = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".webp",
        ".heic",
        ".heif",
        ".tif",
        ".tiff",
        ".bmp",
        ".mp4",
        ".m4v",
        ".mov",
        ".webm",
        ".mkv",
    }
)
CSV_COLUMNS = [
    "path",
    "media_id",
    "job_id",
    "face_index",
    "label",
    "talent_id",
    "similarity",
    "reason",
    "ranges",
    "error",
]


@dataclass(frozen=True)
class Candidate:
    """A media file under the folder, as found now."""

    path: Path
    relative: str
    size: int
    mtime_ns: int


def default_results(address: str, project: str, folder: Path) -> Path:
    """$XDG_STATE_HOME/mixip/folders/<hash of the gateway, the project, the folder>.jsonl"""
    identity = json.dumps([address, project, str(folder.resolve())])
    name = hashlib.sha256(identity.encode()).hexdigest()[:32]
    return resumable.state_dir() / "folders" / f"{name}.jsonl"


def find_media(folder: Path, ignore: Iterable[Path]) -> tuple[list[Candidate], list[str]]:
    """The media files under the folder (name order) and the other files (relative paths)."""
    ignored = {p.resolve() for p in ignore}
    media: list[Candidate] = []
    others: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if path.resolve() in ignored:
                continue
            relative = path.relative_to(folder).as_posix()
            if path.suffix.lower() not in MEDIA_SUFFIXES or not path.is_file():
                others.append(relative)
                continue
            stat = path.stat()
            media.append(Candidate(path, relative, stat.st_size, stat.st_mtime_ns))
    return media, others


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(resumable.READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


def request_id_for(project: str, sha256: str, attempt: int) -> str:
    """The upload's request id: the same file in the same project is the same upload (its
    first job comes back), unless an earlier attempt failed (`attempt` counts them)."""
    return "dir-" + hashlib.sha256(f"{project}\0{sha256}\0{attempt}".encode()).hexdigest()[:40]


class Results:
    """The results file: the lines kept from earlier runs, and an append per file done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def load(self) -> dict[str, dict[str, Any]]:
        """The lines of earlier runs by path (the last line of a path wins; a line cut by a
        crash is dropped)."""
        earlier: dict[str, dict[str, Any]] = {}
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return earlier
        except OSError as exc:
            raise CliError(f"cannot read {self.path}: {exc.strerror}") from None
        for line in text.splitlines():
            try:
                document = json.loads(line)
            except ValueError:
                continue
            if isinstance(document, dict) and isinstance(document.get("path"), str):
                earlier[document["path"]] = document
        return earlier

    def start(self, kept: list[dict[str, Any]]) -> None:
        """Rewrites the file with the kept lines alone (atomically, mode 0600)."""
        partial = self.path.with_name(self.path.name + ".partial")
        text = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in kept)
        with self._writing():
            private_dir(self.path.parent)
            write_private(partial, text)
            os.replace(partial, self.path)
        self.lines = {d["path"]: d for d in kept}

    def add(self, document: dict[str, Any]) -> None:
        """Appends a line, durable before this returns."""
        line = (json.dumps(document, ensure_ascii=False) + "\n").encode()
        with self._lock, self._writing():
            fd = open_private(self.path, append=True)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.lines[document["path"]] = document

    @contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise CliError(f"cannot write {self.path}: {exc.strerror}") from None


def is_done(line: dict[str, Any] | None, file: Candidate) -> bool:
    """Whether an earlier line is this file's result: no error, and the same size and
    modification time (or the same content, when only the time changed)."""
    if line is None or line.get("error") or line.get("size") != file.size:
        return False
    return line.get("mtime_ns") == file.mtime_ns or line.get("sha256") == sha256_of(file.path)


def match_folder(
    conn: Connection,
    out: Output,
    *,
    folder: Path,
    project: str,
    concurrency: int,
    results: Path | None,
    csv_path: Path | None,
    resumable_above: int,
) -> int:
    if not 1 <= concurrency <= MAX_JOBS:
        raise CliError(f"--jobs must be 1-{MAX_JOBS}", exit_code=2)
    address = conn.address()
    results_path = results or default_results(address, project, folder)
    found, others = find_media(folder, [results_path] + ([csv_path] if csv_path else []))
    for name in others:
        out.note(f"skipping {name}: not a photo or video")
    store = Results(results_path)
    earlier = store.load()
    done = [f for f in found if is_done(earlier.get(f.relative), f)]
    store.start([earlier[f.relative] for f in done])
    todo = [f for f in found if f not in done]
    stub, meta = conn.gateway()
    cancel = jobs.Cancel()  # an interrupt ends the watches in flight at once
    failed = 0
    with (
        out.progress(f"{folder.name or folder}", len(found), unit="file") as bar,
        ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="mixip-match") as pool,
    ):
        bar.set(len(done))
        futures: dict[Future[dict[str, Any]], Candidate] = {
            pool.submit(
                _match_one,
                stub,
                meta,
                address,
                project,
                file,
                resumable_above,
                _attempt(earlier.get(file.relative)),
                cancel,
            ): file
            for file in todo
        }
        try:
            for future in as_completed(futures):
                document = future.result()
                store.add(document)
                if document.get("error"):
                    failed += 1
                    if bar.enabled:  # else the summary lists it
                        bar.write(f"{document['path']}: {document['error']}")
                bar.advance()
        except BaseException:  # Ctrl-C: what finished is kept; nothing more starts
            pool.shutdown(wait=False, cancel_futures=True)
            cancel()
            raise
    lines = [store.lines[f.relative] for f in found if f.relative in store.lines]
    if csv_path is not None:
        _write_csv(csv_path, lines)
    summary = {
        "results": str(results_path),
        "csv": str(csv_path) if csv_path else None,
        "files": len(found),
        "done_before": len(done),
        "matched": len(todo) - failed,
        "failed": failed,
        "skipped": others,
    }
    text = [
        f"{len(found)} file(s): {len(done)} done before, {len(todo) - failed} matched now, "
        f"{failed} failed, {len(others)} skipped (not media)",
        f"results: {results_path}" + (f" (CSV: {csv_path})" if csv_path else ""),
    ]
    text += [f"  failed: {d['path']}: {d['error']}" for d in lines if d.get("error")]
    out.result(summary, text)
    return 1 if failed else 0


def _attempt(line: dict[str, Any] | None) -> int:
    """The attempt a file is at: one more than its earlier line's when that one failed."""
    if line is None or not line.get("error"):
        return 0
    return int(line.get("attempt", 0)) + 1


def _match_one(
    stub: gateway_pb2_grpc.GatewayServiceStub,
    meta: Metadata,
    address: str,
    project: str,
    file: Candidate,
    resumable_above: int,
    attempt: int,
    cancel: jobs.Cancel,
) -> dict[str, Any]:
    """One file's results line; a failure is the line's `error`, never raised."""
    document: dict[str, Any] = {
        "path": file.relative,
        "size": file.size,
        "mtime_ns": file.mtime_ns,
    }
    try:
        document["sha256"] = sha256_of(file.path)
        if file.size > resumable_above:  # finished as a job (or, done before, its media)
            sent = resumable.upload(stub, meta, address, file.path, project, _ignore)
            started = sent.media
            upload = {"bytes": sent.bytes, "resumed_from": sent.resumed_from}
        else:
            data = file.path.read_bytes()
            request_id = request_id_for(project, document["sha256"], attempt)
            quiet = Progress("", enabled=False)
            started = start_job(stub, meta, file.path, data, project, request_id, quiet)
            upload = {"bytes": len(data), "resumed_from": 0}
        if started.job_id:
            jobs.ended_ok(jobs.watch(stub, meta, started.job_id, cancel=cancel))
        media = stub.GetMediaResults(
            gateway_pb2.GetMediaResultsRequest(media_id=started.media_id), metadata=meta
        ).media
        job_id = started.job_id
    except CliError as exc:
        return {**document, "error": str(exc), "attempt": attempt}
    except grpc.RpcError as exc:
        details = error_details(exc)
        error = f"{details.code.name.lower().replace('_', ' ')}: {details.one_line()}"
        return {**document, "error": error, "attempt": attempt}
    except OSError as exc:
        return {**document, "error": f"cannot read: {exc.strerror}", "attempt": attempt}
    video = media.kind == common_pb2.MEDIA_KIND_VIDEO
    return {
        **document,
        "media_id": media.media_id,
        "job_id": job_id,
        "faces": [face_json(face, video) for face in media.faces],
        "upload": upload,
    }


def _ignore(_: int) -> None:
    pass


def _write_csv(path: Path, lines: list[dict[str, Any]]) -> None:
    """One row per face (a file without faces, or failed: one row without face columns)."""
    rows: list[dict[str, Any]] = []
    for line in lines:
        base = {
            "path": line["path"],
            "media_id": line.get("media_id", ""),
            "job_id": line.get("job_id", ""),
            "error": line.get("error", ""),
        }
        faces = line.get("faces") or []
        if not faces:
            rows.append(base)
        for index, face in enumerate(faces):
            rows.append(
                {
                    **base,
                    "face_index": index,
                    "label": face["label"],
                    "talent_id": face["talent_id"] or "",
                    "similarity": face["similarity"],
                    "reason": face["reason"],
                    "ranges": " ".join(f"{a:.2f}-{b:.2f}" for a, b in face.get("ranges", [])),
                }
            )
    try:
        with os.fdopen(open_private(path), "w", newline="") as handle:
            writer = csv.DictWriter(handle, CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from None
