"""Idempotency keys (AIP-155): one rule and one error for every write that takes a key.

A retry with the same key must repeat the first call's content; it then gets the first call's
result. The same key with other content is refused with FAILED_PRECONDITION, reason
`IDEMPOTENCY_KEY_REUSED`, everywhere (never answered with the first call's result, which would
silently drop the second request). Where the content is too large to keep (media, images), its
`content_digest` is stored next to the key and compared.
"""

from __future__ import annotations

import hashlib

from mixip.runtime.errors import FailedPrecondition

REASON = "IDEMPOTENCY_KEY_REUSED"


def content_digest(*parts: bytes | str) -> str:
    """SHA-256 (hex) of the parts, unambiguously framed (length-prefixed)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def key_reused(field: str = "request_id", key: str = "") -> FailedPrecondition:
    """The error of a key reused with other content (`key` is quoted when given)."""
    named = f"{field} {key!r}" if key else field
    return FailedPrecondition(
        f"{named} was already used for a request with other content; a retry must repeat the "
        "first request exactly (use a new key for a new request)",
        reason=REASON,
    )


def require_same(first: object, again: object, field: str = "request_id", key: str = "") -> None:
    """Refuses a retry whose content (`again`) differs from the first call's (`first`)."""
    if first != again:
        raise key_reused(field, key)
