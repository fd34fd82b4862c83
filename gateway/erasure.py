"""Erasure as a fence: linearizable with every upload, enrollment and consent about the talent.

1. The intent is journaled (its own row, under the account's fence lock) before any step, so
   from that moment every upload commit refuses the talent, and the resumer (`ErasureResumer`)
   finishes an intent its caller abandoned (at start-up and every `resume_seconds`).
2. Consent first: the ledger is erased, so every consent check (the matcher's post-insert
   check of an enrollment, the consents a match labels with) refuses the talent from then.
3. The matcher's vectors: an enrollment that passed its post-insert check inserted before
   step 2, so this deletion sees its vector; one that had not deletes its own vector.
4. The account's queued audit events (gateway/audit_outbox.py) are delivered: those about the
   talent were queued by uploads that committed before the intent (later ones are fenced and
   queue none), and are hashed with the salt that step 5 destroys.
5. The audit salt, shredded with a marker left in the same transaction: no new salt is made
   for the talent until a biometric consent is recorded after the erasure (the gateway's
   RecordConsent lifts the marker).
6. The gateway's stored results are scrubbed, the talent's data key destroyed (every sealed
   copy of its results, notes and intent stops opening, gateway/seals.py), so are the keys of
   the file names of the media it was matched in, and the intent
   completed in one transaction under the fence lock, which an upload's commit takes too: a
   commit either precedes the scrub (and is scrubbed) or sees the intent, open or completed
   since the upload started (and stores UNKNOWN / TALENT_ERASED, no talent id). Then the
   touched tables are scrubbed from the database's files (`Database.scrub`).

An open intent keeps the talent id sealed under the talent's data key; a completed one keeps
none; its `talent_key` (an HMAC) fences uploads that started before the erasure for
`FENCE_WINDOW`, then it is cleared too (docs/erasure.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
from sqlalchemy import exists, or_, select, update
from sqlalchemy.orm import Session

from gateway.audit_outbox import AuditOutbox
from gateway.peers import AuditPort, ConsentPort, MatcherPort
from gateway.seals import SEALED_TABLES, Seals, intent_context
from gateway.store import (
    ErasureIntentRow,
    ErasureReceiptRow,
    GatewaySecretRow,
    MediaFaceRow,
    MediaRow,
    ReviewDecisionRow,
    affected,
    erased_face_columns,
    open_erasures,
)
from gateway.webhooks import Webhooks
from mixip.runtime import logs
from mixip.runtime.backoff import Backoff
from mixip.runtime.checkpoints import Checkpoint, no_checkpoint
from mixip.runtime.db import Database, insert_ignoring_conflicts, serialize
from mixip.runtime.errors import NotFound
from mixip.runtime.times import Clock, iso
from mixip.runtime.worker import Worker

logger = logging.getLogger("mixip.gateway")

# No upload commits later than this after it started (it fails instead), so a completed
# erasure's fence is needed this long and no longer. Matches the orphan sweep's horizon.
FENCE_WINDOW = timedelta(hours=1)
FENCE_KEY_NAME = "erasure-fence-v1"


@dataclass(frozen=True)
class ErasureStep:
    name: str
    count: int
    completed_at: datetime


class ErasureFence:
    """The fence uploads and erasures meet at: a per-account lock and the intents table."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._key = self._load_key()

    def _load_key(self) -> bytes:
        """The fence's HMAC key, made on the very first start (race-safe)."""
        with self.db.write() as session:
            fresh = {"name": FENCE_KEY_NAME, "secret": os.urandom(32), "created_at": self.clock()}
            insert_ignoring_conflicts(session, GatewaySecretRow.__table__, [fresh], ["name"])
            row = session.get(GatewaySecretRow, FENCE_KEY_NAME)
            assert row is not None  # inserted just above, or by an earlier start
            return row.secret

    def talent_key(self, account_id: str, talent_id: str) -> bytes:
        message = f"{account_id}\x00{talent_id}".encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    @staticmethod
    def lock(session: Session, account_id: str) -> None:
        """Serializes uploads' commits with the opening and the completion of erasures."""
        serialize(session, f"mixip.gateway.erasure-fence:{account_id}")

    def fenced(
        self, session: Session, account_id: str, talents: Iterable[str], since: datetime
    ) -> set[str]:
        """The talents an upload that started at `since` must not link: an erasure of them is
        in progress, or completed since the upload started (its match may predate it)."""
        keys = {self.talent_key(account_id, t): t for t in set(talents) if t}
        if not keys:
            return set()
        found = session.scalars(
            select(ErasureIntentRow.talent_key).where(
                ErasureIntentRow.account_id == account_id,
                ErasureIntentRow.talent_key.in_(list(keys)),
                or_(
                    ErasureIntentRow.completed_at.is_(None),
                    ErasureIntentRow.completed_at >= since,
                ),
            )
        )
        return {keys[k] for k in found if k is not None}

    def in_progress(self, session: Session, account_id: str, talent_id: str) -> bool:
        """Whether an erasure of the talent has begun and not completed."""
        return (
            session.scalar(
                select(ErasureIntentRow.intent_id)
                .where(
                    ErasureIntentRow.account_id == account_id,
                    ErasureIntentRow.talent_key == self.talent_key(account_id, talent_id),
                    ErasureIntentRow.completed_at.is_(None),
                )
                .limit(1)
            )
            is not None
        )


