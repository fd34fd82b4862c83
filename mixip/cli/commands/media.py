"""`mixip media show|list|preview`: stored media, their results and previews."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mixip.cli.commands.parsing import Subparsers
from mixip.cli.media import dashed_name, enum_name, face_json
from mixip.cli.output import CliError, Output
from mixip.common.v1 import common_pb2
from mixip.gateway.v1 import gateway_pb2
from mixip.runtime.connection import Connection
from mixip.runtime.files import write_private
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.paging import every_page

ADVISORY = "labels are advisory: a person decides whether media is cleared for use"

LABELS = {
    "cleared": common_pb2.FACE_LABEL_CLEARED,
    "possible": common_pb2.FACE_LABEL_POSSIBLE,
    "unknown": common_pb2.FACE_LABEL_UNKNOWN,
}


def media_result(reply: gateway_pb2.UploadMediaResponse) -> tuple[dict[str, Any], list[str]]:
    """A media's stored or fresh results: the JSON document and the text lines."""
    video = reply.kind == common_pb2.MEDIA_KIND_VIDEO
    faces = [face_json(f, video) for f in reply.faces]
    document: dict[str, Any] = {"media_id": reply.media_id, "faces": faces}
    lines = [f"media {reply.media_id}: {len(faces)} face(s)"]
    for i, face in enumerate(faces):
        where = " at " + ", ".join(f"{a:.1f}-{b:.1f}s" for a, b in face["ranges"]) if video else ""
        lines.append(
            f"  [{i}] {face['label'].upper():8} {face['talent_id'] or '-':24} "
            f"similarity {face['similarity']:.3f} ({face['reason']}){where}"
        )
    if faces:
        lines.append(ADVISORY)
    return document, lines


def media_show(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    reply = stub.GetMediaResults(
        gateway_pb2.GetMediaResultsRequest(media_id=args.media_id), metadata=meta
    )
    document, lines = media_result(reply.media)
    document["filename"] = reply.filename
    document["decisions"] = [decision_json(d) for d in reply.decisions]
    latest = {d["face_index"]: d for d in document["decisions"]}  # oldest first: last wins
    lines += [
        f"  [{i}] decided: {d['decision']} by {d['decided_by_name'] or d['decided_by_account_id']}"
        f" at {d['decided_at']}" + (f": {d['note']}" if d["note"] else "")
        for i, d in sorted(latest.items())
    ]
    out.result(document, lines)
    return 0


def decision_json(record: gateway_pb2.ReviewDecisionRecord) -> dict[str, Any]:
    return {
        "decision_id": record.decision_id,
        "media_id": record.media_id,
        "face_index": record.face_index,
        "decision": enum_name(common_pb2.ReviewDecision, record.decision, "REVIEW_DECISION_"),
        "note": record.note,
        "decided_by_account_id": record.decided_by_account_id,
        "decided_by_key_id": record.decided_by_key_id,
        "decided_by_name": record.decided_by_name,
        "decided_at": record.decided_at.ToJsonString(),
    }


def media_list(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    return list_media(conn, out, project=args.project, undecided=args.undecided, label=args.label)


def list_media(
    conn: Connection,
    out: Output,
    *,
    project: str,
    undecided: bool = False,
    label: str | None = None,
) -> int:
    stub, meta = conn.gateway()
    pages = every_page(
        lambda token: stub.ListMedia(
            gateway_pb2.ListMediaRequest(
                project_id=project,
                label=LABELS[label] if label else common_pb2.FACE_LABEL_UNSPECIFIED,
                undecided=undecided,
                page_size=MAX_BATCH,
                page_token=token,
            ),
            metadata=meta,
        )
    )
    media = [
        {
            "media_id": m.media_id,
            "filename": m.filename,
            "kind": dashed_name(common_pb2.MediaKind, m.kind, "MEDIA_KIND_"),
            "created_at": m.created_at.ToJsonString(),
            "faces": m.face_count,
            "cleared": m.cleared_faces,
            "possible": m.possible_faces,
            "unknown": m.unknown_faces,
            "undecided": m.undecided_faces,
            "uploaded_by_account_id": m.uploaded_by_account_id,
        }
        for page in pages
        for m in page.media
    ]
    lines = [f"{project}: {len(media)} media"] + [
        f"  {m['media_id']}  {m['filename'] or '-'}  {m['faces']} face(s): "
        f"{m['cleared']} cleared, {m['possible']} possible, {m['unknown']} unknown; "
        f"{m['undecided']} undecided"
        for m in media
    ]
    out.result({"project_id": project, "media": media}, lines)
    return 0


def media_preview(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    target = Path(args.output)
    if target.exists() and not args.force:
        raise CliError(f"{target} exists; pass --force to overwrite it", exit_code=2)
    stub, meta = conn.gateway()
    reply = stub.GetMediaPreview(
        gateway_pb2.GetMediaPreviewRequest(media_id=args.media_id, max_side=args.max_side),
        metadata=meta,
    )
    try:  # a preview shows people's faces: written 0600 like an export
        write_private(target, reply.image, exclusive=not args.force)
    except FileExistsError:
        raise CliError(f"{target} exists; pass --force to overwrite it", exit_code=2) from None
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror}", exit_code=2) from None
    out.result(
        {
            "media_id": args.media_id,
            "written": str(target),
            "width": reply.width,
            "height": reply.height,
        },
        f"wrote {target} ({reply.width}x{reply.height})",
    )
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """`mixip media show|list|preview`."""
    media = sub.add_parser("media", help="stored media and their results").add_subparsers(
        dest="action", required=True
    )
    p = media.add_parser("show", parents=[common], help="the stored results of an upload")
    p.add_argument("media_id", metavar="MEDIA_ID", help="the id `mixip match` printed")
    p.set_defaults(run=media_show)

    p = media.add_parser("list", parents=[common], help="a project's media, newest first")
    p.add_argument("--project", required=True, help="the project")
    p.add_argument("--undecided", action="store_true", help="only media with undecided faces")
    p.add_argument("--label", choices=sorted(LABELS), help="only media with a face so labelled")
    p.set_defaults(run=media_list)
    p = media.add_parser("preview", parents=[common], help="write an annotated JPEG preview")
    p.add_argument("media_id", metavar="MEDIA_ID", help="the media")
    p.add_argument("-o", "--output", required=True, metavar="OUT.jpg", help="where to write it")
    p.add_argument("--max-side", type=int, default=0, help="longest side, 64-2048 (default 640)")
    p.add_argument("--force", action="store_true", help="overwrite OUT.jpg if it exists")
    p.set_defaults(run=media_preview)
