"""A stored video analysed by time segments over matcher replicas (docs/jobs.md#segments).

- `plan` cuts the video at keyframes (from its packets, demuxed, not decoded) near every
  `segment_seconds`; without keyframes to cut at, at fixed lengths.
- `match` analyses one segment: it samples from `overlap` seconds before the segment's start
  (so that, by its start, the tracker knows who is on screen and samples the frames a whole
  pass would sample) to its end, and keeps the frames of its own time: their faces and
  vectors, sealed under a key derived from the matcher's vault, so no vector leaves the
  matcher in clear (the gateway holds the blob in memory until the stitch).
- `stitch` takes the segments' results one at a time, in time order (the caller streams them),
  opens each and links its frames into one `Tracker`, the very linking a whole pass does (a
  person crossing a cut, or coming back later, stays one track by appearance), and drops it
  before the next; then labels the tracks as `Matcher.match` labels a video's. What it holds is
  the tracker's state plus one segment, never every segment's frames.

The video is read through a `RangeReader` (services/matcher/ranges.py): never whole in memory,
never on disk.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from io import RawIOBase
from typing import Any

import numpy as np

from mixip.common.v1 import common_pb2
from mixip.runtime.errors import InvalidArgument, Unavailable
from mixip.runtime.keys import SealError, open_sealed, seal
from mixip.runtime.media import MediaError
from services.matcher.engines.base import Box, DetectedFace
from services.matcher.service import Matcher, MatchOutcome
from services.matcher.video import (
    Analysis,
    Signature,
    Tracker,
    Video,
    open_stream,
    sample_and_track,
)

_EPSILON = 1e-9
_VERSION_BYTES = 4
_PURPOSE = b"mixip/matcher/video-segment-frames"

Frame = tuple[float, list[tuple[DetectedFace, Signature]]]


@dataclass(frozen=True)
class PlannedSegment:
    start: float
    end: float  # exclusive; the video's length for the last
    frames_expected: int


@dataclass(frozen=True)
class SegmentOutcome:
    sealed_frames: bytes
    frames_sampled: int  # within the segment's own time
    width: int
    height: int
    duration_seconds: float
    replica: str


class _Recording(Tracker):
    """A tracker that also keeps the frames from `own_start` on (the segment's own time)."""

    def __init__(self, own_start: float, **options: Any) -> None:
        super().__init__(**options)
        self.own_start = own_start
        self.frames: list[Frame] = []

    def add(self, t: float, detections: Sequence[tuple[DetectedFace, Signature]]) -> list[bool]:
        if t + _EPSILON >= self.own_start:
            self.frames.append((t, list(detections)))
        return super().add(t, detections)


class VideoSegments:
    def __init__(self, matcher: Matcher, instance: str) -> None:
        self.matcher = matcher
        self.instance = instance
        self.limits = matcher.limits
        # Tests pause a segment's analysis at its first frame through this hook (a no-op here).
        self.checkpoint: Callable[[str], None] = lambda name: None

    def plan(
        self, reader: RawIOBase, segment_seconds: float, overlap_seconds: float
    ) -> tuple[float, list[PlannedSegment]]:
        """(the video's length, its segments in time order)."""
        with self._stream(reader) as video:
            duration = video.duration_seconds if video.declared_frames is not None else 0.0
            keyframes = video.keyframes()
        if duration <= 0:  # no declared length: one segment, up to the limit
            return 0.0, [self._planned(0.0, self.limits.max_job_video_seconds)]
        cuts = [0.0]
        while cuts[-1] + segment_seconds < duration - _EPSILON:
            target = cuts[-1] + segment_seconds
            if len(keyframes) > 1:
                later = [k for k in keyframes if k + _EPSILON >= target]
                if not later or later[0] >= duration - _EPSILON:
                    break
                target = later[0]
            cuts.append(target)
        bounds = [*cuts, duration]
        return duration, [self._planned(a, b) for a, b in itertools.pairwise(bounds)]

    def _planned(self, start: float, end: float) -> PlannedSegment:
        return PlannedSegment(start, end, math.ceil((end - start) * self.limits.video_rate_hz))

    def match(
        self, account_id: str, reader: RawIOBase, start: float, end: float, overlap: float
    ) -> SegmentOutcome:
        limits = self.limits
        tracker = _Recording(start, interval_seconds=1.0 / limits.video_rate_hz)
        analysing = [False]

        def analyse(frame: np.ndarray) -> Future[Analysis]:
            if not analysing[0]:  # the video is being read: the call has answered already
                analysing[0] = True
                self.checkpoint("segment.analysing")
            return self.matcher.pool.submit(self.matcher._analyse, frame)

        with self._stream(reader) as video:
            sample_and_track(
                video,
                analyse,
                tracker,
                rate_hz=limits.video_rate_hz,
                burst_rate_hz=limits.video_burst_rate_hz,
                burst_seconds=limits.video_burst_seconds,
                max_in_flight=2 * self.matcher.workers,
                start=max(0.0, start - overlap),
                end=end,
            )
        return SegmentOutcome(
            self._seal(account_id, _frames_bytes(tracker.frames)),
            len(tracker.frames),
            video.width,
            video.height,
            video.duration_seconds,
            self.instance,
        )

    def stitch(
        self,
        account_id: str,
        project_id: str,
        content_type: str,
        count: int,
        segments: Iterable[SegmentOutcome],
    ) -> MatchOutcome:
        """Links `count` segments' frames with one `Tracker`, taking the segments one at a time
        from `segments` in time order: each blob is opened and its frames linked before the next
        is taken, then dropped. So the stitch holds the tracker's state (every track's
        observations, vectors included: services/matcher/video.py) and one segment's frames,
        never every segment's. A frame two neighbouring segments both kept counts once; a frame
        earlier than one already linked, more segments than `count` or fewer are bad input
        naming the i-th segment `segments[i]`."""
        tracker = Tracker(interval_seconds=1.0 / self.limits.video_rate_hz)
        previous = -math.inf
        width = height = sampled = index = 0
        duration = 0.0
        for segment in segments:  # not enumerate: it would hold the last one during the next
            if index >= count:
                raise InvalidArgument.one(
                    f"segments[{index}]",
                    f"more results than header.segment_count ({count})",
                    reason="SEGMENT_COUNT",
                )
            for t, detections in _frames_of(self._open(account_id, segment.sealed_frames, index)):
                if t < previous - _EPSILON:
                    raise InvalidArgument.one(
                        f"segments[{index}]",
                        f"out of time order: a frame at {t:.3f} s after one at {previous:.3f} s "
                        "(send the results in the plan's order)",
                        reason="SEGMENTS_OUT_OF_ORDER",
                    )
                if t > previous + _EPSILON:  # a frame two segments both kept counts once
                    tracker.add(t, detections)
                    previous = t
            if index == 0:  # the video's size, as the first segment saw it
                width, height = segment.width, segment.height
            duration = max(duration, segment.duration_seconds)
            sampled += segment.frames_sampled
            index += 1
            del segment  # its blob goes before the next segment is taken
            self.checkpoint("stitch.linked")
        if index < count:
            raise InvalidArgument.one(
                "segments",
                f"{index} of header.segment_count ({count}) results: the stream ended early",
                reason="SEGMENT_COUNT",
            )
        return MatchOutcome(
            common_pb2.MEDIA_KIND_VIDEO,
            content_type,
            width,
            height,
            self.matcher._track_outcomes(account_id, project_id, tracker.tracks()),
            duration_seconds=duration,
            frames_sampled=sampled,
        )

    @contextmanager
    def _stream(self, reader: RawIOBase) -> Iterator[Video]:
        """The video read through `reader`; any MediaError is bad input."""
        try:
            yield open_stream(
                reader,
                max_seconds=self.limits.max_job_video_seconds,
                max_pixels=self.limits.max_pixels,
            )
        except MediaError as exc:
            raise InvalidArgument.one("media", str(exc), reason="BAD_MEDIA") from exc

    # -- sealing: a key derived from the vault's current sealing key --------------------------

    def _key(self) -> tuple[int, bytes]:
        with self.matcher.db.read() as session:
            keys = self.matcher.vault.current(session)
        return keys.version, hmac.new(keys.sealing, _PURPOSE, hashlib.sha256).digest()

    def _seal(self, account_id: str, plaintext: bytes) -> bytes:
        version, key = self._key()
        prefix = version.to_bytes(_VERSION_BYTES, "big")
        return prefix + seal(key, plaintext, account_id.encode() + prefix)

    def _open(self, account_id: str, blob: bytes, index: int) -> bytes:
        version, key = self._key()
        prefix = blob[:_VERSION_BYTES]
        if len(blob) <= _VERSION_BYTES:
            raise InvalidArgument.one(
                f"segments[{index}].sealed_frames",
                "required: the segment's result as the matcher sealed it",
                reason="BAD_SEGMENT",
            )
        if int.from_bytes(prefix, "big") != version:
            raise Unavailable(
                "the matcher's vault key was rotated during the job; analyse it again",
                reason="VAULT_ROTATED",
            )
        try:
            return open_sealed(key, blob[_VERSION_BYTES:], account_id.encode() + prefix)
        except SealError as exc:
            raise InvalidArgument.one(
                f"segments[{index}].sealed_frames",
                "not a segment this mesh's matcher sealed for this account",
                reason="BAD_SEGMENT",
            ) from exc


def _frames_bytes(frames: Sequence[Frame]) -> bytes:
    return json.dumps(
        [[t, [_face_json(face, signature) for face, signature in faces]] for t, faces in frames]
    ).encode()


def _face_json(face: DetectedFace, signature: Signature) -> list[Any]:
    box = face.box
    if isinstance(signature, np.ndarray):
        kind, raw = "f4", np.asarray(signature, dtype=np.float32).tobytes()
    else:
        kind, raw = "bytes", bytes(signature)
    return [box.x, box.y, box.width, box.height, face.score, kind, base64.b64encode(raw).decode()]


def _frames_of(plaintext: bytes) -> list[Frame]:
    frames: list[Frame] = []
    for t, faces in json.loads(plaintext):
        detections: list[tuple[DetectedFace, Signature]] = []
        for x, y, width, height, score, kind, raw in faces:
            data = base64.b64decode(raw)
            signature: Signature = np.frombuffer(data, dtype=np.float32) if kind == "f4" else data
            detections.append((DetectedFace(Box(x, y, width, height), score), signature))
        frames.append((float(t), detections))
    return frames
