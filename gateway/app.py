"""Composition root of the gateway: settings → database, keys, media store, peers, use cases.

Nothing else in the gateway constructs clients, engines or stores. Settings:
gateway/settings.py (every variable, documented).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import grpc

from gateway.access_log import AccessLog
from gateway.access_recording import AccessLogInterceptor, AccessLogWriter
from gateway.account_export import AccountExports
from gateway.accounts import Accounts
from gateway.admin_servicer import AdminServicer
from gateway.audit_outbox import AuditOutbox
from gateway.auth import Authenticator
from gateway.closures import Closures
from gateway.erasure import ErasureFence, ErasureResumer, Erasures
from gateway.internal_servicer import GatewayInternalServicer
from gateway.job_segments import SegmentPlan
from gateway.jobs import JobPurge, Jobs
from gateway.media_store import LocalEncryptedStore, MediaStore, S3Store
from gateway.operations import Operations
from gateway.peers import Peers
from gateway.previews import Previews
from gateway.projects import Projects
from gateway.reports import ClearanceReports
from gateway.retention import MediaRetention
from gateway.reviews import Reviews
from gateway.rights import Rights
from gateway.seals import Seals
from gateway.servicer import GatewayServicer
from gateway.settings import GatewaySettings
from gateway.store import Base, TalentKeyRow, VaultStateRow
from gateway.upload_sessions import UploadSessions
from gateway.uploads import OrphanSweep, StreamLimits, Uploads
from gateway.webhook_delivery import WebhookDeliverer
from gateway.webhooks import Webhooks
from mixip.audit.v1 import audit_pb2
from mixip.consent.v1 import consent_pb2
from mixip.gateway.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    internal_pb2,
    internal_pb2_grpc,
)
from mixip.matcher.v1 import matcher_pb2
from mixip.retention.v1 import retention_pb2
from mixip.runtime import logs, migrations, telemetry
from mixip.runtime.addresses import is_loopback
from mixip.runtime.client import peer_channel
from mixip.runtime.config import ConfigError, Env, ServerConfig
from mixip.runtime.db import Database
from mixip.runtime.keys import LocalKeyWrapper
from mixip.runtime.limits import ENVELOPE_BYTES
from mixip.runtime.server import Authorizer, RunningServer, ServiceApp, start_server
from mixip.runtime.times import Clock, utcnow
from mixip.runtime.vault import RotationKeeper

__all__ = ["GatewayApp", "GatewaySettings", "InternalApp", "build"]

logger = logging.getLogger("mixip.gateway")
GATEWAY_SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
INTERNAL_SERVICE = internal_pb2.DESCRIPTOR.services_by_name["GatewayInternalService"].full_name
PEER_SERVICES = {
    "matcher": matcher_pb2.DESCRIPTOR.services_by_name["MatcherService"].full_name,
    "consent": consent_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name,
    "audit": audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    "retention": retention_pb2.DESCRIPTOR.services_by_name["RetentionService"].full_name,
}


def media_store_from(settings: GatewaySettings) -> MediaStore:
    if settings.storage == "s3":
        import boto3

        assert settings.s3_bucket and settings.s3_kms_key_id  # checked by GatewaySettings.load
        client = boto3.client("s3", endpoint_url=settings.aws_endpoint_url)
        return S3Store(client, settings.s3_bucket, settings.s3_kms_key_id, settings.s3_prefix)
    return LocalEncryptedStore(settings.media_dir, LocalKeyWrapper(settings.kek_file))


class InternalApp(ServiceApp):
    """The gateway's internal API, served by its own server on the internal port."""

    name = "gateway"

    def __init__(self, retention: MediaRetention, access_log: AccessLog) -> None:
        self.retention = retention
        self.access_log = access_log

    def register(self, server: grpc.Server) -> Sequence[str]:
        internal_pb2_grpc.add_GatewayInternalServiceServicer_to_server(
            GatewayInternalServicer(self.retention, self.access_log), server
        )
        return [INTERNAL_SERVICE]