class Erasures:
    def __init__(
        self,
        db: Database,
        matcher: MatcherPort,
        consent: ConsentPort,
        audit: AuditPort,
        fence: ErasureFence,
        clock: Clock,
        outbox: AuditOutbox,
        seals: Seals,
        webhooks: Webhooks,
    ) -> None:
        self.db = db
        self.matcher = matcher
        self.consent = consent
        self.audit = audit
        self.fence = fence
        self.clock = clock
        self.outbox = outbox
        self.seals = seals
        self.webhooks = webhooks
        self.checkpoint: Checkpoint = no_checkpoint

    def erase(
        self, account_id: str, talent_id: str, request_id: str
    ) -> tuple[str, list[ErasureStep]]:
        """Journals the intent, runs every step (each is idempotent), completes the intent.
        A retry with the same request id gets the first call's receipt id; the receipt holds
        no talent id, so it cannot tell which talent a request id named: the steps always run
        for the talent asked for."""
        if not self._known(account_id, talent_id, request_id):
            raise NotFound(
                f"no talent {talent_id!r}: nothing about it is held (no consent, enrolled face "
                "or match result; an erasure of it completed over an hour ago holds none either)",
                reason="TALENT_NOT_FOUND",
            )
        intent = self._open(account_id, talent_id, request_id)
        self.checkpoint("erase.intent")
        steps = self._finish(intent, talent_id)
        return intent.receipt_id, steps

    def _known(self, account_id: str, talent_id: str, request_id: str) -> bool:
        """Whether the erasure has something to erase, or is a retry: a typo'd talent id is
        NOT_FOUND, not a receipt of zeros. Known: a retried request id, an erasure of the talent
        open or completed within FENCE_WINDOW (erasing again stays idempotent), a data key
        (its results or notes), a consent record, an enrolled face. A peer that does not
        answer counts as known: the check never stands in an erasure's way."""
        key = self.fence.talent_key(account_id, talent_id)
        with self.db.read() as session:
            retry = request_id and session.scalar(
                select(ErasureIntentRow.intent_id)
                .where(
                    ErasureIntentRow.account_id == account_id,
                    ErasureIntentRow.request_id == request_id,
                )
                .limit(1)
            )
            erased = session.scalar(
                select(ErasureIntentRow.intent_id)
                .where(
                    ErasureIntentRow.account_id == account_id, ErasureIntentRow.talent_key == key
                )
                .limit(1)
            )
            keyed = self.seals.keys(session, account_id, [talent_id], create=False)
        if retry or erased or talent_id in keyed:
            return True
        try:
            return bool(
                self.consent.consent_records(account_id, talent_id, 1, "").items
                or self.matcher.talent_faces(account_id, talent_id, 1, "").items
            )
        except grpc.RpcError:
            return True

    def _open(self, account_id: str, talent_id: str, request_id: str) -> ErasureIntentRow:
        key = self.fence.talent_key(account_id, talent_id)
        with self.db.write() as session:
            self.fence.lock(session, account_id)
            receipt_id = None
            if request_id:
                receipt_id = session.scalar(
                    select(ErasureReceiptRow.receipt_id).where(
                        ErasureReceiptRow.account_id == account_id,
                        ErasureReceiptRow.request_id == request_id,
                    )
                )
                open_ = session.scalars(
                    select(ErasureIntentRow).where(
                        ErasureIntentRow.account_id == account_id,
                        ErasureIntentRow.request_id == request_id,
                        ErasureIntentRow.completed_at.is_(None),
                    )
                ).all()
                for intent in open_:
                    if intent.talent_key == key:
                        return intent  # a retry of an erasure still in progress
                receipt_id = receipt_id or next((i.receipt_id for i in open_), None)
            intent_id = secrets.token_hex(12)
            talent = self.seals.keys(session, account_id, [talent_id], create=True)[talent_id]
            intent = ErasureIntentRow(
                intent_id=intent_id,
                account_id=account_id,
                talent_ref=talent.ref,
                sealed_talent_id=talent.seal_text(talent_id, intent_context(intent_id)),
                talent_key=key,
                receipt_id=receipt_id or f"rcpt_{secrets.token_hex(12)}",
                request_id=request_id or None,
                created_at=self.clock(),
            )
            session.add(intent)
        return intent

    def _finish(self, intent: ErasureIntentRow, talent_id: str) -> list[ErasureStep]:
        account_id = intent.account_id
        ref = intent.talent_ref  # the key the intent made lives until this erasure completes
        assert ref is not None  # cleared only by the completion
        steps = []
        erased = self.consent.erase_talent(account_id, talent_id)
        steps.append(ErasureStep("consent.erase_ledger", erased, self.clock()))
        self.checkpoint("erase.consent")
        deleted = self.matcher.delete_talent_faces(account_id, talent_id, intent.intent_id)
        steps.append(ErasureStep("matcher.delete_faces", deleted, self.clock()))
        self.checkpoint("erase.matcher")
        # before the shred: the queued events are hashed with the salt that then dies
        delivered = self.outbox.drain(account_id)
        steps.append(ErasureStep("gateway.deliver_audit_events", delivered, self.clock()))
        self.checkpoint("erase.delivered")
        shredded = self.audit.shred_talent_salt(account_id, talent_id)
        steps.append(ErasureStep("audit.shred_salt", int(shredded), self.clock()))
        self.checkpoint("erase.audit")
        with self.db.write() as session:
            self.fence.lock(session, account_id)
            # A reviewer's free-text note may name the talent: blank the notes of the decisions
            # on the faces about to be scrubbed (the decisions stay), before their talent id goes,
            # with the retry digest that hashes the note (a guessed note would match it).
            session.execute(
                update(ReviewDecisionRow)
                .where(
                    ReviewDecisionRow.account_id == account_id,
                    ReviewDecisionRow.sealed_note.is_not(None),
                    exists().where(
                        MediaFaceRow.media_id == ReviewDecisionRow.media_id,
                        MediaFaceRow.face_index == ReviewDecisionRow.face_index,
                        MediaFaceRow.account_id == account_id,
                        MediaFaceRow.talent_ref == ref,
                    ),
                )
                .values(note_ref=None, sealed_note=None, digest=None)
                .execution_options(synchronize_session=False)
            )
            _blank_file_names(session, self.seals, account_id, ref)
            scrubbed = affected(
                session,
                update(MediaFaceRow)
                .where(MediaFaceRow.account_id == account_id, MediaFaceRow.talent_ref == ref)
                .values(**erased_face_columns()),
            )
            steps.append(ErasureStep("gateway.scrub_results", scrubbed, self.clock()))
            self._complete(session, intent, steps)
            # Every sealed copy (results, notes, this intent) dies with the key, unless a later
            # erasure of the talent is still open: it needs its sealed id, and destroys the key.
            if not self.fence.in_progress(session, account_id, talent_id):
                self.seals.vault.destroy(session, account_id, talent_id)
        self.db.scrub(SEALED_TABLES)
        logs.log(
            logger,
            "talent erased",
            account=account_id,
            receipt=intent.receipt_id,
            **{s.name.replace(".", "_"): s.count for s in steps},
        )
        return steps

    def _complete(
        self, session: Session, intent: ErasureIntentRow, steps: list[ErasureStep]
    ) -> None:
        """Completes this intent and every other open one of the talent begun before it (the
        steps just run satisfy them all), each with its receipt and an `erasure.completed`
        webhook event (its receipt id as `erasure_id`); forgets the talent id."""
        now = self.clock()
        done = session.scalars(
            select(ErasureIntentRow).where(
                ErasureIntentRow.account_id == intent.account_id,
                ErasureIntentRow.talent_key == intent.talent_key,
                ErasureIntentRow.completed_at.is_(None),
                ErasureIntentRow.created_at <= intent.created_at,
            )
        ).all()
        for row in done:
            row.completed_at, row.talent_ref, row.sealed_talent_id = now, None, None
            if session.get(ErasureReceiptRow, row.receipt_id) is None:
                session.add(
                    ErasureReceiptRow(
                        receipt_id=row.receipt_id,
                        account_id=row.account_id,
                        completed_at=now,
                        steps=_steps_to_json(steps),
                        request_id=row.request_id,
                    )
                )
                session.flush()
                self.webhooks.emit(
                    session, row.account_id, "erasure.completed", {"erasure_id": row.receipt_id}
                )

    # -- resumer ------------------------------------------------------------------------------

    def resume(self) -> int:
        """Finishes every intent left incomplete (its caller gave up, or the gateway stopped
        mid-way) and forgets the fence keys of intents completed more than FENCE_WINDOW ago.
        Returns the number of intents finished; a peer still down raises (the next run
        retries)."""
        with self.db.read() as session:
            pending = session.scalars(
                select(ErasureIntentRow)
                .where(ErasureIntentRow.completed_at.is_(None))
                .order_by(ErasureIntentRow.created_at)
            ).all()
        finished = 0
        for intent in pending:
            with self.db.read() as session:
                still_open = session.scalar(
                    select(ErasureIntentRow.intent_id).where(
                        ErasureIntentRow.intent_id == intent.intent_id,
                        ErasureIntentRow.completed_at.is_(None),
                    )
                )
            if still_open:
                talent_id = self.talent_of(intent)
                if talent_id is None:  # its key is gone: nothing of the talent opens here
                    logs.log(
                        logger,
                        "erasure intent unreadable",
                        level=logging.WARNING,
                        account=intent.account_id,
                        receipt=intent.receipt_id,
                    )
                    continue
                self._finish(intent, talent_id)
                finished += 1
        with self.db.write() as session:
            forgotten = affected(
                session,
                update(ErasureIntentRow)
                .where(
                    ErasureIntentRow.completed_at < self.clock() - FENCE_WINDOW,
                    ErasureIntentRow.talent_key.is_not(None),
                )
                .values(talent_key=None),
            )
        if finished or forgotten:
            logs.log(logger, "erasures resumed", finished=finished, fences_cleared=forgotten)
        return finished

    def talent_of(self, intent: ErasureIntentRow) -> str | None:
        """The open intent's talent id, opened with the talent's key (None: the key is gone)."""
        with self.db.read() as session:
            key = self.seals.by_ref(session, [intent.talent_ref]).get(intent.talent_ref or b"")
        if key is None or intent.sealed_talent_id is None:
            return None
        return key.open_text(intent.sealed_talent_id, intent_context(intent.intent_id))

    def pending(self) -> int:
        """Intents begun and not completed (for metrics)."""
        with self.db.read() as session:
            return open_erasures(session)


