"""`mixip audit ...`: read the audit log, verify its hash chain and checkpoints, prove events
(receipts that verify offline) and the log's consistency."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from mixip.cli.arguments import read_file, time_option
from mixip.cli.commands.parsing import Subparsers
from mixip.cli.media import enum_name
from mixip.cli.output import CliError, Output
from mixip.common.v1 import common_pb2
from mixip.gateway.v1 import admin_pb2, gateway_pb2
from mixip.runtime.connection import Connection
from mixip.runtime.files import write_private
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.paging import every_page
from mixip.tlog.checkpoint import Checkpoint, open_checkpoint
from mixip.tlog.cosignature import CosignatureVerifier
from mixip.tlog.merkle import leaf_hash
from mixip.tlog.note import Ed25519Verifier, NoteError, b64decode, b64encode
from mixip.tlog.proof import ProofError, verify_consistency, verify_inclusion
from mixip.tlog.receipt import Receipt, ReceiptError, verify_receipt


def list_audit_events(
    conn: Connection,
    out: Output,
    *,
    talent: str | None = None,
    project: str | None = None,
    since: str | None = None,
) -> int:
    since_time = time_option(since, "--since")
    stub, meta = conn.gateway()
    pages = every_page(
        lambda token: stub.ListAuditEvents(
            gateway_pb2.ListAuditEventsRequest(
                talent_id=talent or "",
                project_id=project or "",
                since=since_time,
                page_size=MAX_BATCH,
                page_token=token,
            ),
            metadata=meta,
        )
    )
    events = [e for page in pages for e in page.events]
    documents = [
        {
            "sequence": e.sequence,
            "occurred_at": e.occurred_at.ToJsonString(),
            "project_id": e.project_id,
            "media_id": e.media_id,
            "face_index": e.face_index,
            "label": enum_name(common_pb2.FaceLabel, e.label, "FACE_LABEL_"),
            "reason": enum_name(common_pb2.LabelReason, e.reason, "LABEL_REASON_"),
            "similarity": round(e.similarity, 4),
            "talent_linked": e.talent_linked,
            "actor": e.actor,
            "leaf": b64encode(e.leaf),
        }
        for e in events
    ]
    lines = [f"{len(documents)} event(s)"] + [
        f"  #{d['sequence']} {d['occurred_at']} {d['project_id']} {d['media_id']}"
        f"[{d['face_index']}] {d['label']} ({d['reason']})"
        for d in documents
    ]
    out.result({"events": documents}, lines)
    return 0


def audit_list(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    return list_audit_events(conn, out, talent=args.talent, project=args.project, since=args.since)


def audit_verify(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    if args.key and not args.checkpoint:
        raise CliError("--key checks checkpoints: it needs --checkpoint FILE", exit_code=2)
    if args.checkpoint:
        keys = _kept_keys(args.key) if args.key else None
        return verify_against_checkpoint(conn, out, read_file(args.checkpoint), keys)
    return verify_audit_log(conn, out)


def _kept_keys(path: str) -> KeptKeys:
    """The verifier keys an auditor keeps in `path`, one per line (as `audit public-key` prints
    them; several across a rotation of the log's key)."""
    try:
        lines = read_file(path).decode().split()
        keys = [Ed25519Verifier.from_vkey(line) for line in lines]
    except (UnicodeDecodeError, NoteError) as exc:
        raise CliError(f"{path} is not a file of verifier keys: {exc}", exit_code=2) from None
    if not keys:
        raise CliError(f"{path} holds no verifier key", exit_code=2)
    return KeptKeys(f"the keys kept in {path}", keys)


def verify_audit_log(conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    reply = stub.VerifyAuditLog(gateway_pb2.VerifyAuditLogRequest(), metadata=meta)
    document = {
        "ok": reply.ok,
        "events_checked": reply.events_checked,
        "first_broken_sequence": reply.first_broken_sequence or None,
        "detail": reply.detail,
    }
    text = (
        f"audit log verifies ({reply.events_checked} events checked)"
        if reply.ok
        else f"audit log does NOT verify: {reply.detail}"
    )
    out.result(document, text)
    return 0 if reply.ok else 3


def _signed_checkpoint(conn: Connection) -> str:
    stub, meta = conn.gateway()
    return stub.GetAuditCheckpoint(
        gateway_pb2.GetAuditCheckpointRequest(), metadata=meta
    ).checkpoint


def _log_verifier(conn: Connection) -> Ed25519Verifier:
    stub, meta = conn.gateway()
    reply = stub.GetAuditLogPublicKey(gateway_pb2.GetAuditLogPublicKeyRequest(), metadata=meta)
    return Ed25519Verifier.from_vkey(reply.verifier_key)


@dataclass(frozen=True)
class KeptKeys:
    """The keys a verification trusts, and what to call them in a verdict."""

    called: str
    verifiers: list[Ed25519Verifier]

    def open(self, note: str | bytes) -> Checkpoint:
        """The checkpoint in `note` if one of the keys signed it; the last key's NoteError if
        none did."""
        *others, last = self.verifiers
        for verifier in others:
            try:
                return open_checkpoint(note, verifier).checkpoint
            except NoteError:
                continue
        return open_checkpoint(note, last).checkpoint


def _b64(hashes: Iterable[bytes]) -> list[str]:
    return [b64encode(h) for h in hashes]


def audit_checkpoint(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    note = _signed_checkpoint(conn)
    checkpoint = open_checkpoint(note, _log_verifier(conn)).checkpoint
    document = {
        "checkpoint": note,
        "tree_size": checkpoint.size,
        "root_hash": b64encode(checkpoint.root),
    }
    if args.output:
        write_private(Path(args.output), note)
        out.result(document, f"checkpoint of {checkpoint.size} events written to {args.output}")
    else:
        out.result(document, note.rstrip("\n"))
    return 0


def audit_public_key(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    vkey = _log_verifier(conn).vkey
    out.result({"verifier_key": vkey}, vkey)
    return 0


def audit_prove(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    if args.event < 1:
        raise CliError("EVENT_ID must be an event's sequence number (1 or more)")
    if args.output and not args.receipt:
        raise CliError("-o writes a receipt: it needs --receipt", exit_code=2)
    note = _signed_checkpoint(conn)
    verifier = _log_verifier(conn)
    size = open_checkpoint(note, verifier).checkpoint.size
    stub, meta = conn.gateway()
    proof = stub.GetAuditInclusionProof(
        gateway_pb2.GetAuditInclusionProofRequest(sequence=args.event, tree_size=size),
        metadata=meta,
    )
    if args.receipt:
        return _write_receipt(args, out, note, verifier, proof)
    hashes = _b64(proof.hashes)
    document = {
        "leaf_index": proof.leaf_index,
        "tree_size": proof.tree_size,
        "proof": hashes,
        "leaf": b64encode(proof.leaf) if proof.leaf else None,
    }
    out.result(
        document,
        [f"event #{args.event} is leaf {proof.leaf_index} of {proof.tree_size}"]
        + [f"  {h}" for h in hashes],
    )
    return 0


def _write_receipt(
    args: argparse.Namespace,
    out: Output,
    note: str,
    verifier: Ed25519Verifier,
    proof: gateway_pb2.GetAuditInclusionProofResponse,
) -> int:
    """The event's C2SP tlog-proof file: the published checkpoint (with its witnesses'
    cosignatures), the proof, and the event's leaf bytes as its extra data, checked here before
    it is handed out."""
    if not proof.leaf:
        raise CliError(
            f"event #{args.event} was purged: its leaf is still in the tree, but its bytes are "
            "gone, so no receipt can carry them"
        )
    text = Receipt(proof.leaf_index, tuple(proof.hashes), note, extra=proof.leaf).text
    try:
        verify_receipt(text, None, verifier)
    except ReceiptError as exc:
        raise CliError(
            f"the log's receipt for event #{args.event} does not verify: {exc}"
        ) from None
    document = {
        "sequence": args.event,
        "leaf_index": proof.leaf_index,
        "tree_size": proof.tree_size,
        "receipt": text,
    }
    if args.output:
        write_private(Path(args.output), text)
        out.result(
            document,
            f"receipt of event #{args.event} (leaf {proof.leaf_index} of {proof.tree_size}) "
            f"written to {args.output}",
        )
    else:
        out.result(document, text.rstrip("\n"))
    return 0


def audit_verify_receipt(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    """Checks a receipt offline, with the keys the auditor keeps: the log's (one a line in
    --key, several across a rotation) and the witnesses' (--witnesses, at least --quorum)."""
    keys = _kept_keys(args.key)
    witnesses = _witness_keys(args.witnesses) if args.witnesses else []
    quorum = args.quorum if args.quorum is not None else min(1, len(witnesses))
    if not 0 <= quorum <= len(witnesses):
        raise CliError(
            f"--quorum must be between 0 and the {len(witnesses)} witness key(s) given",
            exit_code=2,
        )
    leaf = None
    if args.leaf is not None:
        try:
            leaf = b64decode(args.leaf, "--leaf")
        except NoteError as exc:
            raise CliError(
                f"{exc} (give the event's leaf as `audit list --json` prints it)", exit_code=2
            ) from None
    try:
        text = read_file(args.file).decode()
    except UnicodeDecodeError:
        text = ""  # refused below as not a proof file
    verified, failure = None, None
    for verifier in keys.verifiers:  # across a rotation: whichever kept key signed it
        try:
            verified = verify_receipt(text, leaf, verifier, witnesses, quorum)
            break
        except ReceiptError as exc:
            if failure is None or exc.part != "signature":
                failure = exc
    if verified is None:
        assert failure is not None
        out.result(
            {"ok": False, "broken": failure.part, "detail": str(failure)},
            f"receipt does NOT verify ({failure.part}): {failure}",
        )
        return 3
    checkpoint = verified.checkpoint
    try:
        event = json.loads(verified.leaf)
    except ValueError:
        event = None
    document = {
        "ok": True,
        "origin": checkpoint.origin,
        "tree_size": checkpoint.size,
        "leaf_index": verified.index,
        "leaf": b64encode(verified.leaf),
        "witnesses": list(verified.signed.witnesses),
        "event": event,
    }
    what = (
        f"event #{event['sequence']}"
        if isinstance(event, dict) and "sequence" in event
        else "the leaf"
    )
    cosigned = (
        f", cosigned by {', '.join(verified.signed.witnesses)}" if verified.signed.witnesses else ""
    )
    out.result(
        document,
        f"receipt verifies: {what} is leaf {verified.index} of the tree of {checkpoint.size} "
        f"events signed by {checkpoint.origin}{cosigned}",
    )
    return 0


def _witness_keys(path: str) -> list[CosignatureVerifier]:
    """The witnesses' verifier keys in `path`, one a line (as `mixip witness public-key`
    prints them)."""
    try:
        keys = [CosignatureVerifier.from_vkey(line) for line in read_file(path).decode().split()]
    except (UnicodeDecodeError, NoteError) as exc:
        raise CliError(f"{path} is not a file of witness keys: {exc}", exit_code=2) from None
    if not keys:
        raise CliError(f"{path} holds no witness key", exit_code=2)
    return keys


def audit_consistency(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    if args.start.isdigit():
        start = int(args.start)
    else:
        try:
            start = Checkpoint.parse(_note_text(read_file(args.start).decode())).size
        except (NoteError, UnicodeDecodeError):
            raise CliError(f"{args.start} is neither a tree size nor a checkpoint") from None
    size = open_checkpoint(_signed_checkpoint(conn), _log_verifier(conn)).checkpoint.size
    if start > size:
        raise CliError(f"the log's tree has {size} events, fewer than {start}")
    stub, meta = conn.gateway()
    proof = stub.GetAuditConsistencyProof(
        gateway_pb2.GetAuditConsistencyProofRequest(from_size=start, to_size=size),
        metadata=meta,
    )
    hashes = _b64(proof.hashes)
    document = {"from_size": start, "to_size": size, "proof": hashes}
    out.result(document, [f"tree of {size} events extends {start}"] + [f"  {h}" for h in hashes])
    return 0


def _note_text(note: str) -> str:
    """The text of a signed note (before the blank line and its signatures)."""
    return note.split("\n\n", 1)[0] + "\n"


# What the log answers when it cannot sign its tree or prove it (a fork, a missing node).
_UNPROVABLE = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)


def verify_against_checkpoint(
    conn: Connection, out: Output, kept_note: str | bytes, keys: KeptKeys | None = None
) -> int:
    """Whether the log still extends a checkpoint kept from before: its signature, the current
    tree's consistency with it, and every event's inclusion (docs/audit-log.md). The
    checkpoints are checked with `keys` (the auditor's own), else with the key the log serves."""
    if keys is None:
        keys = KeptKeys("the log's key", [_log_verifier(conn)])
    try:
        broken = _what_broke(conn, kept_note, keys)
    except grpc.RpcError as exc:
        if exc.code() not in _UNPROVABLE:
            raise
        broken = ("tree", f"the log cannot prove it: {exc.details()}")
    if broken is None:
        out.result({"ok": True}, "audit log extends the kept checkpoint; every event is in it")
        return 0
    what, detail = broken
    out.result(
        {"ok": False, "broken": what, "detail": detail}, f"audit log does NOT verify: {detail}"
    )
    return 3


def _what_broke(conn: Connection, kept_note: str | bytes, keys: KeptKeys) -> tuple[str, str] | None:
    try:
        kept = keys.open(kept_note)
    except NoteError as exc:
        return "signature", f"the kept checkpoint does not verify with {keys.called}: {exc}"
    stub, meta = conn.gateway()
    chain = stub.VerifyAuditLog(gateway_pb2.VerifyAuditLogRequest(), metadata=meta)
    if not chain.ok:
        return "chain", f"the hash chain is broken: {chain.detail}"
    events = [
        e
        for page in every_page(
            lambda token: stub.ListAuditEvents(
                gateway_pb2.ListAuditEventsRequest(page_size=MAX_BATCH, page_token=token),
                metadata=meta,
            )
        )
        for e in page.events
    ]
    try:
        current = keys.open(_signed_checkpoint(conn))
    except NoteError as exc:
        return (
            "signature",
            f"the log's current checkpoint does not verify with {keys.called}: {exc}",
        )
    if current.size < kept.size:
        return "consistency", (
            f"the log shrank: its tree has {current.size} events, the kept checkpoint {kept.size}"
        )
    proof = stub.GetAuditConsistencyProof(
        gateway_pb2.GetAuditConsistencyProofRequest(from_size=kept.size, to_size=current.size),
        metadata=meta,
    )
    try:
        verify_consistency(kept.size, current.size, kept.root, current.root, proof.hashes)
    except ProofError as exc:
        return "consistency", f"the log's tree does not extend the kept checkpoint: {exc}"
    for event in events:
        included = stub.GetAuditInclusionProof(
            gateway_pb2.GetAuditInclusionProofRequest(
                sequence=event.sequence, tree_size=current.size
            ),
            metadata=meta,
        )
        try:
            verify_inclusion(
                leaf_hash(event.leaf),
                included.leaf_index,
                current.size,
                included.hashes,
                current.root,
            )
        except ProofError:
            return "inclusion", f"event #{event.sequence} is not in the log's signed tree"
    return None


def audit_vault_status(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    stub, meta = conn.admin()
    reply = stub.GetVaultStatus(admin_pb2.GetVaultStatusRequest(), metadata=meta)
    document = {"key_version": reply.key_version, "rotated_at": reply.rotated_at.ToJsonString()}
    out.result(
        document,
        f"audit vault: key version {reply.key_version}, made {document['rotated_at']}",
    )
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """`mixip audit list|verify|checkpoint|public-key|prove|verify-receipt|consistency|
    vault-status`."""
    audit = sub.add_parser("audit", help="read or verify the audit log").add_subparsers(
        dest="action", required=True
    )
    p = audit.add_parser("list", parents=[common], help="list audit events")
    p.add_argument("--talent", help="only events linked to this talent (while linkable)")
    p.add_argument("--project", help="only events of this project")
    p.add_argument("--since", metavar="ISO8601", help="only events at or after this time")
    p.set_defaults(run=audit_list)
    p = audit.add_parser("verify", parents=[common], help="verify the hash chain")
    p.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="also check that the log extends this kept checkpoint and holds every event",
    )
    p.add_argument(
        "--key",
        metavar="FILE",
        help="check the checkpoints with the verifier keys kept in FILE (one a line), not with "
        "the key the log serves",
    )
    p.set_defaults(run=audit_verify)
    p = audit.add_parser(
        "checkpoint", parents=[common], help="the log's signed checkpoint (keep it)"
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write it to FILE (mode 0600)")
    p.set_defaults(run=audit_checkpoint)
    p = audit.add_parser(
        "public-key", parents=[common], help="the key that verifies the log's checkpoints"
    )
    p.set_defaults(run=audit_public_key)
    p = audit.add_parser("prove", parents=[common], help="an event's inclusion proof")
    p.add_argument("event", type=int, metavar="EVENT_ID", help="the event's sequence number")
    p.add_argument(
        "--receipt",
        action="store_true",
        help="the proof as one offline file (C2SP tlog-proof: the published checkpoint, the "
        "proof, the event's leaf) that verifies with the log's public key alone",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write the receipt to FILE (mode 0600)")
    p.set_defaults(run=audit_prove)
    p = audit.add_parser(
        "verify-receipt",
        parents=[common],
        help="check a receipt offline, with the log's public key alone",
    )
    p.add_argument("file", metavar="FILE", help="a receipt (`audit prove --receipt -o FILE`)")
    p.add_argument(
        "--key",
        metavar="FILE",
        required=True,
        help="the log's verifier keys kept in FILE, one a line (`audit public-key`)",
    )
    p.add_argument(
        "--leaf",
        metavar="BASE64",
        help="the event's leaf as `audit list --json` prints it (default: the leaf the receipt "
        "carries, which the proof then authenticates)",
    )
    p.add_argument(
        "--witnesses",
        metavar="FILE",
        help="witnesses' verifier keys kept in FILE, one a line (`mixip witness public-key`)",
    )
    p.add_argument(
        "--quorum",
        type=int,
        metavar="N",
        help="cosignatures of those witnesses required (default 1 with --witnesses)",
    )
    p.set_defaults(run=audit_verify_receipt)
    p = audit.add_parser(
        "consistency", parents=[common], help="the proof the log extends an older tree"
    )
    p.add_argument(
        "--from",
        dest="start",
        required=True,
        metavar="FILE_OR_SIZE",
        help="a kept checkpoint file, or a tree size",
    )
    p.set_defaults(run=audit_consistency)
    p = audit.add_parser(
        "vault-status", parents=[common], help="the salt vault's key version (admin)"
    )
    p.set_defaults(run=audit_vault_status)
