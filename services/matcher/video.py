"""Videos: sampling frames within our limits, and linking per-frame faces into tracks.

A video is matched by sampling a few frames per second, detecting faces in each, and linking
the detections of one person across frames into a `Track`; each track is then searched once
(with its mean vector or best crop) and reported with the time ranges it is on screen.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import cv2
import numpy as np

from mixip.runtime.media import VIDEO, MediaError, sniff
from services.matcher.engines.base import Box, DetectedFace
from services.matcher.imaging import check_pixels

DEFAULT_RATE_HZ = 2.0
_SUFFIXES = {"video/mp4": ".mp4", "video/quicktime": ".mov", "video/webm": ".webm"}
_EPSILON = 1e-9  # float slack when comparing frame times


@dataclass(frozen=True)
class Video:
    """An opened video; valid only inside `open_video`'s `with` block."""

    path: Path  # the private temporary copy
    fps: float
    frame_count: int
    width: int
    height: int
    max_seconds: float

    @property
    def duration_seconds(self) -> float:
        return self.frame_count / self.fps

    def frames(self, rate_hz: float = DEFAULT_RATE_HZ) -> Iterator[tuple[float, np.ndarray]]:
        """`(time in seconds, BGR frame)` about `rate_hz` times per second, from the start.

        Skipped frames are only grabbed (demuxed and decoded, not converted to BGR), and no
        frame at or past `max_seconds` is read even if the container understated its length.
        Each call reads the video again from the start.
        """
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        capture = _capture(self.path)
        try:
            next_sample = 0.0
            for index in count():
                t = index / self.fps
                if t >= self.max_seconds or not capture.grab():
                    return
                if t + _EPSILON < next_sample:
                    continue
                ok, frame = capture.retrieve()
                if not ok:
                    return
                yield t, frame
                next_sample = (math.floor(t * rate_hz + _EPSILON) + 1) / rate_hz
        finally:
            capture.release()


@contextmanager
def open_video(data: bytes, *, max_seconds: float, max_pixels: int) -> Iterator[Video]:
    """Opens uploaded MP4/MOV/WebM bytes with FFmpeg, refusing what exceeds our limits.

    FFmpeg reads from a file, so the bytes go to a private temporary file (in a fresh 0700
    directory) that is deleted when the block exits, whatever happens.
    Raises `MediaError` (safe to show to the caller).
    """
    sniffed = sniff(data)
    if sniffed.kind != VIDEO:
        raise MediaError("expected a video, got an image")
    directory = Path(tempfile.mkdtemp(prefix="mixip-video-"))  # mode 0700
    try:
        fd, name = tempfile.mkstemp(suffix=_SUFFIXES.get(sniffed.content_type), dir=directory)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        yield _probe(Path(name), max_seconds=max_seconds, max_pixels=max_pixels)
    finally:
        shutil.rmtree(directory)


def _capture(path: Path) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        capture.release()
        raise MediaError("unsupported or corrupt video: FFmpeg cannot open it")
    return capture


def _probe(path: Path, *, max_seconds: float, max_pixels: int) -> Video:
    """The video's properties, checked against our limits before decoding more than a frame."""
    capture = _capture(path)
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
        frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if not fps > 0 or frame_count <= 0 or width <= 0 or height <= 0:
            raise MediaError("unsupported or corrupt video: no frames, size or frame rate")
        duration = frame_count / fps
        if duration > max_seconds:
            raise MediaError(f"video is {duration:.1f} s long; the limit is {max_seconds:.1f} s")
        check_pixels(width, height, max_pixels=max_pixels, what="video frame")
        if not capture.grab():
            raise MediaError("unsupported or corrupt video: cannot decode its first frame")
    finally:
        capture.release()
    return Video(path, fps, frame_count, width, height, max_seconds)


Signature = np.ndarray | bytes  # an L2-normalised vector, or opaque bytes (a face crop)


# eq=False: these hold numpy arrays, which have no single truth value to compare by.
@dataclass(frozen=True, eq=False)
class Observation:
    """One face detected in one sampled frame."""

    t: float
    face: DetectedFace
    signature: Signature


@dataclass(frozen=True, eq=False)
class Track:
    """One person's detections across consecutive sampled frames."""

    observations: tuple[Observation, ...]
    # On-screen time ranges `(first_t, last_t)`, merged across small sampling gaps.
    ranges: tuple[tuple[float, float], ...]
    best: Observation  # the highest detector score x box area: the crop worth searching
    signature: Signature  # mean vector (L2-normalised) or the best observation's bytes


