"""Composition root of the audit service: configuration → database, key ring, vault, log.

Settings: services/audit/settings.py (every variable, documented). Peers: none (audit is
called, it calls no one).
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from mixip.audit.v1 import audit_pb2, audit_pb2_grpc
from mixip.runtime import migrations, telemetry
from mixip.runtime.config import Env, ServerConfig
from mixip.runtime.db import Database
from mixip.runtime.keys import KeyRing, KeyWrapper, KmsKeyRing, LocalKeyRing
from mixip.runtime.server import ServiceApp
from mixip.runtime.times import Clock, utcnow
from services.audit.service import AuditLog
from services.audit.servicer import AuditServicer
from services.audit.settings import AuditSettings
from services.audit.store import Base
from services.audit.vault import SaltVault

SERVICE_NAME = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name


def key_ring(settings: AuditSettings) -> KeyRing:
    """The vault's key ring: AWS KMS when a key id is set, else local key files."""
    if settings.kms_key_id:
        import boto3

        client = boto3.client(
            "kms", region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url
        )
        return KmsKeyRing(
            client, settings.kms_key_id, deletion_window_days=settings.kms_deletion_days
        )
    return LocalKeyRing(settings.kek_file)


class AuditApp(ServiceApp):
    name = "audit"

    def __init__(
        self, db: Database, keys: KeyRing | KeyWrapper, clock: Clock = utcnow, **vault_options
    ) -> None:
        migrations.upgrade(db.url, self.name)
        self.db = db
        self.log = AuditLog(db, SaltVault(db, keys, clock, **vault_options), clock)
        self.clock = clock
        telemetry.gauge(
            "mixip_audit_vault_key_age_seconds",
            "Time since the salt vault's current key version was made (rotation is weekly).",
            lambda: [({}, (self.clock() - self.log.vault_status().rotated_at).total_seconds())],
        )

    def register(self, server: grpc.Server) -> Sequence[str]:
        audit_pb2_grpc.add_AuditServiceServicer_to_server(
            AuditServicer(self.log, self.clock), server
        )
        return [SERVICE_NAME]

    def close(self) -> None:
        self.db.dispose()


def build(config: ServerConfig, env: Env) -> tuple[AuditApp, dict]:
    settings = AuditSettings.load(config, env)
    return AuditApp(Database(config.database_url, Base.metadata), key_ring(settings)), {}
