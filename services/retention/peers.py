"""The retention service's peers: one Protocol port per peer service, and its gRPC adapter.

Purge asks audit to delete expired events and the gateway to delete expired stored media and
access-log entries;
reconcile asks the matcher what is enrolled and consent whether it may stay. Talent ids pass
through memory only, and a failed call raises PeerFailure naming the call and its status code,
never a message (a peer's message could quote the request).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import grpc

from mixip.audit.v1 import audit_pb2, audit_pb2_grpc
from mixip.consent.v1 import consent_pb2, consent_pb2_grpc
from mixip.gateway.v1 import internal_pb2, internal_pb2_grpc
from mixip.matcher.v1 import matcher_pb2, matcher_pb2_grpc
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.paging import every_page
from mixip.runtime.times import to_timestamp


class PeerFailure(Exception):
    """A call to another service failed: which call, and its status code (nothing else, since a
    peer's message could quote the request)."""

    def __init__(self, call: str, code: grpc.StatusCode) -> None:
        super().__init__(f"{call}: {code.name}")


def _call(name: str, method: Callable[[Any], Any], request: Any) -> Any:
    try:
        return method(request)
    except grpc.RpcError as exc:
        raise PeerFailure(name, exc.code()) from exc


@dataclass(frozen=True)
class MediaPurge:
    """One PurgeExpiredMedia batch: media deleted, objects deleted (orphans included), done."""

    media_deleted: int
    objects_deleted: int
    done: bool


class AuditPort(Protocol):
    """What retention asks the audit service."""

    def purge_expired(self, cutoff: datetime, batch: int) -> tuple[int, int, bool]:
        """Deletes up to `batch` events recorded before `cutoff`, then salts no event is left
        for: (events deleted, salts deleted, none left)."""
        ...

    def rotate_vault(self) -> int:
        """Rotates the salt vault's keys; the new key version."""
        ...


class MatcherPort(Protocol):
    """What retention asks the matcher."""

    def enrolled_talents(self) -> dict[str, list[str]]:
        """Every talent with faces, grouped by account (the whole listing)."""
        ...

    def delete_faces(self, account_id: str, talent_id: str, enrolled_before: datetime) -> int:
        """Deletes the talent's faces enrolled before the time; how many went."""
        ...


class ConsentPort(Protocol):
    """What retention asks the consent service."""

    def without_biometric_consent(self, account_id: str, talent_ids: Sequence[str]) -> list[str]:
        """The talents among `talent_ids` (at most MAX_BATCH) whose biometric processing
        consent is not ACTIVE."""
        ...


class GatewayPort(Protocol):
    """What retention asks the gateway's internal API."""

    def purge_expired_media(self, as_of: datetime, batch: int) -> MediaPurge:
        """Deletes a batch of stored media past their account's retention at `as_of`, then
        abandoned upload sessions, then orphaned objects."""
        ...

    def purge_access_log(self, as_of: datetime, batch: int) -> tuple[int, bool]:
        """Deletes a batch of the oldest access-log entries past the access log's retention at
        `as_of`: (entries deleted, none left)."""
        ...


class AuditClient:
    """AuditPort over the audit service's generated stub."""

    def __init__(self, stub: audit_pb2_grpc.AuditServiceStub) -> None:
        self.stub = stub

    def purge_expired(self, cutoff: datetime, batch: int) -> tuple[int, int, bool]:
        request = audit_pb2.PurgeExpiredRequest(cutoff=to_timestamp(cutoff), batch_size=batch)
        reply = _call("audit.PurgeExpired", self.stub.PurgeExpired, request)
        return reply.purged_count, reply.vault_entries_deleted, reply.done

    def rotate_vault(self) -> int:
        request = audit_pb2.RotateVaultRequest()
        return int(_call("audit.RotateVault", self.stub.RotateVault, request).key_version)


class MatcherClient:
    """MatcherPort over the matcher's generated stub; pages of MAX_BATCH talents."""

    def __init__(self, stub: matcher_pb2_grpc.MatcherServiceStub) -> None:
        self.stub = stub

    def enrolled_talents(self) -> dict[str, list[str]]:
        by_account: dict[str, list[str]] = {}
        pages = every_page(
            lambda token: _call(
                "matcher.ListEnrolledTalents",
                self.stub.ListEnrolledTalents,
                matcher_pb2.ListEnrolledTalentsRequest(page_size=MAX_BATCH, page_token=token),
            )
        )
        for page in pages:
            for talent in page.talents:
                by_account.setdefault(talent.account_id, []).append(talent.talent_id)
        return by_account

    def delete_faces(self, account_id: str, talent_id: str, enrolled_before: datetime) -> int:
        reply = _call(
            "matcher.DeleteTalentFaces",
            self.stub.DeleteTalentFaces,
            matcher_pb2.DeleteTalentFacesRequest(
                account_id=account_id,
                talent_id=talent_id,
                request_id=uuid.uuid4().hex,
                enrolled_before=to_timestamp(enrolled_before),
            ),
        )
        return int(reply.deleted_count)


class ConsentClient:
    """ConsentPort over the consent service's generated stub."""

    def __init__(self, stub: consent_pb2_grpc.ConsentServiceStub) -> None:
        self.stub = stub

    def without_biometric_consent(self, account_id: str, talent_ids: Sequence[str]) -> list[str]:
        reply = _call(
            "consent.BatchCheckConsent",
            self.stub.BatchCheckConsent,
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


class GatewayClient:
    """GatewayPort over the gateway's internal generated stub."""

    def __init__(self, stub: internal_pb2_grpc.GatewayInternalServiceStub) -> None:
        self.stub = stub

    def purge_expired_media(self, as_of: datetime, batch: int) -> MediaPurge:
        request = internal_pb2.PurgeExpiredMediaRequest(as_of=to_timestamp(as_of), batch_size=batch)
        reply = _call("gateway.PurgeExpiredMedia", self.stub.PurgeExpiredMedia, request)
        # An abandoned upload session's parts are stored objects too.
        objects = reply.objects_deleted + reply.orphans_deleted + reply.sessions_deleted
        return MediaPurge(reply.media_deleted, objects, reply.done)

    def purge_access_log(self, as_of: datetime, batch: int) -> tuple[int, bool]:
        request = internal_pb2.PurgeAccessLogRequest(as_of=to_timestamp(as_of), batch_size=batch)
        reply = _call("gateway.PurgeAccessLog", self.stub.PurgeAccessLog, request)
        return int(reply.entries_deleted), reply.done


@dataclass(frozen=True)
class Peers:
    """The ports the jobs use."""

    audit: AuditPort
    matcher: MatcherPort
    consent: ConsentPort
    # The gateway's internal API; None only for a retention service run without a gateway
    # (tests of the other jobs), whose purge then leaves stored media alone.
    gateway: GatewayPort | None = None


def connect(
    audit: grpc.Channel,
    matcher: grpc.Channel,
    consent: grpc.Channel,
    gateway: grpc.Channel | None = None,
) -> Peers:
    """The gRPC adapters over the peers' channels."""
    return Peers(
        AuditClient(audit_pb2_grpc.AuditServiceStub(audit)),
        MatcherClient(matcher_pb2_grpc.MatcherServiceStub(matcher)),
        ConsentClient(consent_pb2_grpc.ConsentServiceStub(consent)),
        GatewayClient(internal_pb2_grpc.GatewayInternalServiceStub(gateway)) if gateway else None,
    )
