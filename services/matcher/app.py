"""Composition root of the matcher: configuration → database, engine, index, consent client.

Settings (docs/configuration.md): MIXIP_MATCHER_ENGINE (local | rekognition),
MIXIP_MATCHER_MODEL_DIR, MIXIP_MATCHER_POSSIBLE_THRESHOLD, MIXIP_MATCHER_CLEARED_THRESHOLD,
MIXIP_MATCHER_AMBIGUITY_MARGIN, MIXIP_MATCHER_MAX_MEDIA_BYTES, MIXIP_MATCHER_MAX_PIXELS,
MIXIP_MATCHER_MAX_VIDEO_SECONDS, MIXIP_MATCHER_VIDEO_SAMPLE_HZ, MIXIP_MATCHER_MIN_FACE_PIXELS,
MIXIP_MATCHER_ENROLL_MIN_SCORE, MIXIP_MATCHER_DETECT_MAX_SIDE, MIXIP_MATCHER_TOP_K,
MIXIP_MATCHER_INFERENCE_THREADS, MIXIP_MATCHER_REKOGNITION_PREFIX, MIXIP_MATCHER_ANN_MIN_FACES,
MIXIP_MATCHER_INDEX_SWEEP_SECONDS.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from mixip.consent.v1 import consent_pb2
from mixip.matcher.v1 import matcher_pb2, matcher_pb2_grpc
from mixip.runtime import migrations, telemetry
from mixip.runtime.client import peer_channel
from mixip.runtime.config import ConfigError, Env, ServerConfig
from mixip.runtime.db import Database
from mixip.runtime.server import ServiceApp
from mixip.runtime.times import Clock, utcnow
from services.matcher.consent_client import ConsentClient
from services.matcher.engines.base import FaceEngine
from services.matcher.index import CollectionIndexes, sized_index_factory
from services.matcher.labels import Thresholds
from services.matcher.service import Limits, Matcher
from services.matcher.servicer import MatcherServicer
from services.matcher.store import Base, faces_per_account

logger = logging.getLogger("mixip.matcher")
SERVICE_NAME = matcher_pb2.DESCRIPTOR.services_by_name["MatcherService"].full_name
CONSENT_SERVICE = consent_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name

# Defaults per engine scale: SFace cosine (OpenCV's published 0.363) or Rekognition 0-100.
DEFAULT_THRESHOLDS = {
    "local": Thresholds(possible=0.363, cleared=0.55, margin=0.05),
    "rekognition": Thresholds(possible=80.0, cleared=95.0, margin=2.0),
}


@dataclass(frozen=True)
class MatcherSettings:
    engine: str = "local"
    model_dir: Path | None = None
    thresholds: Thresholds = DEFAULT_THRESHOLDS["local"]
    limits: Limits = field(default_factory=Limits)
    detect_max_side: int = 1280
    workers: int = 2
    # Collections this large are searched with the approximate index (0: always exact).
    ann_min_faces: int = 20_000
    # How often cached indexes catch up with deletions made on other replicas.
    index_sweep_seconds: float = 30.0
    rekognition_prefix: str = "mixip-"
    aws_region: str | None = None
    aws_endpoint_url: str | None = None

    @classmethod
    def load(cls, env: Env) -> MatcherSettings:
        p = "MIXIP_MATCHER_"
        engine = env.choice(p + "ENGINE", "local", ("local", "rekognition"))
        base = DEFAULT_THRESHOLDS[engine]
        model_dir = env.optional(p + "MODEL_DIR")
        try:
            thresholds = Thresholds(
                possible=env.float(p + "POSSIBLE_THRESHOLD", base.possible),
                cleared=env.float(p + "CLEARED_THRESHOLD", base.cleared),
                margin=env.float(p + "AMBIGUITY_MARGIN", base.margin, minimum=0.0),
            )
        except ValueError as exc:
            raise ConfigError(f"{p}*_THRESHOLD: {exc}") from None
        defaults = Limits()
        limits = Limits(
            max_media_bytes=env.int(p + "MAX_MEDIA_BYTES", defaults.max_media_bytes, minimum=1),
            max_pixels=env.int(p + "MAX_PIXELS", defaults.max_pixels, minimum=1),
            max_video_seconds=env.float(
                p + "MAX_VIDEO_SECONDS", defaults.max_video_seconds, minimum=0.1
            ),
            video_rate_hz=env.float(p + "VIDEO_SAMPLE_HZ", defaults.video_rate_hz, minimum=0.01),
            video_burst_rate_hz=env.float(
                p + "VIDEO_BURST_HZ", defaults.video_burst_rate_hz, minimum=0.01
            ),
            video_burst_seconds=env.float(
                p + "VIDEO_BURST_SECONDS", defaults.video_burst_seconds, minimum=0.0
            ),
            min_face_pixels=env.int(p + "MIN_FACE_PIXELS", defaults.min_face_pixels, minimum=1),
            enroll_min_score=env.float(p + "ENROLL_MIN_SCORE", defaults.enroll_min_score),
            top_k=env.int(p + "TOP_K", defaults.top_k, minimum=2),
        )
        return cls(
            engine=engine,
            model_dir=Path(model_dir).expanduser() if model_dir else None,
            thresholds=thresholds,
            limits=limits,
            detect_max_side=env.int(p + "DETECT_MAX_SIDE", 1280, minimum=160),
            workers=env.int(p + "INFERENCE_THREADS", os.cpu_count() or 2, minimum=1),
            ann_min_faces=env.int(p + "ANN_MIN_FACES", 20_000, minimum=0),
            index_sweep_seconds=env.float(p + "INDEX_SWEEP_SECONDS", 30.0, minimum=0.1),
            rekognition_prefix=env.str(p + "REKOGNITION_PREFIX", "mixip-"),
            aws_region=env.optional("AWS_REGION") or env.optional("AWS_DEFAULT_REGION"),
            aws_endpoint_url=env.optional("MIXIP_AWS_ENDPOINT_URL"),
        )


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
        migrations.upgrade(db.url, self.name)
        self.db = db
        self.consent_channel = consent_channel
        self.indexes = CollectionIndexes(db, sized_index_factory(settings.ann_min_faces))
        self.index_sweep_seconds = settings.index_sweep_seconds
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self.matcher = Matcher(
            db,
            engine_factory(settings, self.indexes),
            ConsentClient(consent_channel),
            self.indexes,
            settings.thresholds,
            settings.limits,
            clock,
            workers=settings.workers,
        )

        telemetry.gauge(
            "mixip_matcher_collection_faces",
            "Faces enrolled in each account's collection.",
            self._faces,
            labels=("account_id",),
        )

    def _faces(self) -> list[tuple[dict[str, str], float]]:
        with self.db.read() as session:
            return [({"account_id": a}, n) for a, n in faces_per_account(session)]

    def register(self, server: grpc.Server) -> Sequence[str]:
        matcher_pb2_grpc.add_MatcherServiceServicer_to_server(MatcherServicer(self.matcher), server)
        return [SERVICE_NAME]

    def start(self) -> None:
        self.matcher.warm_up()
        if self._sweeper is None or not self._sweeper.is_alive():  # once, even if restarted
            self._sweeper = threading.Thread(
                target=self._sweep, name="matcher-index-sweep", daemon=True
            )
            self._sweeper.start()

    def _sweep(self) -> None:
        while not self._stop.wait(self.index_sweep_seconds):
            try:
                self.indexes.refresh_stale()
            except Exception:  # the database may be down: try again next time
                logger.warning("index sweep failed", exc_info=True)

    def close(self) -> None:
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=10)
        self.matcher.close()
        self.consent_channel.close()
        self.db.dispose()


def build(config: ServerConfig, env: Env) -> tuple[MatcherApp, dict]:
    settings = MatcherSettings.load(env)
    channel = peer_channel(config, env, "consent", CONSENT_SERVICE)
    return MatcherApp(Database(config.database_url, Base.metadata), channel, settings), {}
