"""The admin's relays to the peers' operations: retention jobs and status, the audit vault."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from gateway.peers import AuditPort, RetentionPort
from mixip.retention.v1 import retention_pb2


class Operations:
    def __init__(self, retention: RetentionPort, audit: AuditPort) -> None:
        self.retention = retention
        self.audit = audit

    def run_retention_job(
        self, job: int, as_of: Timestamp | None, admin_key_id: str
    ) -> retention_pb2.RunReport:
        """Runs a retention job now (the purge possibly as of a later date, a drill)."""
        return self.retention.run_now(job, as_of, admin_key_id)

    def retention_status(self) -> retention_pb2.GetStatusResponse:
        return self.retention.status()

    def vault_status(self) -> tuple[int, Timestamp]:
        """(the audit vault's key version, when it was rotated)."""
        return self.audit.vault_status()