class GatewayApp(ServiceApp):
    name = "gateway"
    client_facing = True  # callers present API keys, not certificates

    def __init__(
        self,
        db: Database,
        channels: dict[str, grpc.Channel],
        media_store: MediaStore,
        settings: GatewaySettings,
        clock: Clock = utcnow,
        *,
        internal_credentials: grpc.ServerCredentials | None = None,
        internal_authorize: Authorizer | None = None,
        internal_insecure_dev: bool = False,
    ) -> None:
        migrations.upgrade(db.url, self.name)
        self.db = db
        self.channels = channels
        self.clock = clock
        self.media_store = media_store
        self.auth = Authenticator(db)
        self.vault = settings.vault.open(
            db, clock, name="gateway", state_model=VaultStateRow, secret_model=TalentKeyRow
        )
        seals = Seals(self.vault)
        self.accounts = Accounts(db, clock, seals)
        try:
            self.admin_key = self.accounts.ensure_admin_key(
                settings.admin_key_file, settings.admin_key
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        peers = Peers.over(channels)
        fence = ErasureFence(db, clock)
        seals.seal_legacy(db)  # before serving: an older gateway's clear rows
        self.vault_check_seconds = settings.vault.check_seconds
        self.rotation: RotationKeeper | None = None
        self.limits = StreamLimits(settings.max_chunk_bytes, settings.max_upload_bytes)
        self.projects = Projects(db, clock)
        self.audit_outbox = AuditOutbox(
            db, peers.audit, clock, seals, poll_seconds=settings.audit_outbox_poll_seconds
        )
        self.uploads = Uploads(
            db, peers.matcher, self.audit_outbox, media_store, fence, clock, self.projects, seals
        )
        self.reviews = Reviews(db, self.audit_outbox, fence, clock, seals)
        self.reports = ClearanceReports(self.projects, self.uploads, self.reviews, peers.consent)
        self.webhook_deliverer = WebhookDeliverer(
            db,
            clock,
            seals,
            timeout_seconds=settings.webhooks_timeout_seconds,
            retention=timedelta(days=settings.webhooks_retention_days),
            allow_private=settings.webhooks_allow_private,
        )
        self.webhooks = Webhooks(
            db,
            clock,
            seals,
            self.webhook_deliverer.wake,
            allow_private=settings.webhooks_allow_private,
            overlap=timedelta(hours=settings.webhooks_secret_overlap_hours),
        )
        self.jobs = Jobs(
            db,
            self.uploads,
            media_store,
            self.projects,
            clock,
            self.webhooks,
            segments=SegmentPlan(
                settings.segment_seconds,
                settings.segment_overlap_seconds,
                settings.segment_concurrency,
            ),
        )
        self.erasures = Erasures(
            db,
            peers.matcher,
            peers.consent,
            peers.audit,
            fence,
            clock,
            self.audit_outbox,
            seals,
            self.webhooks,
        )
        self.rights = Rights(
            db, peers.matcher, peers.consent, peers.audit, fence, clock, self.audit_outbox, seals
        )
        self.sessions = UploadSessions(
            db,
            media_store,
            self.uploads,
            self.jobs,
            self.projects,
            clock,
            max_chunk_bytes=settings.max_chunk_bytes,
            max_session_bytes=settings.max_session_bytes,
            max_analysis_bytes=settings.max_upload_bytes,
            idle_after=timedelta(hours=settings.session_idle_hours),
        )
        self.previews = Previews(db, self.uploads, media_store)
        self.operations = Operations(peers.retention, peers.audit)
        self.orphans = OrphanSweep(db, media_store, clock)
        self.retention = MediaRetention(
            db,
            media_store,
            clock,
            self.orphans.sweep,
            seals,
            self.sessions.purge_abandoned,
            JobPurge(db, settings.job_retention_days),
            default_days=settings.media_retention_days,
        )
        # Every client-port call is logged (interceptors()); written in batches off the calls.
        self.access_writer = AccessLogWriter(db)
        self.access_log = AccessLog(
            db,
            self.access_writer,
            retention_days=settings.access_log_retention_days,
            owns_project=self.projects.owns,
        )
        self.closures = Closures(
            db,
            clock,
            fence,
            seals,
            self.erasures,
            peers.matcher,
            peers.consent,
            self.audit_outbox,
            media_store,
        )
        self.exports = AccountExports(db, clock, self.accounts, seals, self.access_log)
        self.internal_listen = settings.internal_listen
        self.internal_credentials = internal_credentials
        self.internal_authorize = internal_authorize
        self.internal_insecure_dev = internal_insecure_dev
        self.internal: RunningServer | None = None
        self.erasure_resumer = ErasureResumer(
            self.erasures, self.closures.resume, resume_seconds=settings.erasure_resume_seconds
        )
        telemetry.gauge(
            "mixip_gateway_erasure_intents_pending",
            "Erasures begun and not completed (the resumer finishes them).",
            lambda: [({}, float(self.erasures.pending()))],
        )
        telemetry.gauge(
            "mixip_gateway_account_closures_pending",
            "Account closures begun and not completed (the resumer finishes them).",
            lambda: [({}, float(self.closures.pending()))],
        )

        telemetry.gauge(
            "mixip_gateway_audit_outbox_depth",
            "Audit events queued by uploads and not yet delivered to the audit service.",
            lambda: [({}, float(self.audit_outbox.backlog()[0]))],
        )
        telemetry.gauge(
            "mixip_gateway_audit_outbox_oldest_age_seconds",
            "Age of the oldest undelivered audit event (0 when none is owed).",
            lambda: [({}, self.audit_outbox.backlog()[1])],
        )

    def register(self, server: grpc.Server) -> Sequence[str]:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(
            GatewayServicer(
                self.auth,
                self.limits,
                self.uploads,
                self.sessions,
                self.rights,
                self.erasures,
                self.previews,
                self.projects,
                self.reviews,
                self.jobs,
                access_log=self.access_log,
                webhooks=self.webhooks,
                reports=self.reports,
                accounts=self.accounts,
                closures=self.closures,
                exports=self.exports,
            ),
            server,
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(
                self.auth,
                self.accounts,
                self.retention,
                self.operations,
                self.clock,
                closures=self.closures,
                exports=self.exports,
            ),
            server,
        )
        return [GATEWAY_SERVICE, ADMIN_SERVICE]

    def request_limits(self) -> Mapping[str, int]:
        """The three upload streams: each message one chunk (MIXIP_GATEWAY_MAX_CHUNK_BYTES)."""
        chunk = self.limits.max_chunk_bytes + ENVELOPE_BYTES
        streams = ("UploadMedia", "EnrollTalent", "AppendUploadChunks")
        return {f"/{GATEWAY_SERVICE}/{m}": chunk for m in streams}

    def interceptors(self) -> Sequence[grpc.ServerInterceptor]:
        """The access log, on the client port's two services (the internal port has none)."""
        services = [
            gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"],
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
        ]
        return [AccessLogInterceptor(self.access_writer, self.clock, services)]

    def start(self) -> None:
        swept = self.orphans.sweep()
        if swept:
            logs.log(logger, "orphaned media objects removed", count=swept)
        self.access_writer.start()
        self.internal = start_server(
            InternalApp(self.retention, self.access_log),
            listen=self.internal_listen,
            credentials=self.internal_credentials,
            authorize=self.internal_authorize,
            insecure_dev=self.internal_insecure_dev,
        )
        logs.log(logger, "internal port serving", port=self.internal.port)
        self.erasure_resumer.start()
        self.audit_outbox.start()
        self.webhook_deliverer.start()
        self.jobs.start_worker()
        self.rotation = self.vault.keep_rotating(self.vault_check_seconds)

    def close(self) -> None:
        self.erasure_resumer.stop()
        if self.rotation is not None:
            self.rotation.stop()
        self.jobs.stop()  # before the outbox: a job's commit queues events
        self.audit_outbox.stop()
        self.webhook_deliverer.stop()
        if self.internal is not None:
            self.internal.stop(0)
        self.access_writer.close()  # the client port has stopped: write what is queued
        for channel in self.channels.values():
            channel.close()
        self.db.dispose()


def client_credentials(settings: GatewaySettings) -> grpc.ServerCredentials | None:
    """Server TLS on the client-facing port when a certificate is configured (production);
    clients authenticate with API keys, not certificates."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    try:
        pair = (settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())
    except OSError as exc:
        raise ConfigError(f"gateway TLS: cannot read {exc.filename} ({exc.strerror})") from None
    return grpc.ssl_server_credentials([pair])


def build(config: ServerConfig, env: Env) -> tuple[GatewayApp, dict[str, Any]]:
    settings = GatewaySettings.load(config, env)
    channels = {
        name: peer_channel(config, env, name, service) for name, service in PEER_SERVICES.items()
    }
    app = GatewayApp(
        Database(config.database_url, Base.metadata),
        channels,
        media_store_from(settings),
        settings,
        **internal_security(config, env, settings.internal_listen),
    )
    return app, {"credentials": client_credentials(settings), "authorize": None}


def internal_security(config: ServerConfig, env: Env, listen: str) -> dict[str, Any]:
    """The internal port speaks mutual TLS and checks callers against the caller rules when
    MIXIP_TLS_DIR is set. Without it, it fails closed like every internal service: it starts
    only in the explicit development mode (MIXIP_INSECURE_DEV), on loopback."""
    if config.tls_dir is None:
        if not is_loopback(listen) or not env.bool("MIXIP_INSECURE_DEV", False):
            raise ConfigError(
                f"refusing the gateway's internal port on {listen} without MIXIP_TLS_DIR "
                "(mutual TLS identifies its callers); for development on loopback only, "
                "MIXIP_INSECURE_DEV=true"
            )
        return {"internal_insecure_dev": True}
    from mixip.runtime import acl, tls

    return {
        "internal_credentials": tls.server_credentials(config.tls_dir, "gateway"),
        "internal_authorize": acl.authorize,
    }
