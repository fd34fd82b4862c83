"""`mixip witness serve|public-key`: a C2SP tlog-witness for the audit log's checkpoints, run by
someone other than the mesh's operator (docs/audit-log.md#witnesses).

The protocol is `mixip.tlog.witness`; this module serves its `add-checkpoint` over HTTP
(Starlette on uvicorn, as the review page) and keeps the witness key in a 0600 file.
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

from mixip.cli.commands.parsing import Subparsers
from mixip.cli.output import CliError, Output
from mixip.runtime.connection import Connection
from mixip.runtime.files import write_private
from mixip.tlog.cosignature import Cosigner
from mixip.tlog.note import Ed25519Signer, Ed25519Verifier, NoteError
from mixip.tlog.witness import Witness, WitnessState

MAX_BODY = 64 * 1024  # 63 proof lines and a checkpoint with its signatures fit many times over


def _cosigner(key_file: Path, name: str | None) -> Cosigner:
    """The witness key in `key_file` (a note signer key, `PRIVATE+KEY+<name>+...`), made there
    (0600) when the file does not exist and a name is given."""
    if not key_file.exists():
        if not name:
            raise CliError(
                f"{key_file} does not exist; pass --name to make a witness key there", exit_code=2
            )
        try:
            signer = Ed25519Signer.generate(name)
        except NoteError as exc:
            raise CliError(f"--name: {exc}", exit_code=2) from None
        write_private(key_file, (signer.skey + "\n").encode())
    try:
        signer = Ed25519Signer.from_skey(key_file.read_text().strip())
    except NoteError as exc:
        raise CliError(f"{key_file}: {exc}", exit_code=2) from None
    if name and signer.name != name:
        raise CliError(
            f"{key_file} holds the key of witness {signer.name!r}, not {name!r}", exit_code=2
        )
    return Cosigner(signer.name, signer.seed)


def public_key(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    cosigner = _cosigner(Path(args.key_file), args.name)
    vkey = cosigner.verifier().vkey
    out.result({"name": cosigner.name, "vkey": vkey}, vkey)
    return 0


def serve(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    cosigner = _cosigner(Path(args.key_file), args.name)
    logs = {}
    for vkey in args.log:
        try:
            verifier = Ed25519Verifier.from_vkey(vkey)
        except NoteError as exc:
            raise CliError(f"--log {vkey!r}: {exc}", exit_code=2) from None
        logs[verifier.name] = verifier
    state = Path(args.state)
    try:
        witness = Witness(cosigner, logs, WitnessState(state))
    except (ValueError, KeyError, NoteError) as exc:
        raise CliError(f"--state {state}: not a witness state file ({exc})", exit_code=2) from None

    async def add_checkpoint(request: Request) -> PlainTextResponse:
        body = await request.body()
        if len(body) > MAX_BODY:
            return PlainTextResponse("request too large\n", status_code=413)
        reply = witness.add_checkpoint(body)  # short and CPU-bound; one at a time anyway
        return PlainTextResponse(reply.body, reply.status, media_type=reply.content_type)

    app = Starlette(routes=[Route("/add-checkpoint", add_checkpoint, methods=["POST"])])
    host, _, port = args.listen.rpartition(":")
    listener = socket.create_server((host, int(port)))
    address = f"http://{host}:{listener.getsockname()[1]}"
    out.result(
        {"event": "ready", "url": address, "name": cosigner.name, "logs": sorted(logs)},
        f"witness {cosigner.name} cosigning for {len(logs)} log(s) at {address}",
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[listener])
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    witness = sub.add_parser("witness", help="a tlog-witness for audit checkpoints").add_subparsers(
        dest="action", required=True
    )
    p = witness.add_parser("serve", parents=[common], help="cosign checkpoints over HTTP")
    p.add_argument("--key-file", required=True, help="the witness key (made 0600 if missing)")
    p.add_argument("--name", help="the witness's name (needed to make its key)")
    p.add_argument(
        "--log",
        action="append",
        default=[],
        metavar="VKEY",
        help="a log to witness: its public key (`mixip audit public-key`); repeatable",
    )
    p.add_argument("--state", required=True, help="the file keeping each log's last checkpoint")
    p.add_argument(
        "--listen",
        default="127.0.0.1:7380",
        metavar="HOST:PORT",
        help="where to serve (port 0: any)",
    )
    p.set_defaults(run=serve)
    p = witness.add_parser("public-key", parents=[common], help="print the witness's vkey")
    p.add_argument("--key-file", required=True, help="the witness key (made 0600 if missing)")
    p.add_argument("--name", help="the witness's name (needed to make its key)")
    p.set_defaults(run=public_key)