class ErasureResumer:
    """The resumer every gateway replica runs: `Erasures.resume`, then whatever else finishes
    after it (`also`: the account closures, gateway/closures.py, which erase talents too), at
    start-up, retried while a peer does not answer (the peers may start after the gateway) with
    a jittered backoff (at most 2 s at first, doubling up to `resume_seconds`), then every
    `resume_seconds` (0: at start-up only). A background worker (mixip/runtime/worker.py); the
    steps are idempotent and completion is conditional, so replicas may race harmlessly."""

    def __init__(
        self, erasures: Erasures, *also: Callable[[], object], resume_seconds: float
    ) -> None:
        self.resumes: tuple[Callable[[], object], ...] = (erasures.resume, *also)
        self.worker = Worker(
            "gateway-erasure-resumer",
            self._pass,
            poll_seconds=resume_seconds or None,
            backoff=Backoff(base_seconds=2.0, max_seconds=max(resume_seconds, 2.0)),
        )

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()

    def _pass(self) -> bool:
        """Resumes everything once; a peer still down raises (the worker backs off)."""
        for resume in self.resumes:
            resume()
        return False


def _blank_file_names(session: Session, seals: Seals, account_id: str, talent_ref: bytes) -> None:
    """Blanks the file names of the media with a face matched to the talent and destroys those
    media's keys (in the scrub, before their talent ids go): a caller's file name may name the
    talent, and next to a face marked TALENT_ERASED it would link them again; with the keys,
    no older copy of the names opens after the rotation this owes. The media stay; clients show
    the media id."""
    named = (
        MediaRow.account_id == account_id,
        MediaRow.sealed_filename.is_not(None),
        exists().where(
            MediaFaceRow.media_id == MediaRow.media_id,
            MediaFaceRow.account_id == account_id,
            MediaFaceRow.talent_ref == talent_ref,
        ),
    )
    media_ids = session.scalars(select(MediaRow.media_id).where(*named)).all()
    session.execute(
        update(MediaRow)
        .where(*named)
        .values(filename_ref=None, sealed_filename=None)
        .execution_options(synchronize_session=False)
    )
    seals.destroy_media_keys(session, [(account_id, m) for m in media_ids], owe_rotation=True)


def _steps_to_json(steps: list[ErasureStep]) -> str:
    return json.dumps(
        [{"name": s.name, "count": s.count, "completed_at": iso(s.completed_at)} for s in steps]
    )
