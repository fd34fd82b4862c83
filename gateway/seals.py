"""What the gateway stores naming a talent, sealed under that talent's data key (its vault).

- a face result's talent: `talent_ref` (an HMAC under the talent's key, `TalentKey.ref`: what
  queries filter on) and the talent id sealed under the talent's key;
- a review decision's note: sealed under the key of the face's talent, else the account's;
  its retry digest (a request id's) is keyed with the same key (the account's when no note);
- a media's file name (the caller's, which may name a talent): sealed under the media's own
  key (subject `media_subject`), which an erasure of a talent matched in it destroys;
- a queued audit event (it names the talent): sealed under the account's key;
- an erasure intent's talent id: sealed under the talent's key, which its completion destroys.

An account's own key is the vault's key of `ACCOUNT_SUBJECT`, a media's that of
`media_subject(media_id)`, which no talent id can be. A row whose key is gone (destroyed by an
erasure, or a copy taken before a rotation) is read as absent: a face as UNKNOWN /
TALENT_ERASED, a note or a file name as "", an event or an intent not at all, a retry digest as
none (a retry is then compared on nothing, as after an erasure). Databases sealed before this
(clear columns and plain digests, now `legacy_*`) are sealed at start-up (`seal_legacy`). See
docs/erasure.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from gateway.store import (
    AuditOutboxRow,
    ErasureIntentRow,
    MediaFaceRow,
    MediaRow,
    ReviewDecisionRow,
    face_context,
    face_result,
)
from mixip.common.v1 import common_pb2
from mixip.runtime import logs
from mixip.runtime.db import Database, rowcount
from mixip.runtime.vault import TalentKey, Vault

logger = logging.getLogger("mixip.gateway")

# The vault subject of an account's own key: talent ids are printable (mixip.runtime.validation
# ID_PATTERN), so none can start with NUL.
ACCOUNT_SUBJECT = "\x00account"
SEALED_TABLES = (
    "gateway_media",
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


def filename_context(media_id: str) -> bytes:
    return f"gateway_media/{media_id}".encode()


def job_filename_context(job_id: str) -> bytes:
    return b"gateway_jobs/filename/" + job_id.encode()


def media_subject(media_id: str) -> str:
    """The vault subject of a media's own key (no talent id starts with NUL)."""
    return f"\x00media:{media_id}"


def seal_filename(row: MediaRow, name: str, key: TalentKey | None) -> None:
    """Seals the media's file name under its own key (`media_subject`); none kept without a
    key (an upload fenced by an erasure keeps no name)."""
    row.legacy_filename = None
    if name and key is not None:
        row.filename_ref = key.ref
        row.sealed_filename = key.seal_text(name, filename_context(row.media_id))


def decision_digest(
    key: TalentKey, media_id: str, face_index: int, decision: int, note: str
) -> str:
    """The retry digest of a decision with this content, keyed: nobody without the key can test
    a guessed note against it."""
    parts = (media_id, str(face_index), str(decision), note)
    return key.digest("gateway_review_decisions", *(p.encode() for p in parts)).hex()


