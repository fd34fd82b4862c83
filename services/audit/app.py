"""Composition root of the audit service: configuration → database, key ring, vault, log.

Settings: MIXIP_AUDIT_KEK_FILE (the vault's first key file; rotations write versioned files
next to it, so the directory must be the vault's own), MIXIP_AUDIT_KMS_KEY_ID (use AWS KMS
instead: the vault's first KMS key, dedicated to it: the first rotation schedules its deletion),
MIXIP_AUDIT_KMS_DELETION_DAYS (7: the pending window of retired KMS keys, 7-30).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from mixip.audit.v1 import audit_pb2, audit_pb2_grpc
from mixip.runtime import migrations
from mixip.runtime.config import ConfigError, Env, ServerConfig
from mixip.runtime.db import Database
from mixip.runtime.keys import KeyRing, KeyWrapper, KmsKeyRing, LocalKeyRing
from mixip.runtime.server import ServiceApp
from mixip.runtime.times import Clock, utcnow
from services.audit.service import AuditLog
from services.audit.servicer import AuditServicer
from services.audit.store import Base
from services.audit.vault import SaltVault

SERVICE_NAME = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name


@dataclass(frozen=True)
class AuditSettings:
    kek_file: Path
    kms_key_id: str | None
    aws_region: str | None
    aws_endpoint_url: str | None
    kms_deletion_days: int = 7

    @classmethod
    def load(cls, config: ServerConfig, env: Env) -> AuditSettings:
        return cls(
            kek_file=Path(
                env.str("MIXIP_AUDIT_KEK_FILE", str(config.data_dir / "keys" / "audit-kek.key"))
            ),
            kms_key_id=env.optional("MIXIP_AUDIT_KMS_KEY_ID"),
            aws_region=env.optional("AWS_REGION") or env.optional("AWS_DEFAULT_REGION"),
            aws_endpoint_url=env.optional("MIXIP_AWS_ENDPOINT_URL"),
            kms_deletion_days=_deletion_days(env),
        )

    def key_ring(self) -> KeyRing:
        if self.kms_key_id:
            import boto3

            client = boto3.client(
                "kms", region_name=self.aws_region, endpoint_url=self.aws_endpoint_url
            )
            return KmsKeyRing(client, self.kms_key_id, deletion_window_days=self.kms_deletion_days)
        return LocalKeyRing(self.kek_file)


def _deletion_days(env: Env) -> int:
    days = env.int("MIXIP_AUDIT_KMS_DELETION_DAYS", 7, minimum=7)
    if days > 30:
        raise ConfigError(f"MIXIP_AUDIT_KMS_DELETION_DAYS={days} must be 7-30 (AWS KMS's limits)")
    return days


class AuditApp(ServiceApp):
    name = "audit"

    def __init__(
        self, db: Database, keys: KeyRing | KeyWrapper, clock: Clock = utcnow, **vault_options
    ) -> None:
        migrations.upgrade(db.url, self.name)
        self.db = db
        self.log = AuditLog(db, SaltVault(db, keys, clock, **vault_options), clock)
        self.clock = clock

    def register(self, server: grpc.Server) -> Sequence[str]:
        audit_pb2_grpc.add_AuditServiceServicer_to_server(
            AuditServicer(self.log, self.clock), server
        )
        return [SERVICE_NAME]

    def close(self) -> None:
        self.db.dispose()


def build(config: ServerConfig, env: Env) -> tuple[AuditApp, dict]:
    settings = AuditSettings.load(config, env)
    return AuditApp(Database(config.database_url, Base.metadata), settings.key_ring()), {}
