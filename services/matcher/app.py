"""Composition root of the matcher: configuration → database, vault, engine, index, consent
client.

Settings: services/matcher/settings.py (every variable, documented). Peers: consent
(services/matcher/peers.py).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping, Sequence

import grpc

from mixip.consent.v1 import consent_pb2
from mixip.matcher.v1 import matcher_pb2, matcher_pb2_grpc
from mixip.runtime import migrations, telemetry
from mixip.runtime.client import peer_channel
from mixip.runtime.config import ConfigError, Env, ServerConfig
from mixip.runtime.db import Database
from mixip.runtime.limits import ENVELOPE_BYTES
from mixip.runtime.server import ServiceApp
from mixip.runtime.times import Clock, utcnow
from mixip.runtime.vault import RotationKeeper
from mixip.runtime.worker import Worker
from services.matcher.engines.base import FaceEngine
from services.matcher.index import CollectionIndexes, sized_index_factory
from services.matcher.peers import ConsentClient
from services.matcher.ranges import BLOCK_BYTES
from services.matcher.segments import VideoSegments
from services.matcher.service import Matcher
from services.matcher.servicer import MatcherServicer
from services.matcher.settings import MatcherSettings
from services.matcher.store import Base, TalentKeyRow, VaultStateRow, collection_sizes

logger = logging.getLogger("mixip.matcher")
SERVICE_NAME = matcher_pb2.DESCRIPTOR.services_by_name["MatcherService"].full_name
CONSENT_SERVICE = consent_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name


def create_engine(settings: MatcherSettings, indexes: CollectionIndexes) -> FaceEngine:
    """The configured engine; a missing or wrong model file is a start-up ConfigError."""
    if settings.engine == "rekognition":
        import boto3
        from botocore.config import Config

        from services.matcher.engines.rekognition import RekognitionEngine

        client = boto3.client(
            "rekognition",
            region_name=settings.aws_region,
            endpoint_url=settings.aws_endpoint_url,
            # The engine retries throttling itself; keep botocore's own retries short.
            config=Config(retries={"mode": "standard", "max_attempts": 2}),
        )
        return RekognitionEngine(client, collection_prefix=settings.rekognition_prefix)
    from services.matcher.engines.local import LocalEngine, ModelError

    try:
        return LocalEngine(
            model_dir=settings.model_dir,
            index_for=indexes.for_account,
            detect_max_side=settings.detect_max_side,
        )
    except ModelError as exc:
        raise ConfigError(str(exc)) from None


class MatcherApp(ServiceApp):
    name = "matcher"

    def __init__(
        self,
        db: Database,
        consent_channel: grpc.Channel,
        settings: MatcherSettings,
        clock: Clock = utcnow,
        *,
        engine_factory: Callable[[MatcherSettings, CollectionIndexes], FaceEngine] = create_engine,
    ) -> None:
        if settings.vault is None:
            raise ConfigError("matcher: no vault settings (MatcherSettings.load sets them)")
        migrations.upgrade(db.url, self.name)
        self.db = db
        self.consent_channel = consent_channel
        self.vault = settings.vault.open(
            db, clock, name="matcher", state_model=VaultStateRow, secret_model=TalentKeyRow
        )
        self.vault_check_seconds = settings.vault.check_seconds
        self._rotation: RotationKeeper | None = None
        self.indexes = CollectionIndexes(
            db, self.vault, sized_index_factory(settings.ann_min_faces)
        )
        # Every MIXIP_MATCHER_INDEX_SWEEP_SECONDS: the collections other replicas changed.
        self.sweeper = Worker(
            "matcher-index-sweep",
            self._sweep,
            poll_seconds=settings.index_sweep_seconds,
            wait_first=True,
            join_seconds=10.0,
        )
        self.max_media_bytes = settings.limits.max_media_bytes
        self.instance = settings.instance or socket.gethostname()
        self.matcher = Matcher(
            db,
            self.vault,
            engine_factory(settings, self.indexes),
            ConsentClient(consent_channel),
            self.indexes,
            settings.thresholds,
            settings.limits,
            clock,
            workers=settings.workers,
        )
        self.segments = VideoSegments(self.matcher, self.instance)
        # Faces enrolled before sealing: sealed before the first request can read them.
        self.matcher.seal_legacy_faces()

        # Totals only: a series per account would publish who is a customer and, by its drop,
        # when one of its talents was erased.
        telemetry.gauge(
            "mixip_matcher_enrolled_faces",
            "Faces enrolled, over every account's collection.",
            lambda: [({}, float(sum(self._collection_sizes())))],
        )
        telemetry.gauge(
            "mixip_matcher_largest_collection_faces",
            "Faces in the largest collection (compare with MIXIP_MATCHER_ANN_MIN_FACES).",
            lambda: [({}, float(max(self._collection_sizes(), default=0)))],
        )

    def _collection_sizes(self) -> list[int]:
        with self.db.read() as session:
            return collection_sizes(session)

    def request_limits(self) -> Mapping[str, int]:
        """The calls that carry an image or media: up to MIXIP_MATCHER_MAX_MEDIA_BYTES."""
        # A stitch's message carries one segment's sealed frames (its header is small).
        carrying = ("EnrollTalentFace", "MatchMedia", "DetectFaces", "StitchVideoSegments")
        limits = {f"/{SERVICE_NAME}/{m}": self.max_media_bytes + ENVELOPE_BYTES for m in carrying}
        for reading in ("PlanVideoSegments", "MatchVideoSegment"):  # a block of the video each
            limits[f"/{SERVICE_NAME}/{reading}"] = BLOCK_BYTES + ENVELOPE_BYTES
        return limits

    def register(self, server: grpc.Server) -> Sequence[str]:
        servicer = MatcherServicer(self.matcher, self.segments)
        matcher_pb2_grpc.add_MatcherServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    def start(self) -> None:
        self.matcher.warm_up()
        if self._rotation is None:
            self._rotation = self.vault.keep_rotating(self.vault_check_seconds)
        self.sweeper.start()  # once, even if restarted

    def _sweep(self) -> bool:
        self.indexes.refresh_stale()
        return False  # a sweep covers every stale collection: next time, the next sweep

    def close(self) -> None:
        self.sweeper.stop()
        if self._rotation is not None:
            self._rotation.stop()
        self.matcher.close()
        self.consent_channel.close()
        self.db.dispose()


def build(config: ServerConfig, env: Env) -> tuple[MatcherApp, dict[str, object]]:
    settings = MatcherSettings.load(env, config)
    channel = peer_channel(config, env, "consent", CONSENT_SERVICE)
    return MatcherApp(Database(config.database_url, Base.metadata), channel, settings), {}
