"""A failed call as one line in the command line's words: `invalid argument: the file: not a
supported image`, not the contract's field names (`chunk: ...`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from mixip.runtime.errors import error_details

if TYPE_CHECKING:
    from mixip.runtime.connection import Connection

# A request field (as a BadRequest names it) -> what the user typed or passed.
FIELD_WORDS = {
    "chunk": "the file",
    "image": "the image",
    "media": "the file",
    "header": "the file",
    "filename": "the file name",
    "header.filename": "the file name",
    "talent_id": "TALENT",
    "header.talent_id": "TALENT",
    "project_id": "--project",
    "header.project_id": "--project",
    "account_id": "ACCOUNT",
    "owner_account_id": "--owner",
    "media_id": "MEDIA_ID",
    "face_id": "FACE_ID",
    "job_id": "JOB_ID",
    "webhook_id": "ID",
    "api_key_id": "KEY_ID",
    "display_name": "--name",
    "name": "NAME",
    "note": "--note",
    "decision": "--decision",
    "label": "--label",
    "since": "--since",
    "as_of": "--as-of",
    "evidence.method": "--method",
    "evidence.policy_version": "--policy-version",
    "evidence.actor": "--actor",
}
# Fields the CLI fills itself: a fault there is the CLI's, named as it is.
_INTERNAL = ("request_id", "header.request_id", "page_token", "session_id", "sequence")


def field_words(name: str) -> str:
    return FIELD_WORDS.get(name, name if name in _INTERNAL else name.replace("_", " "))


def rpc_error_line(error: grpc.RpcError, conn: Connection) -> str:
    """`<status in words>: <what went wrong>`, fields named as the user knows them."""
    details = error_details(error)
    if details.code == grpc.StatusCode.UNAVAILABLE and not details.reason:
        message = f"the gateway at {conn.address()} is not reachable (is `mixip up` running?)"
    elif details.violations:
        message = "; ".join(f"{field_words(v.field)}: {v.description}" for v in details.violations)
    else:
        message = details.one_line()
    return f"{details.code.name.lower().replace('_', ' ')}: {message}"
