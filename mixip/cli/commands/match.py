"""`mixip match`: a photo, a video or a folder of them matched against enrolled faces (labels
are advisory)."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path
from typing import Any

from mixip.cli import folder, resumable
from mixip.cli.arguments import read_file
from mixip.cli.commands import jobs
from mixip.cli.commands.media import media_result
from mixip.cli.commands.parsing import Subparsers
from mixip.cli.media import BYTES, start_job
from mixip.cli.output import CliError, Output
from mixip.cli.project_ids import require_project
from mixip.common.v1 import common_pb2
from mixip.gateway.v1 import gateway_pb2
from mixip.runtime.connection import Connection

RESUMABLE_ABOVE = 8 * 1024 * 1024  # larger files go through an upload session


def match(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    if Path(args.file).is_dir():
        if args.annotate or args.no_wait:
            raise CliError("--annotate and --no-wait are for one file, not a folder", 2)
        return folder.match_folder(
            conn,
            out,
            folder=Path(args.file),
            project=args.project,
            concurrency=args.jobs,
            results=Path(args.results) if args.results else None,
            csv_path=Path(args.csv) if args.csv else None,
            resumable_above=args.resumable_above,
        )
    if args.results or args.csv:
        raise CliError("--results and --csv are for a folder (mixip match DIR)", 2)
    return match_file(
        conn,
        out,
        file=args.file,
        project=args.project,
        annotate=args.annotate,
        resumable_above=args.resumable_above,
        no_wait=args.no_wait,
    )


def match_file(
    conn: Connection,
    out: Output,
    *,
    file: str,
    project: str,
    annotate: str | None = None,
    resumable_above: int = RESUMABLE_ABOVE,
    no_wait: bool = False,
) -> int:
    """Uploads the file and prints its results once its job is done (docs/jobs.md), waited
    for with a progress bar unless `no_wait`. Above `resumable_above` bytes through a
    resumable session (a rerun resumes it)."""
    path = Path(file)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror}") from None
    require_project(conn, project)  # the gateway would create an unknown id: a typo's project
    stub, meta = conn.gateway()
    if size > resumable_above:
        with out.progress(f"uploading {path.name}", size, **BYTES) as progress:
            sent = resumable.upload(stub, meta, conn.address(), path, project, progress.set)
        started = sent.media
        upload = {"bytes": sent.bytes, "resumed_from": sent.resumed_from}
    else:
        data = read_file(file)
        with out.progress(f"uploading {path.name}", len(data), **BYTES) as progress:
            started = start_job(stub, meta, path, data, project, uuid.uuid4().hex, progress)
        upload = {"bytes": len(data), "resumed_from": 0}
    if no_wait:
        out.result(
            {"job_id": started.job_id, "media_id": started.media_id, "upload": upload},
            [
                f"job {started.job_id} (media {started.media_id})",
                f"  mixip jobs wait {started.job_id}",
            ],
        )
        return 0
    jobs.ended_ok(jobs.wait(conn, out, started.job_id))
    reply = stub.GetMediaResults(
        gateway_pb2.GetMediaResultsRequest(media_id=started.media_id), metadata=meta
    ).media
    document, lines = media_result(reply)
    document["job_id"] = started.job_id
    document["upload"] = upload
    if upload["resumed_from"]:
        lines.insert(0, f"resumed the upload at byte {upload['resumed_from']} of {size}")
    if annotate:
        video = reply.kind == common_pb2.MEDIA_KIND_VIDEO
        data = b"" if video else read_file(file)  # a video's contact sheet reads the file itself
        _annotate(Path(annotate), Path(file), data, document["faces"], video)
        lines.append(f"annotated image: {annotate}")
        document["annotated"] = annotate
    out.result(document, lines)
    return 0


def _annotate(
    target: Path, source: Path, data: bytes, faces: list[dict[str, Any]], video: bool
) -> None:
    from mixip.cli.annotate import annotate_image, contact_sheet  # OpenCV: only when drawing

    try:
        if not video:
            annotate_image(data, faces, target)
            return
        contact_sheet(source, faces, target)  # the user's own file: no copy of it is made
    except ValueError as exc:
        raise CliError(str(exc)) from None


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """`mixip match`."""
    p = sub.add_parser(
        "match", parents=[common], help="match an image or video, or a folder of them"
    )
    p.add_argument(
        "file",
        metavar="PATH",
        help="a photo or video, or a folder: every photo and video under it (docs/jobs.md)",
    )
    p.add_argument("--project", required=True, help="the project the media belongs to")
    p.add_argument("--annotate", metavar="OUT.png", help="write an annotated image")
    p.add_argument(
        "--resumable-above",
        type=int,
        default=RESUMABLE_ABOVE,
        metavar="N",
        help="send larger files through a resumable upload session (default 8 MiB; 0: always); "
        "rerunning an interrupted command resumes it",
    )
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="print the job's id once the file is stored (`mixip jobs wait JOB_ID`); a file "
        "sent through a session is analysed before the command returns",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=folder.DEFAULT_JOBS,
        metavar="N",
        help=f"a folder: files matched at once (1-{folder.MAX_JOBS}, default "
        f"{folder.DEFAULT_JOBS})",
    )
    p.add_argument(
        "--results",
        metavar="FILE",
        help="a folder: the results file (JSON lines; default under $XDG_STATE_HOME/mixip/"
        "folders/, printed); a rerun skips the files it holds",
    )
    p.add_argument("--csv", metavar="FILE", help="a folder: the results as CSV too")
    p.set_defaults(run=match)
