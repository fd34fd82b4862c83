"""Pure consent rules: what a record may say, and the state its latest record implies."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mixip.consent.v1 import consent_pb2

BIOMETRIC = consent_pb2.CONSENT_SCOPE_BIOMETRIC_PROCESSING
FACE_USAGE = consent_pb2.CONSENT_SCOPE_FACE_USAGE
GRANTED = consent_pb2.CONSENT_DECISION_GRANTED
REVOKED = consent_pb2.CONSENT_DECISION_REVOKED
ACTIVE = consent_pb2.CONSENT_STATE_ACTIVE
INACTIVE = consent_pb2.CONSENT_STATE_REVOKED
ABSENT = consent_pb2.CONSENT_STATE_ABSENT


@dataclass(frozen=True)
class ConsentKey:
    """What one consent is about; its records form one timeline."""

    talent_id: str
    scope: int
    project_id: str  # "" for biometric processing


@dataclass(frozen=True)
class Evidence:
    method: str
    policy_version: str
    actor: str
    captured_at: datetime


@dataclass(frozen=True)
class NewRecord:
    key: ConsentKey
    decision: int
    evidence: Evidence
    request_id: str


@dataclass(frozen=True)
class Record:
    """One record of a consent timeline, as the ledger keeps it."""

    record_id: str
    account_id: str
    key: ConsentKey
    decision: int
    evidence: Evidence
    recorded_at: datetime
    sequence: int


def state_of(latest_decision: int | None) -> int:
    """The state a timeline is in, from its latest decision (None when it has no record)."""
    if latest_decision is None:
        return ABSENT
    return ACTIVE if latest_decision == GRANTED else INACTIVE


def needs_face_deletion(record: NewRecord) -> bool:
    """Revoking biometric processing means the talent's face vectors must go."""
    return record.key.scope == BIOMETRIC and record.decision == REVOKED
