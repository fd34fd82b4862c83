"""Composition root of the consent service: configuration → database, ledger, outbox."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import grpc

from mixip.consent.v1 import consent_pb2, consent_pb2_grpc
from mixip.matcher.v1 import matcher_pb2, matcher_pb2_grpc
from mixip.runtime import logs, migrations, telemetry
from mixip.runtime.client import peer_channel
from mixip.runtime.config import Env, ServerConfig
from mixip.runtime.db import Database
from mixip.runtime.server import ServiceApp
from mixip.runtime.times import Clock, to_timestamp, utcnow
from services.consent.outbox import Deliver, OutboxDispatcher
from services.consent.service import ConsentLedger
from services.consent.servicer import ConsentServicer
from services.consent.store import Base, outbox_backlog

logger = logging.getLogger("mixip.consent")

SERVICE_NAME = consent_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name
MATCHER_SERVICE = matcher_pb2.DESCRIPTOR.services_by_name["MatcherService"].full_name


def matcher_deleter(channel: grpc.Channel, timeout_seconds: float = 5.0) -> Deliver:
    """Delivers an owed deletion as matcher.DeleteTalentFaces (idempotent by its key). It waits
    for the channel to be ready (up to the timeout) rather than failing fast, so a matcher that
    just came back is reached on this attempt, not after the channel's reconnect backoff."""
    stub = matcher_pb2_grpc.MatcherServiceStub(channel)

    def deliver(account_id: str, talent_id: str, key: str, revoked_at: datetime) -> int:
        reply = stub.DeleteTalentFaces(
            matcher_pb2.DeleteTalentFacesRequest(
                account_id=account_id,
                talent_id=talent_id,
                request_id=key,
                enrolled_before=to_timestamp(revoked_at),
            ),
            timeout=timeout_seconds,
            wait_for_ready=True,
        )
        return reply.deleted_count

    return deliver


class ConsentApp(ServiceApp):
    name = "consent"

    def __init__(
        self,
        db: Database,
        matcher_channel: grpc.Channel,
        clock: Clock = utcnow,
        *,
        dispatch: bool = True,
        poll_seconds: float = 2.0,
    ) -> None:
        migrations.upgrade(db.url, self.name)
        self.db = db
        self.clock = clock
        self.matcher_channel = matcher_channel
        self.outbox = OutboxDispatcher(
            db, matcher_deleter(matcher_channel), clock, poll_seconds=poll_seconds
        )
        self.dispatch = dispatch
        self.ledger = ConsentLedger(db, clock, on_outbox_write=self.outbox.wake)
        telemetry.gauge(
            "mixip_consent_outbox_backlog",
            "Biometric revocations whose face deletion the matcher has not acknowledged yet.",
            lambda: [({}, self._backlog()[0])],
        )
        telemetry.gauge(
            "mixip_consent_outbox_oldest_age_seconds",
            "Age of the oldest undelivered revocation (0 when none is pending).",
            lambda: [({}, self._backlog()[1])],
        )

    def _backlog(self) -> tuple[int, float]:
        with self.db.read() as session:
            count, oldest = outbox_backlog(session)
        return count, (self.clock() - oldest).total_seconds() if oldest else 0.0

    def register(self, server: grpc.Server) -> Sequence[str]:
        consent_pb2_grpc.add_ConsentServiceServicer_to_server(
            ConsentServicer(self.ledger, self.clock), server
        )
        return [SERVICE_NAME]

    def start(self) -> None:
        compacted = self.outbox.compact_delivered()
        if compacted:
            logs.log(logger, "delivered outbox rows compacted into counts", count=compacted)
        if self.dispatch:
            self.outbox.start()

    def close(self) -> None:
        self.outbox.stop()
        self.matcher_channel.close()
        self.db.dispose()


def build(config: ServerConfig, env: Env) -> tuple[ConsentApp, dict]:
    channel = peer_channel(config, env, "matcher", MATCHER_SERVICE)
    poll = env.float("MIXIP_CONSENT_OUTBOX_POLL_SECONDS", 2.0, minimum=0.05)
    app = ConsentApp(Database(config.database_url, Base.metadata), channel, poll_seconds=poll)
    return app, {}
