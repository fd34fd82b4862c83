"""Composition root of the audit service: configuration → database, key ring, vault, log.

Settings: services/audit/settings.py (every variable, documented). Peers: none (audit is
called, it calls no one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from mixip.audit.v1 import audit_pb2, audit_pb2_grpc
from mixip.runtime import migrations, telemetry
from mixip.runtime.config import Env, ServerConfig
from mixip.runtime.db import Database
from mixip.runtime.keys import KeyRing, KeyWrapper
from mixip.runtime.limits import MiB
from mixip.runtime.server import ServiceApp
from mixip.runtime.times import Clock, utcnow
from services.audit.service import AuditLog, CheckpointKeeper
from services.audit.servicer import AuditServicer
from services.audit.settings import AuditSettings
from services.audit.signer import LogSigner
from services.audit.store import Base
from services.audit.vault import SaltVault
from services.audit.witnesses import Witnessing

SERVICE_NAME = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name


class AuditApp(ServiceApp):
    name = "audit"

    def __init__(
        self,
        db: Database,
        keys: KeyRing | KeyWrapper,
        clock: Clock = utcnow,
        *,
        rotation_check_seconds: float | None = None,
        signer: LogSigner | None = None,
        checkpoint_seconds: float | None = None,
        witnessing: Witnessing | None = None,
        **vault_options: Any,
    ) -> None:
        """`rotation_check_seconds`: how often to look for a rotation a shred owes (None: no
        keeper; tests rotate by hand). `signer`: the log's checkpoint key (None: no checkpoints);
        `checkpoint_seconds`: how often to sign the checkpoints of grown trees (None: only on
        demand)."""
        migrations.upgrade(db.url, self.name)
        self.db = db
        vault = SaltVault(db, keys, clock, **vault_options)
        self.log = AuditLog(db, vault, clock, signer=signer, witnessing=witnessing)
        self.clock = clock
        self.keeper = (
            vault.keep_rotating(rotation_check_seconds) if rotation_check_seconds else None
        )
        self.signing = (
            CheckpointKeeper(self.log, checkpoint_seconds)
            if signer and checkpoint_seconds
            else None
        )
        telemetry.gauge(
            "mixip_audit_vault_key_age_seconds",
            "Time since the salt vault's current key version was made (rotation is weekly).",
            lambda: [({}, (self.clock() - self.log.vault_status().rotated_at).total_seconds())],
        )

    def request_limits(self) -> Mapping[str, int]:
        """A batch of MAX_BATCH events of the longest valid fields is about 1.7 MiB."""
        return {f"/{SERVICE_NAME}/RecordMatchEvents": 4 * MiB}

    def register(self, server: grpc.Server) -> Sequence[str]:
        audit_pb2_grpc.add_AuditServiceServicer_to_server(
            AuditServicer(self.log, self.clock), server
        )
        return [SERVICE_NAME]

    def close(self) -> None:
        if self.keeper is not None:
            self.keeper.stop()
        if self.signing is not None:
            self.signing.stop()
        self.db.dispose()


def build(config: ServerConfig, env: Env) -> tuple[AuditApp, dict[str, object]]:
    settings = AuditSettings.load(config, env)
    vault = settings.vault
    app = AuditApp(
        Database(config.database_url, Base.metadata),
        vault.key_ring(),
        rotation_check_seconds=vault.check_seconds,
        signer=LogSigner.load_or_create(settings.log_key_file),
        checkpoint_seconds=settings.checkpoint_seconds,
        witnessing=settings.witnessing,
        rotate_within=vault.rotate_within,
        reset_unreadable=vault.reset_unreadable,
    )
    return app, {}
