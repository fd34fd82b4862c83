"""Pure audit logic: talent hashes and the per-account hash chain."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from mixip.runtime.times import as_utc

GENESIS_HASH = "0" * 64
# The kinds of event (audit.proto's EventKind values; events recorded before kinds existed are
# matches) and "no decision" (common.proto's REVIEW_DECISION_UNSPECIFIED).
KIND_MATCH = 1
KIND_REVIEW_DECISION = 2
NO_DECISION = 0


def talent_hash(salt: bytes, talent_id: str) -> bytes:
    """HMAC-SHA256(salt, talent id): linkable only while the salt exists."""
    return hmac.new(salt, talent_id.encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class EventContent:
    """Everything an event's hash covers (the talent only as its salted hash).

    `kind` and `decision` are covered for review decisions only: a match's canonical form is
    the one it had before kinds existed, so every chain recorded before them still verifies,
    while a review decision's decision cannot be edited without breaking its chain."""

    account_id: str
    sequence: int
    idempotency_key: str
    project_id: str
    media_id: str
    face_index: int
    label: int
    reason: int
    similarity: float
    talent_hash: bytes | None
    actor: str
    occurred_at: datetime
    recorded_at: datetime
    kind: int = KIND_MATCH
    decision: int = NO_DECISION

    def canonical(self) -> bytes:
        fields: dict[str, object] = {
            "account_id": self.account_id,
            "sequence": self.sequence,
            "idempotency_key": self.idempotency_key,
            "project_id": self.project_id,
            "media_id": self.media_id,
            "face_index": self.face_index,
            "label": self.label,
            "reason": self.reason,
            "similarity": self.similarity,
            "talent_hash": self.talent_hash.hex() if self.talent_hash else "",
            "actor": self.actor,
            "occurred_at": _instant(self.occurred_at),
            "recorded_at": _instant(self.recorded_at),
        }
        if self.kind != KIND_MATCH:
            fields |= {"kind": self.kind, "decision": self.decision}
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ChainedEvent:
    """A recorded event: its content and its link in the account's hash chain."""

    content: EventContent
    prev_hash: str
    event_hash: str


def _instant(value: datetime) -> str:
    return as_utc(value).isoformat(timespec="microseconds")


def chain_hash(prev_hash: str, content: EventContent) -> str:
    """Hex SHA-256 over the previous hash and the event's canonical content."""
    return link_hash(prev_hash, content.canonical())


def link_hash(prev_hash: str, canonical: bytes) -> str:
    """`chain_hash` of an event whose canonical content is already made (an append makes it
    once, for the chain and as the event's Merkle tree leaf)."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical).hexdigest()


@dataclass(frozen=True)
class StoredLink:
    """An event as read back for verification."""

    content: EventContent
    prev_hash: str
    event_hash: str


@dataclass(frozen=True)
class ChainVerdict:
    ok: bool
    checked: int
    first_broken_sequence: int = 0
    detail: str = ""


def verify_chain(
    links: Iterable[StoredLink],
    *,
    start_sequence: int,
    start_hash: str,
    head_sequence: int,
    head_hash: str,
) -> ChainVerdict:
    """Walks one account's chain from its checkpoint (or genesis) to its head.

    Catches edited events (hash mismatch), removed or reordered events (sequence gap or
    prev-hash mismatch), and a truncated tail (the head names a later event)."""
    expected_sequence, prev_hash, checked = start_sequence + 1, start_hash, 0
    for link in links:
        sequence = link.content.sequence
        if sequence != expected_sequence:
            return ChainVerdict(
                False, checked, expected_sequence, f"event {expected_sequence} is missing"
            )
        if link.prev_hash != prev_hash:
            return ChainVerdict(
                False, checked, sequence, f"event {sequence} does not follow the previous event"
            )
        checked += 1
        if chain_hash(prev_hash, link.content) != link.event_hash:
            return ChainVerdict(
                False, checked, sequence, f"event {sequence} was altered after it was recorded"
            )
        prev_hash, expected_sequence = link.event_hash, sequence + 1
    if expected_sequence - 1 != head_sequence or prev_hash != head_hash:
        return ChainVerdict(
            False, checked, expected_sequence, f"events after {expected_sequence - 1} are missing"
        )
    return ChainVerdict(True, checked)
