"""Composition root of the consent service: configuration → database, vault, ledger, outbox.

Settings: services/consent/settings.py. Peers: the matcher (services/consent/peers.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

import grpc

from mixip.consent.v1 import consent_pb2, consent_pb2_grpc
from mixip.matcher.v1 import matcher_pb2
from mixip.runtime import logs, migrations, telemetry
from mixip.runtime.client import peer_channel
from mixip.runtime.config import Env, ServerConfig
from mixip.runtime.db import Database
from mixip.runtime.keys import KeyRing
from mixip.runtime.server import ServiceApp
from mixip.runtime.times import Clock, utcnow
from mixip.runtime.vault import Vault
from services.consent.outbox import OutboxDispatcher
from services.consent.peers import MatcherClient
from services.consent.service import ConsentLedger
from services.consent.servicer import ConsentServicer
from services.consent.settings import ConsentSettings
from services.consent.store import (
    Base,
    TalentKeyRow,
    VaultStateRow,
    outbox_backlog,
    renew_account_versions,
)

logger = logging.getLogger("mixip.consent")

SERVICE_NAME = consent_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name
MATCHER_SERVICE = matcher_pb2.DESCRIPTOR.services_by_name["MatcherService"].full_name


class ConsentApp(ServiceApp):
    name = "consent"

    def __init__(
        self,
        db: Database,
        matcher_channel: grpc.Channel,
        keys: KeyRing,
        clock: Clock = utcnow,
        *,
        dispatch: bool = True,
        poll_seconds: float = 2.0,
        rotate_within: timedelta = timedelta(hours=24),
        rotation_check_seconds: float | None = None,
        reset_unreadable: bool = False,
    ) -> None:
        """`rotation_check_seconds`: how often to look for a rotation an erasure owes (None:
        no keeper; tests rotate by hand). `reset_unreadable`: start on a restored backup whose
        vault key is gone, without what it sealed (`Vault`)."""
        migrations.upgrade(db.url, self.name)
        self.db = db
        self.clock = clock
        self.matcher_channel = matcher_channel
        self.vault = Vault(
            db,
            keys,
            clock,
            name=self.name,
            state_model=VaultStateRow,
            secret_model=TalentKeyRow,
            rotate_within=rotate_within,
            reset_unreadable=reset_unreadable,
        )
        if self.vault.reset_at_start:  # every answer cached before (a matcher's) is stale now
            with db.write() as session:
                renew_account_versions(session)
        self.outbox = OutboxDispatcher(
            db,
            self.vault,
            MatcherClient(matcher_channel).delete_talent_faces,
            clock,
            poll_seconds=poll_seconds,
        )
        self.dispatch = dispatch
        self.ledger = ConsentLedger(db, self.vault, clock, on_outbox_write=self.outbox.wake)
        # Before the service answers: until then, checks and listings miss clear rows.
        self.ledger.seal_legacy()
        self.keeper = (
            self.vault.keep_rotating(rotation_check_seconds) if rotation_check_seconds else None
        )
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
        if self.keeper is not None:
            self.keeper.stop()
        self.outbox.stop()
        self.matcher_channel.close()
        self.db.dispose()


def build(config: ServerConfig, env: Env) -> tuple[ConsentApp, dict[str, object]]:
    channel = peer_channel(config, env, "matcher", MATCHER_SERVICE)
    settings = ConsentSettings.load(config, env)
    app = ConsentApp(
        Database(config.database_url, Base.metadata),
        channel,
        settings.vault.key_ring(),
        poll_seconds=settings.outbox_poll_seconds,
        rotate_within=settings.vault.rotate_within,
        rotation_check_seconds=settings.vault.check_seconds,
        reset_unreadable=settings.vault.reset_unreadable,
    )
    return app, {}
