"""Composition root of the gateway: configuration → database, keys, media store, peers.

Settings (README, "Configuration"): MIXIP_GATEWAY_STORAGE (local | s3), MIXIP_GATEWAY_MEDIA_DIR,
MIXIP_GATEWAY_KEK_FILE, MIXIP_GATEWAY_S3_BUCKET, MIXIP_GATEWAY_S3_KMS_KEY_ID,
MIXIP_GATEWAY_S3_PREFIX, MIXIP_GATEWAY_MAX_UPLOAD_BYTES, MIXIP_GATEWAY_MAX_CHUNK_BYTES,
MIXIP_GATEWAY_TLS_CERT and MIXIP_GATEWAY_TLS_KEY (server TLS on the client-facing port),
MIXIP_GATEWAY_ADMIN_KEY (else the key file <data dir>/gateway-admin.key, made at first start),
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
from gateway.service import Gateway, Peers
from gateway.servicer import AdminServicer, GatewayServicer
from gateway.storage import LocalEncryptedStore, MediaStore, S3Store
from gateway.store import Base
from mixip.audit.v1 import audit_pb2, audit_pb2_grpc
from mixip.consent.v1 import consent_pb2, consent_pb2_grpc
from mixip.gateway.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from mixip.matcher.v1 import matcher_pb2, matcher_pb2_grpc
from mixip.retention.v1 import retention_pb2, retention_pb2_grpc
from mixip.runtime import logs
from mixip.runtime.client import peer_channel
from mixip.runtime.config import ConfigError, Env, ServerConfig
from mixip.runtime.db import Database
from mixip.runtime.keys import LocalKeyWrapper
from mixip.runtime.server import ServiceApp
from mixip.runtime.times import Clock, utcnow

logger = logging.getLogger("mixip.gateway")
MiB = 1024 * 1024
GATEWAY_SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
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
    # How often abandoned erasure intents are finished (they also are at start-up); 0: only then.
    erasure_resume_seconds: float = 300.0

    @classmethod
    def load(cls, config: ServerConfig, env: Env) -> GatewaySettings:
        return cls(
            max_upload_bytes=env.int("MIXIP_GATEWAY_MAX_UPLOAD_BYTES", 64 * MiB, minimum=1),
            max_chunk_bytes=env.int("MIXIP_GATEWAY_MAX_CHUNK_BYTES", 4 * MiB, minimum=1024),
            admin_key_file=config.data_dir / "gateway-admin.key",
            admin_key=env.optional("MIXIP_GATEWAY_ADMIN_KEY"),
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


class GatewayApp(ServiceApp):
    name = "gateway"

    def __init__(
        self,
        db: Database,
        channels: dict[str, grpc.Channel],
        media_store: MediaStore,
        settings: GatewaySettings,
        clock: Clock = utcnow,
    ) -> None:
        db.create_tables()
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
        self.resume_seconds = settings.erasure_resume_seconds
        self._stopping = threading.Event()
        self._resumer: threading.Thread | None = None

    def register(self, server: grpc.Server) -> Sequence[str]:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(
            GatewayServicer(self.gateway, self.auth), server
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(self.gateway, self.auth), server
        )
        return [GATEWAY_SERVICE, ADMIN_SERVICE]

    def start(self) -> None:
        swept = self.gateway.sweep_orphans()
        if swept:
            logs.log(logger, "orphaned media objects removed", count=swept)
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
    app = GatewayApp(
        Database(config.database_url, Base.metadata),
        channels,
        media_store_from(config, env),
        GatewaySettings.load(config, env),
    )
    return app, {"credentials": client_credentials(env), "authorize": None}
