"""What the gateway stores naming a talent, sealed under that talent's data key (its vault).

- a face result's talent: `talent_ref` (an HMAC under the talent's key, `TalentKey.ref`: what
  queries filter on) and the talent id sealed under the talent's key;
- a review decision's note: sealed under the key of the face's talent, else the account's;
- a queued audit event (it names the talent): sealed under the account's key;
- an erasure intent's talent id: sealed under the talent's key, which its completion destroys.

An account's own key is the vault's key of `ACCOUNT_SUBJECT`, which no talent id can be. A row
whose key is gone (destroyed by an erasure, or a copy taken before a rotation) is read as
absent: a face as UNKNOWN / TALENT_ERASED, a note as "", an event or an intent not at all.
Databases sealed before this (clear columns, now `legacy_*`) are sealed at start-up
(`seal_legacy`). See docs/erasure.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.store import (
    AuditOutboxRow,
    ErasureIntentRow,
    MediaFaceRow,
    ReviewDecisionRow,
    face_context,
    face_result,
)
from mixip.common.v1 import common_pb2
from mixip.runtime import logs
from mixip.runtime.db import Database
from mixip.runtime.vault import TalentKey, Vault

logger = logging.getLogger("mixip.gateway")

# The vault subject of an account's own key: talent ids are printable (mixip.runtime.validation
# ID_PATTERN), so none can start with NUL.
ACCOUNT_SUBJECT = "\x00account"
SEALED_TABLES = (
    "gateway_media_faces",
    "gateway_review_decisions",
    "gateway_audit_outbox",
    "gateway_erasure_intents",
    "gateway_talent_keys",
)
_LEGACY_BATCH = 500


def note_context(decision_id: str) -> bytes:
    return f"gateway_review_decisions/{decision_id}".encode()


def intent_context(intent_id: str) -> bytes:
    return f"gateway_erasure_intents/{intent_id}".encode()


OUTBOX_CONTEXT = b"gateway_audit_outbox"


class Seals:
    """The gateway's vault, as its tables use it."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    def ref(self, session: Session, account_id: str, talent_id: str) -> bytes | None:
        """The ref the talent's rows carry (None when the talent has no live key)."""
        return self.vault.ref(session, account_id, talent_id)

    def keys(
        self, session: Session, account_id: str, subjects: Iterable[str], *, create: bool
    ) -> dict[str, TalentKey]:
        """Data keys of these talents (and `ACCOUNT_SUBJECT`), by subject."""
        return self.vault.talent_keys(session, account_id, subjects, create=create)

    def by_ref(self, session: Session, refs: Iterable[bytes | None]) -> dict[bytes, TalentKey]:
        """The live data keys among these refs (no query when there are none)."""
        return self.vault.keys_by_ref(session, (r for r in refs if r is not None))

    def faces(self, session: Session, rows: list[MediaFaceRow]) -> list[common_pb2.FaceResult]:
        """Stored face results as the client sees them (a face whose key is gone: erased)."""
        keys = self.by_ref(session, (r.talent_ref for r in rows))
        return [face_result(r, keys.get(r.talent_ref) if r.talent_ref else None) for r in rows]

    def notes(self, session: Session, rows: list[ReviewDecisionRow]) -> dict[str, str]:
        """The decisions' notes by decision id ("" when none, or its key is gone)."""
        keys = self.by_ref(session, (r.note_ref for r in rows if r.sealed_note is not None))
        notes = {}
        for row in rows:
            key = keys.get(row.note_ref) if row.note_ref else None
            sealed = row.sealed_note
            opened = key.open_text(sealed, note_context(row.decision_id)) if key and sealed else ""
            notes[row.decision_id] = opened
        return notes

    def seal_note(
        self, session: Session, row: ReviewDecisionRow, note: str, talent_ref: bytes | None
    ) -> None:
        """Seals the decision's note under the key of the face's talent (`talent_ref`, when the
        face has one and its key lives), else under the account's key."""
        row.legacy_note = None
        if not note:
            return
        key = self.by_ref(session, [talent_ref]).get(talent_ref or b"")
        if key is None:
            key = self.keys(session, row.account_id, [ACCOUNT_SUBJECT], create=True)[
                ACCOUNT_SUBJECT
            ]
        row.note_ref = key.ref
        row.sealed_note = key.seal_text(note, note_context(row.decision_id))

    # -- start-up: sealing what an older gateway stored in clear ------------------------------

    def seal_legacy(self, db: Database) -> int:
        """Seals every row an older gateway left in clear (batches; idempotent; concurrent
        replicas seal each row once, under the write lock), then scrubs the old copies from
        the files. The number of rows sealed."""
        sealed = 0
        for step in (self._seal_faces, self._seal_notes, self._seal_events, self._seal_intents):
            while True:
                with db.write() as session:
                    done = step(session)
                if not done:
                    break
                sealed += done
        if sealed:
            db.scrub(SEALED_TABLES)
            logs.log(logger, "legacy rows sealed", rows=sealed)
        return sealed

    def _seal_faces(self, session: Session) -> int:
        rows = session.scalars(
            select(MediaFaceRow)
            .where(MediaFaceRow.legacy_talent_id.is_not(None))
            .limit(_LEGACY_BATCH)
            .with_for_update()
        ).all()
        for row in rows:
            talent = row.legacy_talent_id or ""
            key = self.keys(session, row.account_id, [talent], create=True)[talent]
            row.talent_ref = key.ref
            row.sealed_talent_id = key.seal_text(talent, face_context(row.media_id, row.face_index))
            row.legacy_talent_id = None
        return len(rows)

    def _seal_notes(self, session: Session) -> int:
        rows = session.scalars(
            select(ReviewDecisionRow)
            .where(ReviewDecisionRow.legacy_note.is_not(None))
            .limit(_LEGACY_BATCH)
            .with_for_update()
        ).all()
        for row in rows:
            face = session.get(MediaFaceRow, (row.media_id, row.face_index))
            talent_ref = face.talent_ref if face is not None else None
            self.seal_note(session, row, row.legacy_note or "", talent_ref)
        return len(rows)

    def _seal_events(self, session: Session) -> int:
        rows = session.scalars(
            select(AuditOutboxRow)
            .where(AuditOutboxRow.legacy_event.is_not(None))
            .limit(_LEGACY_BATCH)
            .with_for_update()
        ).all()
        for row in rows:
            key = self.keys(session, row.account_id, [ACCOUNT_SUBJECT], create=True)
            row.sealed_event = key[ACCOUNT_SUBJECT].seal(row.legacy_event or b"", OUTBOX_CONTEXT)
            row.legacy_event = None
        return len(rows)

    def _seal_intents(self, session: Session) -> int:
        rows = session.scalars(
            select(ErasureIntentRow)
            .where(ErasureIntentRow.legacy_talent_id.is_not(None))
            .limit(_LEGACY_BATCH)
            .with_for_update()
        ).all()
        for row in rows:
            talent = row.legacy_talent_id or ""
            row.legacy_talent_id = None
            key = self.keys(session, row.account_id, [talent], create=True)[talent]
            row.talent_ref = key.ref
            row.sealed_talent_id = key.seal_text(talent, intent_context(row.intent_id))
        return len(rows)
