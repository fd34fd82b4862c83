"""The consent service's peers: one Protocol port per peer service, and its gRPC adapter. Its one
peer is the matcher, which deletes the faces of a biometric revocation (the outbox delivers)."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

import grpc

from mixip.matcher.v1 import matcher_pb2, matcher_pb2_grpc
from mixip.runtime.times import to_timestamp


class MatcherPort(Protocol):
    """What the consent service asks the matcher."""

    def delete_talent_faces(
        self, account_id: str, talent_id: str, key: str, revoked_at: datetime
    ) -> int:
        """Deletes the talent's faces enrolled before `revoked_at` (idempotent by `key`);
        returns how many went. Raises on failure (the outbox retries)."""
        ...


class MatcherClient:
    """MatcherPort over the matcher's generated stub."""

    def __init__(self, channel: grpc.Channel, timeout_seconds: float = 5.0) -> None:
        self.stub = matcher_pb2_grpc.MatcherServiceStub(channel)
        self.timeout_seconds = timeout_seconds

    def delete_talent_faces(
        self, account_id: str, talent_id: str, key: str, revoked_at: datetime
    ) -> int:
        """Waits for the channel to be ready (up to the timeout) rather than failing fast, so a
        matcher that just came back is reached on this attempt, not after the channel's
        reconnect backoff."""
        reply = self.stub.DeleteTalentFaces(
            matcher_pb2.DeleteTalentFacesRequest(
                account_id=account_id,
                talent_id=talent_id,
                request_id=key,
                enrolled_before=to_timestamp(revoked_at),
            ),
            timeout=self.timeout_seconds,
            wait_for_ready=True,
        )
        return reply.deleted_count
