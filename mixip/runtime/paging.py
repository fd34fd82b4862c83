"""Opaque page tokens (AIP-158): a position plus a fingerprint of the filters it was made for."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from mixip.runtime.errors import InvalidArgument


def _fingerprint(filters: dict[str, Any]) -> str:
    canonical = json.dumps(filters, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_page_token(position: Any, filters: dict[str, Any]) -> str:
    payload = json.dumps({"p": position, "f": _fingerprint(filters)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_page_token(
    token: str, filters: dict[str, Any], *, kind: type = int, field_name: str = "page_token"
) -> Any:
    """The position stored in `token` (of type `kind`), or None for the first page."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        position, fingerprint = payload["p"], payload["f"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument.one(field_name, "not a token this service issued") from exc
    if not isinstance(position, kind) or isinstance(position, bool):
        raise InvalidArgument.one(field_name, "not a token this service issued")
    if fingerprint != _fingerprint(filters):
        raise InvalidArgument.one(
            field_name, "the filters changed since this token was issued; start from the first page"
        )
    return position
