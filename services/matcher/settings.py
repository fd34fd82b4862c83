"""Every variable the matcher reads, in one frozen dataclass read once at start."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from mixip.runtime.config import ConfigError, Env, ServerConfig
from mixip.runtime.limits import MAX_PIXELS
from mixip.runtime.vault import VaultSettings
from services.matcher.labels import Thresholds
from services.matcher.video import DEFAULT_BURST_RATE_HZ, DEFAULT_BURST_SECONDS, DEFAULT_RATE_HZ


@dataclass(frozen=True)
class Limits:
    """What the matcher accepts and how densely it samples a video (MatcherSettings.limits)."""

    max_media_bytes: int = 64 * 1024 * 1024
    max_pixels: int = MAX_PIXELS
    max_video_seconds: float = 600.0
    # A stored video analysed by segments (a gateway job): read by ranges, never whole.
    max_job_video_seconds: float = 6 * 3600.0
    video_rate_hz: float = DEFAULT_RATE_HZ
    # After a face comes on screen, sample this fast for this long (docs/video.md).
    video_burst_rate_hz: float = DEFAULT_BURST_RATE_HZ
    video_burst_seconds: float = DEFAULT_BURST_SECONDS
    # Engines without vectors search each observation remotely: only a track's clearest few.
    video_searches_per_track: int = 3
    min_face_pixels: int = 48
    enroll_min_score: float = 0.85
    top_k: int = 5


# Defaults per engine scale: SFace cosine (OpenCV's published 0.363) or Rekognition 0-100.
DEFAULT_THRESHOLDS = {
    "local": Thresholds(possible=0.363, cleared=0.55, margin=0.05),
    "rekognition": Thresholds(possible=80.0, cleared=95.0, margin=2.0),
}


@dataclass(frozen=True)
class MatcherSettings:
    """Every variable the matcher reads (docs/configuration.md), read once at start."""

    engine: str = "local"
    """MIXIP_MATCHER_ENGINE: `local` (OpenCV YuNet + SFace) or `rekognition` (AWS)."""
    model_dir: Path | None = None
    """MIXIP_MATCHER_MODEL_DIR: where the local engine's ONNX models are (default: bundled)."""
    thresholds: Thresholds = DEFAULT_THRESHOLDS["local"]
    """MIXIP_MATCHER_POSSIBLE_THRESHOLD, _CLEARED_THRESHOLD, _AMBIGUITY_MARGIN: the label
    rules' scores, on the engine's scale (defaults per engine, DEFAULT_THRESHOLDS)."""
    limits: Limits = field(default_factory=Limits)
    """MIXIP_MATCHER_MAX_MEDIA_BYTES, _MAX_PIXELS, _MAX_VIDEO_SECONDS, _VIDEO_SAMPLE_HZ,
    _VIDEO_BURST_HZ, _VIDEO_BURST_SECONDS, _MAX_JOB_VIDEO_SECONDS (a stored video analysed by
    segments; 6 h), _MIN_FACE_PIXELS, _ENROLL_MIN_SCORE, _TOP_K."""
    detect_max_side: int = 1280
    """MIXIP_MATCHER_DETECT_MAX_SIDE: images are scaled down to this side before detection."""
    workers: int = 2
    """MIXIP_MATCHER_INFERENCE_THREADS: inference threads (default: the CPU count)."""
    ann_min_faces: int = 20_000
    """MIXIP_MATCHER_ANN_MIN_FACES: collections this large are searched with the approximate
    index (0: always exact)."""
    index_sweep_seconds: float = 30.0
    """MIXIP_MATCHER_INDEX_SWEEP_SECONDS: how often cached indexes catch up with deletions
    made on other replicas."""
    rekognition_prefix: str = "mixip-"
    """MIXIP_MATCHER_REKOGNITION_PREFIX: prefix of the Rekognition collection names."""
    aws_region: str | None = None
    """AWS_REGION (else AWS_DEFAULT_REGION): the Rekognition region."""
    aws_endpoint_url: str | None = None
    """MIXIP_AWS_ENDPOINT_URL: another AWS endpoint (tests, LocalStack)."""
    instance: str = ""
    """MIXIP_INSTANCE (else the host name): the name a segment's result gives for the replica
    that analysed it."""
    vault: VaultSettings | None = None
    """MIXIP_MATCHER_VAULT_KEK_FILE, _VAULT_KMS_KEY_ID, _VAULT_KMS_DELETION_DAYS and the shared
    MIXIP_VAULT_* variables: the vault of the talents' data keys (docs/vault.md). Always set by
    `load`; the app refuses to start without it."""

    @classmethod
    def load(cls, env: Env, config: ServerConfig) -> MatcherSettings:
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
            max_job_video_seconds=env.float(
                p + "MAX_JOB_VIDEO_SECONDS", defaults.max_job_video_seconds, minimum=0.1
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
            instance=env.str("MIXIP_INSTANCE", "") or socket.gethostname(),
            vault=VaultSettings.load("matcher", config, env),
        )
