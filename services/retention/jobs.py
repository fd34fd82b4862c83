"""What the two jobs do, through the peers' generated stubs: purge asks audit to delete expired
events and the gateway to delete expired stored media (results and objects), reconcile asks the
matcher what is enrolled and consent whether it may stay.

Both are idempotent (a repeated purge finds nothing older than the cutoff; a repeated deletion
deletes nothing), which is why manual runs need no lock. rotate-vault is not idempotent but
harmless to repeat (one more key version), and audit runs rotations one at a time. Talent ids
pass through memory only: they are never logged, and a failure names the call and its status
code, never a message.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc

from mixip.audit.v1 import audit_pb2, audit_pb2_grpc
from mixip.consent.v1 import consent_pb2, consent_pb2_grpc
from mixip.gateway.v1 import internal_pb2, internal_pb2_grpc
from mixip.matcher.v1 import matcher_pb2, matcher_pb2_grpc
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.times import to_timestamp
from services.retention.domain import Tally

# Stored media deleted per PurgeExpiredMedia call: each deletes an object, so a call stays short.
MEDIA_BATCH = 100


class PeerFailure(Exception):
    """A call to another service failed: which call, and its status code (nothing else, since a
    peer's message could quote the request)."""

    def __init__(self, call: str, code: grpc.StatusCode) -> None:
        super().__init__(f"{call}: {code.name}")


class PurgeStalled(Exception):
    """Audit reported neither progress nor completion; stop rather than loop on it."""


def one_line(error: Exception) -> str:
    """The run's error as stored and returned: the failed call and code, or the exception type
    (never a foreign exception's message: driver errors quote SQL parameters)."""
    return str(error) if isinstance(error, PeerFailure) else type(error).__name__


@dataclass(frozen=True)
class Peers:
    audit: audit_pb2_grpc.AuditServiceStub
    matcher: matcher_pb2_grpc.MatcherServiceStub
    consent: consent_pb2_grpc.ConsentServiceStub
    # The gateway's internal API; None only for a retention service run without a gateway
    # (tests of the other jobs), whose purge then leaves stored media alone.
    gateway: internal_pb2_grpc.GatewayInternalServiceStub | None = None

    @classmethod
    def over(
        cls,
        audit: grpc.Channel,
        matcher: grpc.Channel,
        consent: grpc.Channel,
        gateway: grpc.Channel | None = None,
    ) -> Peers:
        return cls(
            audit_pb2_grpc.AuditServiceStub(audit),
            matcher_pb2_grpc.MatcherServiceStub(matcher),
            consent_pb2_grpc.ConsentServiceStub(consent),
            internal_pb2_grpc.GatewayInternalServiceStub(gateway) if gateway else None,
        )


def _call(name: str, method: Callable[[Any], Any], request: Any) -> Any:
    try:
        return method(request)
    except grpc.RpcError as exc:
        raise PeerFailure(name, exc.code()) from exc


def purge(
    audit: audit_pb2_grpc.AuditServiceStub, cutoff: datetime, batch: int, tally: Tally
) -> None:
    """Purges events recorded before `cutoff`, `batch` at a time (each call is one audit
    transaction), until audit says none is left."""
    request = audit_pb2.PurgeExpiredRequest(cutoff=to_timestamp(cutoff), batch_size=batch)
    while True:
        reply = _call("audit.PurgeExpired", audit.PurgeExpired, request)
        tally.events_purged += reply.purged_count
        if reply.done:
            return
        if reply.purged_count == 0:
            raise PurgeStalled


def purge_media(
    gateway: internal_pb2_grpc.GatewayInternalServiceStub, as_of: datetime, tally: Tally
) -> None:
    """Asks the gateway to delete stored media past their account's retention period at
    `as_of` (rows, results, objects), then orphaned objects, a batch per call, until done."""
    request = internal_pb2.PurgeExpiredMediaRequest(
        as_of=to_timestamp(as_of), batch_size=MEDIA_BATCH
    )
    while True:
        reply = _call("gateway.PurgeExpiredMedia", gateway.PurgeExpiredMedia, request)
        tally.media_purged += reply.media_deleted
        tally.media_objects_deleted += reply.objects_deleted + reply.orphans_deleted
        if reply.done:
            return
        if not (reply.media_deleted or reply.objects_deleted or reply.orphans_deleted):
            raise PurgeStalled


def rotate_vault(audit: audit_pb2_grpc.AuditServiceStub) -> int:
    """Rotates the audit vault's keys (one audit call); returns the new key version."""
    reply = _call("audit.RotateVault", audit.RotateVault, audit_pb2.RotateVaultRequest())
    return reply.key_version


def reconcile(peers: Peers, tally: Tally, started_at: datetime) -> None:
    """Deletes the face vectors of every enrolled talent whose biometric consent is not ACTIVE
    (revoked, or absent because the talent was erased), enrolled before the run started (a
    face enrolled during the run came with consent granted after this run read it).

    The whole listing is read before anything is deleted, so deletions cannot shift the pages
    still to be read, whatever the matcher's page tokens are made of."""
    for account_id, talents in enrolled_talents(peers.matcher).items():
        for batch in _chunks(talents, MAX_BATCH):
            lacking = without_biometric_consent(peers.consent, account_id, batch)
            tally.talents_checked += len(batch)
            for talent_id in lacking:
                tally.vectors_deleted += delete_faces(
                    peers.matcher, account_id, talent_id, started_at
                )


def enrolled_talents(matcher: matcher_pb2_grpc.MatcherServiceStub) -> dict[str, list[str]]:
    """Every talent with faces, grouped by account."""
    by_account: dict[str, list[str]] = {}
    token = ""
    while True:
        page = _call(
            "matcher.ListEnrolledTalents",
            matcher.ListEnrolledTalents,
            matcher_pb2.ListEnrolledTalentsRequest(page_size=MAX_BATCH, page_token=token),
        )
        for talent in page.talents:
            by_account.setdefault(talent.account_id, []).append(talent.talent_id)
        token = page.next_page_token
        if not token:
            return by_account


def without_biometric_consent(
    consent: consent_pb2_grpc.ConsentServiceStub, account_id: str, talent_ids: Sequence[str]
) -> list[str]:
    """The talents among `talent_ids` (at most MAX_BATCH) whose biometric processing
    consent is not ACTIVE."""
    reply = _call(
        "consent.BatchCheckConsent",
        consent.BatchCheckConsent,
        consent_pb2.BatchCheckConsentRequest(
            account_id=account_id,
            queries=[
                consent_pb2.ConsentQuery(
                    talent_id=talent_id, scope=consent_pb2.CONSENT_SCOPE_BIOMETRIC_PROCESSING
                )
                for talent_id in talent_ids
            ],
        ),
    )
    return [
        answer.query.talent_id
        for answer in reply.answers
        if answer.state != consent_pb2.CONSENT_STATE_ACTIVE
    ]


def delete_faces(
    matcher: matcher_pb2_grpc.MatcherServiceStub,
    account_id: str,
    talent_id: str,
    enrolled_before: datetime,
) -> int:
    reply = _call(
        "matcher.DeleteTalentFaces",
        matcher.DeleteTalentFaces,
        matcher_pb2.DeleteTalentFacesRequest(
            account_id=account_id,
            talent_id=talent_id,
            request_id=uuid.uuid4().hex,
            enrolled_before=to_timestamp(enrolled_before),
        ),
    )
    return reply.deleted_count


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
