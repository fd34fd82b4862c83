"""A talent's faces and rights: `mixip enroll`, `mixip faces list|delete`, `mixip export`,
`mixip erase`."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from mixip.cli.arguments import read_file
from mixip.cli.commands.parsing import Subparsers
from mixip.cli.exports import refuse_existing, show_export
from mixip.cli.media import BYTES, upload_chunks
from mixip.cli.output import CliError, Output
from mixip.gateway.v1 import gateway_pb2
from mixip.matcher.v1 import matcher_pb2
from mixip.runtime.connection import Connection
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.paging import every_page


def enroll(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    return enroll_images(conn, out, talent=args.talent, images=args.images)


def enroll_images(conn: Connection, out: Output, *, talent: str, images: list[str]) -> int:
    stub, meta = conn.gateway()
    enrolled = []
    for image in images:
        data = read_file(image)
        with out.progress(f"enrolling {Path(image).name}", len(data), **BYTES) as progress:
            header = gateway_pb2.EnrollTalentRequest(
                header=gateway_pb2.EnrollHeader(talent_id=talent, request_id=uuid.uuid4().hex)
            )
            reply = stub.EnrollTalent(upload_chunks(header, data, progress), metadata=meta)
        enrolled.append({"image": image, "face_id": reply.face.face_id})
    out.result(
        {"talent_id": talent, "faces": enrolled},
        [f"enrolled {e['image']} as face {e['face_id']}" for e in enrolled],
    )
    return 0


def export(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    return export_talent(conn, out, talent=args.talent, output=args.output, force=args.force)


def export_talent(
    conn: Connection, out: Output, *, talent: str, output: str | None = None, force: bool = False
) -> int:
    refuse_existing(output, force=force)
    stub, meta = conn.gateway()
    with out.progress(f"exporting {talent}"):
        reply = stub.ExportTalentData(
            gateway_pb2.ExportTalentDataRequest(talent_id=talent), metadata=meta
        )
    document = json.loads(reply.document_json)
    show_export(
        out, document, reply.document_json, output, force=force, subject={"talent_id": talent}
    )
    return 0


def erase(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    if not args.yes and sys.stdin.isatty():
        answer = input(
            f"Erase {args.talent}: face vectors, consent ledger and audit links, for good? "
            "Type the talent id to confirm: "
        )
        if answer.strip() != args.talent:
            raise CliError("not erased (the confirmation did not match)", exit_code=1)
    return erase_talent(conn, out, talent=args.talent)


def erase_talent(conn: Connection, out: Output, *, talent: str) -> int:
    stub, meta = conn.gateway()
    reply = stub.EraseTalent(
        gateway_pb2.EraseTalentRequest(talent_id=talent, request_id=uuid.uuid4().hex),
        metadata=meta,
    )
    steps = [
        {"name": s.name, "count": s.count, "completed_at": s.completed_at.ToJsonString()}
        for s in reply.steps
    ]
    out.result(
        {
            "receipt_id": reply.receipt_id,
            "talent_id": reply.talent_id,
            "steps": steps,
            "completed_at": reply.completed_at.ToJsonString(),
        },
        [
            f"erased {reply.talent_id} (receipt {reply.receipt_id})",
            *(f"  {s['name']}: {s['count']}" for s in steps),
        ],
    )
    return 0


def _face_record_json(face: matcher_pb2.FaceRecord) -> dict[str, Any]:
    return {
        "face_id": face.face_id,
        "talent_id": face.talent_id,
        "box": [face.box.x, face.box.y, face.box.width, face.box.height],
        "detection_score": round(face.detection_score, 4),
        "engine": face.engine,
        "model": face.model,
        "created_at": face.created_at.ToJsonString(),
    }


def faces_list(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    pages = every_page(
        lambda token: stub.ListTalentFaces(
            gateway_pb2.ListTalentFacesRequest(
                talent_id=args.talent, page_size=MAX_BATCH, page_token=token
            ),
            metadata=meta,
        )
    )
    faces = [_face_record_json(f) for page in pages for f in page.faces]
    lines = [f"{args.talent}: {len(faces)} enrolled face(s)"] + [
        f"  {f['face_id']}  enrolled {f['created_at']}  box {f['box']}  ({f['engine']})"
        for f in faces
    ]
    out.result({"talent_id": args.talent, "faces": faces}, lines)
    return 0


def faces_delete(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    reply = stub.DeleteTalentFace(
        gateway_pb2.DeleteTalentFaceRequest(talent_id=args.talent, face_id=args.face_id),
        metadata=meta,
    )
    out.result(
        {"talent_id": args.talent, "deleted": _face_record_json(reply.face)},
        f"deleted face {reply.face.face_id} of {args.talent} (it no longer matches)",
    )
    return 0


def register_enroll(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """`mixip enroll`."""
    p = sub.add_parser("enroll", parents=[common], help="enroll a talent's face image(s)")
    p.add_argument("talent", help="the talent id (needs active biometric consent)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="photos with exactly one face each")
    p.set_defaults(run=enroll)


def register_rights(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """`mixip export` and `mixip erase`."""
    p = sub.add_parser("export", parents=[common], help="export a talent's data (JSON)")
    p.add_argument("talent", help="the talent id")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (mode 0600)")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    p.set_defaults(run=export)

    p = sub.add_parser("erase", parents=[common], help="erase a talent")
    p.add_argument("talent", help="the talent to erase")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation on a terminal")
    p.set_defaults(run=erase)


def register_faces(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """`mixip faces list|delete`."""
    faces = sub.add_parser("faces", help="a talent's enrolled faces").add_subparsers(
        dest="action", required=True
    )
    p = faces.add_parser("list", parents=[common], help="list a talent's enrolled faces")
    p.add_argument("talent", help="the talent id")
    p.set_defaults(run=faces_list)
    p = faces.add_parser("delete", parents=[common], help="delete one enrolled face")
    p.add_argument("talent", help="the talent id")
    p.add_argument("face_id", metavar="FACE_ID", help="the face, as `mixip faces list` shows it")
    p.set_defaults(run=faces_delete)