@dataclass(eq=False)
class _LiveTrack:
    observations: list[Observation]
    vector_sum: np.ndarray | None  # None once any signature is not a vector

    @property
    def last(self) -> Observation:
        return self.observations[-1]

    def add(self, observation: Observation) -> None:
        self.observations.append(observation)
        if self.vector_sum is not None and isinstance(observation.signature, np.ndarray):
            self.vector_sum = self.vector_sum + observation.signature
        else:
            self.vector_sum = None

    def mean_vector(self) -> np.ndarray | None:
        if self.vector_sum is None:
            return None
        norm = float(np.linalg.norm(self.vector_sum))
        return self.vector_sum / norm if norm > 0 else None


def link_tracks(
    observations_per_frame: Iterable[tuple[float, Sequence[tuple[DetectedFace, Signature]]]],
    *,
    interval_seconds: float,
    iou_min: float = 0.3,
    similarity_min: float = 0.5,
    max_gap_seconds: float | None = None,
) -> list[Track]:
    """Links each frame's `(face, signature)` pairs into tracks, ordered by first appearance.

    Frames must come in time order, `interval_seconds` apart nominally. A detection joins the
    live track whose last box it overlaps (IoU >= `iou_min`) or, with vectors, whose mean
    vector it resembles (cosine >= `similarity_min`); pairs are taken greedily by IoU + cosine
    so two people crossing keep their own tracks. A track unseen for more than
    `max_gap_seconds` (default three intervals) is closed.
    """
    if interval_seconds <= 0:
        raise ValueError(f"interval_seconds must be positive, got {interval_seconds}")
    max_gap = 3 * interval_seconds if max_gap_seconds is None else max_gap_seconds
    tracks: list[_LiveTrack] = []
    live: list[_LiveTrack] = []
    previous_t = -math.inf
    for t, detections in observations_per_frame:
        if t < previous_t:
            raise ValueError(f"frames out of time order: {t} after {previous_t}")
        previous_t = t
        live = [track for track in live if t - track.last.t <= max_gap + _EPSILON]
        observations = [Observation(t, face, signature) for face, signature in detections]
        unmatched = _assign(live, observations, iou_min=iou_min, similarity_min=similarity_min)
        for observation in unmatched:
            track = _new_track(observation)
            tracks.append(track)
            live.append(track)
    # Frames come in time order, so creation order is order of first appearance.
    return [_finish(track, interval_seconds) for track in tracks]


def _assign(
    tracks: Sequence[_LiveTrack],
    observations: Sequence[Observation],
    *,
    iou_min: float,
    similarity_min: float,
) -> list[Observation]:
    """Greedily adds observations to tracks, best combined score first; returns the rest."""
    pairs: list[tuple[float, int, int]] = []
    for i, track in enumerate(tracks):
        mean = track.mean_vector()
        for j, observation in enumerate(observations):
            iou = track.last.face.box.iou(observation.face.box)
            similarity = _cosine(mean, observation.signature)
            if iou >= iou_min or (similarity is not None and similarity >= similarity_min):
                pairs.append((iou + (similarity or 0.0), i, j))
    used_tracks: set[int] = set()
    used_observations: set[int] = set()
    for _, i, j in sorted(pairs, key=lambda pair: -pair[0]):
        if i in used_tracks or j in used_observations:
            continue
        tracks[i].add(observations[j])
        used_tracks.add(i)
        used_observations.add(j)
    return [o for j, o in enumerate(observations) if j not in used_observations]


def _cosine(mean: np.ndarray | None, signature: Signature) -> float | None:
    if mean is None or not isinstance(signature, np.ndarray):
        return None
    return float(np.dot(mean, signature))


def _new_track(observation: Observation) -> _LiveTrack:
    signature = observation.signature
    vector = signature.astype(np.float64) if isinstance(signature, np.ndarray) else None
    return _LiveTrack([observation], vector)


def _finish(track: _LiveTrack, interval_seconds: float) -> Track:
    best = max(track.observations, key=lambda o: o.face.score * _area(o.face.box))
    mean = track.mean_vector()
    signature = best.signature if mean is None else mean.astype(np.float32)
    observations = tuple(track.observations)
    return Track(observations, _ranges(observations, interval_seconds), best, signature)


def _area(box: Box) -> int:
    return box.width * box.height


def _ranges(
    observations: Sequence[Observation], interval_seconds: float
) -> tuple[tuple[float, float], ...]:
    """Consecutive times merged while gaps stay within 1.5 sampling intervals."""
    ranges: list[tuple[float, float]] = []
    for observation in observations:
        t = observation.t
        if ranges and t - ranges[-1][1] <= 1.5 * interval_seconds + _EPSILON:
            ranges[-1] = (ranges[-1][0], t)
        else:
            ranges.append((t, t))
    return tuple(ranges)
