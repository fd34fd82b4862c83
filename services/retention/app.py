"""Composition root of the retention service: configuration → database, peers, scheduler.

Peers: audit, matcher and consent at MIXIP_<SERVICE>_ADDRESS, and the gateway's internal port at
MIXIP_GATEWAY_INTERNAL_ADDRESS (default 127.0.0.1:50056), where the purge deletes expired media.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from mixip.audit.v1 import audit_pb2
from mixip.consent.v1 import consent_pb2
from mixip.gateway.v1 import internal_pb2
from mixip.matcher.v1 import matcher_pb2
from mixip.retention.v1 import retention_pb2, retention_pb2_grpc
from mixip.runtime import migrations, telemetry
from mixip.runtime.client import peer_channel
from mixip.runtime.config import Env, ServerConfig
from mixip.runtime.db import Database
from mixip.runtime.server import ServiceApp
from mixip.runtime.times import Clock, utcnow
from services.retention.domain import Job
from services.retention.peers import connect
from services.retention.scheduler import RetentionScheduler
from services.retention.service import RetentionService
from services.retention.servicer import RetentionServicer
from services.retention.settings import RetentionSettings
from services.retention.store import Base, RunRow, last_succeeded

SERVICE_NAME = retention_pb2.DESCRIPTOR.services_by_name["RetentionService"].full_name
AUDIT_SERVICE = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name
MATCHER_SERVICE = matcher_pb2.DESCRIPTOR.services_by_name["MatcherService"].full_name
CONSENT_SERVICE = consent_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name
GATEWAY_INTERNAL_SERVICE = internal_pb2.DESCRIPTOR.services_by_name[
    "GatewayInternalService"
].full_name


class RetentionApp(ServiceApp):
    name = "retention"

    def __init__(
        self,
        db: Database,
        settings: RetentionSettings,
        audit_channel: grpc.Channel,
        matcher_channel: grpc.Channel,
        consent_channel: grpc.Channel,
        clock: Clock = utcnow,
        gateway_channel: grpc.Channel | None = None,
    ) -> None:
        migrations.upgrade(db.url, self.name)
        self.db = db
        self.settings = settings
        self.channels = tuple(
            c for c in (audit_channel, matcher_channel, consent_channel, gateway_channel) if c
        )
        self.service = RetentionService(
            db,
            settings,
            connect(audit_channel, matcher_channel, consent_channel, gateway_channel),
            clock,
        )
        self.scheduler = RetentionScheduler(db.engine, settings, self.service.run_scheduled)
        telemetry.gauge(
            "mixip_retention_last_success_timestamp_seconds",
            "When each job last finished successfully (Unix time).",
            lambda: [
                ({"job": job}, run.finished_at.timestamp())
                for job, run in self._last()
                if run.finished_at
            ],
            labels=("job",),
        )
        telemetry.gauge(
            "mixip_retention_last_purge_rows_deleted",
            "Audit events the last successful purge deleted.",
            lambda: [({}, run.events_purged) for job, run in self._last() if job == "purge"],
        )

    def _last(self) -> list[tuple[str, RunRow]]:
        with self.db.read() as session:
            runs = [(job.value, last_succeeded(session, job.value)) for job in Job]
        return [(job, run) for job, run in runs if run is not None and run.finished_at]

    def register(self, server: grpc.Server) -> Sequence[str]:
        retention_pb2_grpc.add_RetentionServiceServicer_to_server(
            RetentionServicer(self.service, self.settings, self.scheduler.next_run_time), server
        )
        return [SERVICE_NAME]

    def start(self) -> None:
        self.service.close_interrupted_runs()
        if self.settings.scheduler_enabled:
            self.scheduler.start()

    def close(self) -> None:
        self.scheduler.shutdown()
        for channel in self.channels:
            channel.close()
        self.db.dispose()


def build(config: ServerConfig, env: Env) -> tuple[RetentionApp, dict[str, object]]:
    settings = RetentionSettings.load(env)

    def channel(name: str, service: str) -> grpc.Channel:
        return peer_channel(config, env, name, service)

    app = RetentionApp(
        Database(config.database_url, Base.metadata),
        settings,
        channel("audit", AUDIT_SERVICE),
        channel("matcher", MATCHER_SERVICE),
        channel("consent", CONSENT_SERVICE),
        gateway_channel=channel("gateway_internal", GATEWAY_INTERNAL_SERVICE),
    )
    return app, {}
