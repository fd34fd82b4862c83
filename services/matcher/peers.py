"""The matcher's peers: one Protocol port per peer service, and its gRPC adapter (where
batching to the peer's limits happens). The matcher has one peer, the consent service."""

from __future__ import annotations

from typing import Protocol

import grpc

from mixip.consent.v1 import consent_pb2, consent_pb2_grpc
from mixip.runtime.limits import MAX_BATCH

_BIOMETRIC = consent_pb2.CONSENT_SCOPE_BIOMETRIC_PROCESSING
_USAGE = consent_pb2.CONSENT_SCOPE_FACE_USAGE
_ACTIVE = consent_pb2.CONSENT_STATE_ACTIVE


class ConsentPort(Protocol):
    """What the matcher asks the consent service."""

    def biometric_active(self, account_id: str, talent_id: str) -> bool: ...

    def active_sets(
        self, account_id: str, talent_ids: set[str], project_id: str
    ) -> tuple[set[str], set[str]]:
        """(talents with biometric consent, talents with face-usage consent for the project),
        in one batched call."""
        ...


class ConsentClient:
    """ConsentPort over the consent service's generated stub."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = consent_pb2_grpc.ConsentServiceStub(channel)

    def biometric_active(self, account_id: str, talent_id: str) -> bool:
        reply = self.stub.CheckConsent(
            consent_pb2.CheckConsentRequest(
                account_id=account_id, talent_id=talent_id, scope=_BIOMETRIC
            )
        )
        return reply.state == _ACTIVE

    def active_sets(
        self, account_id: str, talent_ids: set[str], project_id: str
    ) -> tuple[set[str], set[str]]:
        queries = []
        for talent in sorted(talent_ids):
            queries.append(consent_pb2.ConsentQuery(talent_id=talent, scope=_BIOMETRIC))
            queries.append(
                consent_pb2.ConsentQuery(talent_id=talent, scope=_USAGE, project_id=project_id)
            )
        biometric: set[str] = set()
        usage: set[str] = set()
        for start in range(0, len(queries), MAX_BATCH):  # one call unless > 500 candidates
            reply = self.stub.BatchCheckConsent(
                consent_pb2.BatchCheckConsentRequest(
                    account_id=account_id, queries=queries[start : start + MAX_BATCH]
                )
            )
            for answer in reply.answers:
                if answer.state == _ACTIVE:
                    target = biometric if answer.query.scope == _BIOMETRIC else usage
                    target.add(answer.query.talent_id)
        return biometric, usage