def _digest_of(key: TalentKey, row: ReviewDecisionRow, note: str) -> str:
    return decision_digest(key, row.media_id, row.face_index, row.decision, note)


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

    def filenames(self, session: Session, rows: list[MediaRow]) -> dict[str, str]:
        """The media's file names by media id ("" when none, or its key is gone): one query."""
        keys = self.by_ref(session, (r.filename_ref for r in rows if r.sealed_filename))
        names = {}
        for row in rows:
            key = keys.get(row.filename_ref) if row.filename_ref else None
            sealed = row.sealed_filename
            names[row.media_id] = (
                key.open_text(sealed, filename_context(row.media_id)) if key and sealed else ""
            )
        return names

    def destroy_media_keys(
        self, session: Session, media: Iterable[tuple[str, str]], *, owe_rotation: bool
    ) -> int:
        """Destroys the keys of these media ((account id, media id)): their sealed file names
        stop opening, here at once and, with `owe_rotation`, in every older copy after the
        rotation it owes. How many existed."""
        model = self.vault.secret_model
        lookups = [self.vault.talent_lookup(session, a, media_subject(m)) for a, m in media]
        destroyed = 0
        for start in range(0, len(lookups), _LEGACY_BATCH):
            batch = lookups[start : start + _LEGACY_BATCH]
            destroyed += rowcount(session.execute(delete(model).where(model.lookup.in_(batch))))
        if destroyed and owe_rotation:
            self.vault.owe_rotation(session)
        return destroyed

    def seal_decision(
        self, session: Session, row: ReviewDecisionRow, note: str, talent_ref: bytes | None
    ) -> None:
        """Seals the decision's note under the key of the face's talent (`talent_ref`, when the
        face has one and its key lives), else under the account's key; and keys its retry
        digest (a decision with a request id) with that key, the account's when it has no
        note."""
        row.legacy_note = row.legacy_digest = None
        key = self.by_ref(session, [talent_ref]).get(talent_ref or b"") if note else None
        if key is None and (note or row.request_id):
            key = self.keys(session, row.account_id, [ACCOUNT_SUBJECT], create=True)[
                ACCOUNT_SUBJECT
            ]
        if note and key is not None:
            row.note_ref = key.ref
            row.sealed_note = key.seal_text(note, note_context(row.decision_id))
        row.digest = _digest_of(key, row, note) if key and row.request_id else None

    def decision_key(
        self, session: Session, row: ReviewDecisionRow, *, create: bool = False
    ) -> TalentKey | None:
        """The key of a decision's note and retry digest (None: gone)."""
        if row.sealed_note is not None:
            return self.by_ref(session, [row.note_ref]).get(row.note_ref or b"")
        keys = self.keys(session, row.account_id, [ACCOUNT_SUBJECT], create=create)
        return keys.get(ACCOUNT_SUBJECT)

    # -- start-up: sealing what an older gateway stored in clear ------------------------------

    def seal_legacy(self, db: Database) -> int:
        """Seals every row an older gateway left in clear (batches; idempotent; concurrent
        replicas seal each row once, under the write lock), then scrubs the old copies from
        the files. The number of rows sealed."""
        sealed = 0
        steps = (
            self._seal_faces,
            self._seal_notes,
            self._key_digests,
            self._seal_events,
            self._seal_intents,
            self._seal_filenames,
        )
        for step in steps:
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
            self.seal_decision(session, row, row.legacy_note or "", talent_ref)
        return len(rows)

    def _key_digests(self, session: Session) -> int:
        """Plain retry digests of decisions whose notes an older gateway sealed: keyed again
        from the content the row keeps (a note whose key is gone leaves no digest)."""
        rows = session.scalars(
            select(ReviewDecisionRow)
            .where(ReviewDecisionRow.legacy_digest.is_not(None))
            .limit(_LEGACY_BATCH)
            .with_for_update()
        ).all()
        notes = self.notes(session, list(rows))
        for row in rows:
            key = self.decision_key(session, row, create=True)
            row.legacy_digest = None
            row.digest = _digest_of(key, row, notes[row.decision_id]) if key else None
        return len(rows)

    def _seal_filenames(self, session: Session) -> int:
        rows = session.scalars(
            select(MediaRow)
            .where(MediaRow.legacy_filename.is_not(None))
            .limit(_LEGACY_BATCH)
            .with_for_update()
        ).all()
        named: dict[str, set[str]] = {}
        for row in rows:
            if row.legacy_filename:
                named.setdefault(row.account_id, set()).add(media_subject(row.media_id))
        keys = {
            subject: key
            for account, subjects in named.items()
            for subject, key in self.keys(session, account, subjects, create=True).items()
        }
        for row in rows:
            seal_filename(row, row.legacy_filename or "", keys.get(media_subject(row.media_id)))
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
