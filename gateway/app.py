"""Composition root of the gateway: configuration → database, keys, media store, peers.

Settings (docs/configuration.md): MIXIP_GATEWAY_STORAGE (local | s3), MIXIP_GATEWAY_MEDIA_DIR,
MIXIP_GATEWAY_KEK_FILE, MIXIP_GATEWAY_S3_BUCKET, MIXIP_GATEWAY_S3_KMS_KEY_ID,
MIXIP_GATEWAY_S3_PREFIX, MIXIP_GATEWAY_MAX_UPLOAD_BYTES, MIXIP_GATEWAY_MAX_CHUNK_BYTES,
MIXIP_GATEWAY_TLS_CERT and MIXIP_GATEWAY_TLS_KEY (server TLS on the client-facing port),
MIXIP_GATEWAY_ADMIN_KEY (else the key file <data dir>/gateway-admin.key, made at first start),
MIXIP_GATEWAY_MEDIA_RETENTION_DAYS (365: how long stored media and their results are kept for
accounts without their own period, 1-3650), MIXIP_GATEWAY_INTERNAL_LISTEN (127.0.0.1:50056: the
internal port, mutual TLS with caller rules when MIXIP_TLS_DIR is set, loopback only otherwise),
MIXIP_GATEWAY_ERASURE_RESUME_SECONDS (300: how often abandoned erasures are finished; 0 only at
start-up), and the four MIXIP_<SERVICE>_ADDRESS.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from gateway.auth import Authenticator
from gateway.media_store import LocalEncryptedStore, MediaStore, S3Store
from gateway.retention import (
    DEFAULT_RETENTION_DAYS,
    MAX_RETENTION_DAYS,
    MediaRetention,
)
from gateway.service import Gateway, Peers
from gateway.servicer import AdminServicer, GatewayInternalServicer, GatewayServicer
from gateway.store import Base
from mixip.audit.v1 import audit_pb2, audit_pb2_grpc
from mixip.consent.v1 import consent_pb2, consent_pb2_grpc
from mixip.gateway.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    internal_pb2,
    internal_pb2_grpc,
)
from mixip.matcher.v1 import matcher_pb2, matcher_pb2_grpc
from mixip.retention.v1 import retention_pb2, retention_pb2_grpc
from mixip.runtime import logs, migrations
from mixip.runtime.client import peer_channel
from mixip.runtime.config import ConfigError, Env, ServerConfig, variable
from mixip.runtime.db import Database
from mixip.runtime.keys import LocalKeyWrapper
from mixip.runtime.server import Authorizer, RunningServer, ServiceApp, _loopback, start_server
from mixip.runtime.times import Clock, utcnow

logger = logging.getLogger("mixip.gateway")
MiB = 1024 * 1024
GATEWAY_SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
INTERNAL_SERVICE = internal_pb2.DESCRIPTOR.services_by_name["GatewayInternalService"].full_name
PEER_SERVICES = {
    "matcher": matcher_pb2.DESCRIPTOR.services_by_name["MatcherService"].full_name,
    "consent": consent_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name,
    "audit": audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    "retention": retention_pb2.DESCRIPTOR.services_by_name["RetentionService"].full_name,
}


@dataclass(frozen=True)
class GatewaySettings:
    max_upload_bytes: int = 64 * MiB
    max_chunk_bytes: int = 4 * MiB
    admin_key_file: Path = Path("var/gateway-admin.key")
    admin_key: str | None = None
    media_retention_days: int = DEFAULT_RETENTION_DAYS
    internal_listen: str = "127.0.0.1:0"
    # How often abandoned erasure intents are finished (they also are at start-up); 0: only then.
    erasure_resume_seconds: float = 300.0

    @classmethod
    def load(cls, config: ServerConfig, env: Env) -> GatewaySettings:
        days = env.int("MIXIP_GATEWAY_MEDIA_RETENTION_DAYS", DEFAULT_RETENTION_DAYS, minimum=1)
        if days > MAX_RETENTION_DAYS:
            raise ConfigError(
                f"MIXIP_GATEWAY_MEDIA_RETENTION_DAYS={days} must be at most {MAX_RETENTION_DAYS}"
            )
        return cls(
            max_upload_bytes=env.int("MIXIP_GATEWAY_MAX_UPLOAD_BYTES", 64 * MiB, minimum=1),
            max_chunk_bytes=env.int("MIXIP_GATEWAY_MAX_CHUNK_BYTES", 4 * MiB, minimum=1024),
            admin_key_file=config.data_dir / "gateway-admin.key",
            admin_key=env.optional("MIXIP_GATEWAY_ADMIN_KEY"),
            media_retention_days=days,
            internal_listen=env.str(variable("gateway_internal", "LISTEN"), "127.0.0.1:50056"),
            erasure_resume_seconds=env.float(
                "MIXIP_GATEWAY_ERASURE_RESUME_SECONDS", 300.0, minimum=0.0
            ),
        )


def media_store_from(config: ServerConfig, env: Env) -> MediaStore:
    kind = env.choice("MIXIP_GATEWAY_STORAGE", "local", ("local", "s3"))
    if kind == "s3":
        bucket = env.optional("MIXIP_GATEWAY_S3_BUCKET")
        key_id = env.optional("MIXIP_GATEWAY_S3_KMS_KEY_ID")
        if not bucket or not key_id:
            raise ConfigError(
                "MIXIP_GATEWAY_STORAGE=s3 needs MIXIP_GATEWAY_S3_BUCKET and "
                "MIXIP_GATEWAY_S3_KMS_KEY_ID"
            )
        import boto3

        client = boto3.client("s3", endpoint_url=env.optional("MIXIP_AWS_ENDPOINT_URL"))
        return S3Store(client, bucket, key_id, env.str("MIXIP_GATEWAY_S3_PREFIX", "media/"))
    root = Path(env.str("MIXIP_GATEWAY_MEDIA_DIR", str(config.data_dir / "media")))
    kek = Path(env.str("MIXIP_GATEWAY_KEK_FILE", str(config.data_dir / "keys" / "gateway-kek.key")))
    return LocalEncryptedStore(root, LocalKeyWrapper(kek))


def peers_from(channels: dict[str, grpc.Channel]) -> Peers:
    return Peers(
        matcher=matcher_pb2_grpc.MatcherServiceStub(channels["matcher"]),
        consent=consent_pb2_grpc.ConsentServiceStub(channels["consent"]),
        audit=audit_pb2_grpc.AuditServiceStub(channels["audit"]),
        retention=retention_pb2_grpc.RetentionServiceStub(channels["retention"]),
    )


class InternalApp(ServiceApp):
    """The gateway's internal API, served by its own server on the internal port."""

    name = "gateway"

    def __init__(self, retention: MediaRetention) -> None:
        self.retention = retention

    def register(self, server: grpc.Server) -> Sequence[str]:
        internal_pb2_grpc.add_GatewayInternalServiceServicer_to_server(
            GatewayInternalServicer(self.retention), server
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
        self.auth = Authenticator(db, clock)
        try:
            self.admin_key = self.auth.ensure_admin_key(settings.admin_key_file, settings.admin_key)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.gateway = Gateway(
            db,
            peers_from(channels),
            media_store,
            clock,
            max_upload_bytes=settings.max_upload_bytes,
            max_chunk_bytes=settings.max_chunk_bytes,
        )
        self.retention = MediaRetention(
            db,
            media_store,
            clock,
            self.gateway.sweep_orphans,
            default_days=settings.media_retention_days,
        )
        self.internal_listen = settings.internal_listen
        self.internal_credentials = internal_credentials
        self.internal_authorize = internal_authorize
        self.internal_insecure_dev = internal_insecure_dev
        self.internal: RunningServer | None = None
        self.resume_seconds = settings.erasure_resume_seconds
        self._stopping = threading.Event()
        self._resumer: threading.Thread | None = None

    def register(self, server: grpc.Server) -> Sequence[str]:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(
            GatewayServicer(self.gateway, self.auth), server
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(self.gateway, self.auth, self.retention), server
        )
        return [GATEWAY_SERVICE, ADMIN_SERVICE]

    def start(self) -> None:
        swept = self.gateway.sweep_orphans()
        if swept:
            logs.log(logger, "orphaned media objects removed", count=swept)
        self.internal = start_server(
            InternalApp(self.retention),
            listen=self.internal_listen,
            credentials=self.internal_credentials,
            authorize=self.internal_authorize,
            insecure_dev=self.internal_insecure_dev,
        )
        logs.log(logger, "internal port serving", port=self.internal.port)
        self._resumer = threading.Thread(
            target=self._resume_erasures, name="gateway-erasure-resumer", daemon=True
        )
        self._resumer.start()

    def _resume_erasures(self) -> None:
        """Finishes abandoned erasures at start-up (retrying until the peers answer: they may
        start after the gateway), then every `resume_seconds`."""
        retry = 2.0
        while not self._stopping.is_set():
            try:
                self.gateway.erasures.resume()
            except Exception as exc:  # a peer down: the intents wait for the next attempt
                logs.log(
                    logger,
                    "erasure resumption failed",
                    level=logging.WARNING,
                    error=type(exc).__name__,
                )
                self._stopping.wait(retry)
                retry = min(retry * 2, max(self.resume_seconds, 2.0))
                continue
            retry = 2.0
            if not self.resume_seconds:
                return
            self._stopping.wait(self.resume_seconds)

    def close(self) -> None:
        self._stopping.set()
        if self._resumer is not None:
            self._resumer.join(timeout=30)
        if self.internal is not None:
            self.internal.stop(0)
        for channel in self.channels.values():
            channel.close()
        self.db.dispose()


def client_credentials(env: Env) -> grpc.ServerCredentials | None:
    """Server TLS on the client-facing port when a certificate is configured (production);
    clients authenticate with API keys, not certificates."""
    cert, key = env.optional("MIXIP_GATEWAY_TLS_CERT"), env.optional("MIXIP_GATEWAY_TLS_KEY")
    if not cert and not key:
        return None
    if not (cert and key):
        raise ConfigError("set both MIXIP_GATEWAY_TLS_CERT and MIXIP_GATEWAY_TLS_KEY, or neither")
    try:
        pair = (Path(key).read_bytes(), Path(cert).read_bytes())
    except OSError as exc:
        raise ConfigError(f"gateway TLS: cannot read {exc.filename} ({exc.strerror})") from None
    return grpc.ssl_server_credentials([pair])


def build(config: ServerConfig, env: Env) -> tuple[GatewayApp, dict]:
    channels = {
        name: peer_channel(config, env, name, service) for name, service in PEER_SERVICES.items()
    }
    settings = GatewaySettings.load(config, env)
    app = GatewayApp(
        Database(config.database_url, Base.metadata),
        channels,
        media_store_from(config, env),
        settings,
        **internal_security(config, env, settings.internal_listen),
    )
    return app, {"credentials": client_credentials(env), "authorize": None}


def internal_security(config: ServerConfig, env: Env, listen: str) -> dict:
    """The internal port speaks mutual TLS and checks callers against the caller rules when
    MIXIP_TLS_DIR is set. Without it, it fails closed like every internal service: it starts
    only in the explicit development mode (MIXIP_INSECURE_DEV), on loopback."""
    if config.tls_dir is None:
        if not _loopback(listen) or not env.bool("MIXIP_INSECURE_DEV", False):
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
