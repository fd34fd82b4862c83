"""Talents and their rights: consent, enrollment, listings, export and correction.

Every call is scoped to the caller's account. Erasure, the strongest right, has its own module
(gateway/erasure.py).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.audit_outbox import AuditOutbox
from gateway.erasure import ErasureFence
from gateway.peers import AuditPort, ConsentDecision, ConsentPort, LogVerdict, MatcherPort
from gateway.seals import Seals
from gateway.store import MediaFaceRow, ReviewDecisionRow, face_decisions, talent_results
from mixip.audit.v1 import audit_pb2
from mixip.common.v1 import common_pb2
from mixip.consent.v1 import consent_pb2
from mixip.matcher.v1 import matcher_pb2
from mixip.runtime import logs
from mixip.runtime.checkpoints import Checkpoint, no_checkpoint
from mixip.runtime.db import Database
from mixip.runtime.errors import FailedPrecondition, NotFound
from mixip.runtime.paging import Page
from mixip.runtime.times import Clock, iso

logger = logging.getLogger("mixip.gateway")

EXPORT_SCHEMA = "mixip.talent-export/1"


class Rights:
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
    ) -> None:
        self.db = db
        self.seals = seals
        self.matcher = matcher
        self.consent = consent
        self.audit = audit
        self.fence = fence
        self.clock = clock
        # Reading, verifying and exporting the audit log deliver the account's queued events
        # first: a client reads its own writes.
        self.outbox = outbox
        # Tests pause a consent write at its step boundary through this hook.
        self.checkpoint: Checkpoint = no_checkpoint

    # -- consent ------------------------------------------------------------------------------

    def record_consent(
        self, account_id: str, decision: ConsentDecision
    ) -> consent_pb2.ConsentRecord:
        """Records a consent, refused while an erasure of the talent is in progress (it would
        survive the erasure). A biometric grant starts the talent's new life after an erasure:
        it lifts the audit's shred marker, after the record is stored (a failed lift leaves
        events unlinkable, the safe side; the caller's retry lifts it)."""
        # Under the fence lock, which an erasure's opening takes too: a consent write either
        # completes before the erasure begins (and is erased with the rest) or sees its intent.
        with self.db.write() as session:
            self.fence.lock(session, account_id)
            if self.fence.in_progress(session, account_id, decision.talent_id):
                raise FailedPrecondition(
                    "an erasure of this talent is in progress; retry when it has completed",
                    reason="ERASURE_IN_PROGRESS",
                )
            self.checkpoint("consent.checked")
            record = self.consent.record_consent(account_id, decision)
            if decision.is_biometric_grant:
                self.audit.lift_shred_marker(account_id, decision.talent_id)
        return record

    def consents(
        self, account_id: str, talent_id: str, page_size: int, page_token: str
    ) -> Page[consent_pb2.ConsentRecord]:
        return self.consent.consent_records(account_id, talent_id, page_size, page_token)

    # -- faces --------------------------------------------------------------------------------

    def enroll(
        self, account_id: str, talent_id: str, image: bytes, request_id: str
    ) -> matcher_pb2.FaceRecord:
        return self.matcher.enroll_face(account_id, talent_id, image, request_id)

    def talent_faces(
        self, account_id: str, talent_id: str, page_size: int, page_token: str
    ) -> Page[matcher_pb2.FaceRecord]:
        return self.matcher.talent_faces(account_id, talent_id, page_size, page_token)

    def delete_face(
        self, account_id: str, key_id: str, talent_id: str, face_id: str
    ) -> matcher_pb2.FaceRecord:
        """Correction: one wrongly enrolled face goes, the talent's other faces stay."""
        face, collection_version = self.matcher.delete_face(account_id, talent_id, face_id)
        # The correction's record: who (key), what (face), when (the line's time); the talent
        # id stays out of logs (docs/rights.md).
        logs.log(
            logger,
            "talent face deleted",
            account=account_id,
            key=key_id,
            face=face_id,
            collection_version=collection_version,
        )
        return face

    # -- audit --------------------------------------------------------------------------------

    def audit_events(
        self,
        account_id: str,
        *,
        talent_id: str,
        project_id: str,
        since: Timestamp | None,
        page_size: int,
        page_token: str,
    ) -> Page[audit_pb2.AuditEvent]:
        self.outbox.drain(account_id)
        return self.audit.events(
            account_id,
            talent_id=talent_id,
            project_id=project_id,
            since=since,
            page_size=page_size,
            page_token=page_token,
        )

    def verify_audit_log(self, account_id: str) -> LogVerdict:
        self.outbox.drain(account_id)
        return self.audit.verify_log(account_id)

    def audit_checkpoint(self, account_id: str) -> str:
        """The signed checkpoint of the account's tree, queued events delivered first."""
        self.outbox.drain(account_id)
        return self.audit.checkpoint(account_id)

    # -- export -------------------------------------------------------------------------------

    def export(self, account_id: str, talent_id: str) -> dict[str, Any]:
        """Everything the mesh holds about the talent, linked while links exist."""
        consents = self.consent.all_consent_records(account_id, talent_id)
        face_records = self.matcher.all_talent_faces(account_id, talent_id)
        self.outbox.drain(account_id)
        events = self.audit.all_talent_events(account_id, talent_id)
        with self.db.read() as session:
            ref = self.seals.ref(session, account_id, talent_id)
            found = talent_results(session, account_id, ref) if ref else []
            opened = self.seals.faces(session, [face for face, _, _ in found])
            results = []
            for (face, project_id, created_at), result in zip(found, opened, strict=True):
                if not result.talent_id:  # its key is gone: nothing links it to the talent
                    continue
                decisions = face_decisions(session, face.media_id, face.face_index)
                notes = self.seals.notes(session, decisions)
                results.append(_media_result(face, project_id, created_at, decisions, notes))
        if not (consents or face_records or events or results):
            raise NotFound("no data about this talent in this account")
        return {
            "schema_version": EXPORT_SCHEMA,
            "generated_at": iso(self.clock()),
            "account_id": account_id,
            "talent_id": talent_id,
            "consent_records": [_json(r) for r in consents],
            "face_records": [_json(f) for f in face_records],
            "audit_events": [_json(e) for e in events],
            "media_results": results,
        }


def _media_result(
    face: MediaFaceRow,
    project_id: str,
    created_at: datetime,
    decisions: list[ReviewDecisionRow],
    notes: dict[str, str],
) -> dict[str, Any]:
    return {
        "media_id": face.media_id,
        "project_id": project_id,
        "uploaded_at": iso(created_at),
        "face_index": face.face_index,
        "label": common_pb2.FaceLabel.Name(common_pb2.FaceLabel.ValueType(face.label)),
        "reason": common_pb2.LabelReason.Name(common_pb2.LabelReason.ValueType(face.reason)),
        "similarity": face.similarity,
        "review_decisions": [
            {
                "decision": common_pb2.ReviewDecision.Name(
                    common_pb2.ReviewDecision.ValueType(d.decision)
                ),
                "note": notes[d.decision_id],
                "decided_at": iso(d.decided_at),
            }
            for d in decisions
        ],
    }


def _json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)
