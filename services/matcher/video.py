"""Videos: sampling frames within our limits, and linking per-frame faces into tracks.

A video is decoded from memory (an anonymous memfd, never a file on disk) by FFmpeg through PyAV,
whose decoder refuses a frame over the pixel limit before allocating it, sampled a few times
a second and more densely for a while after a face comes on screen, and each sampled frame's
faces are linked into `Track`s by appearance (their vectors) as well as position. See
docs/video.md.
"""

from __future__ import annotations

import io
import itertools
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from typing import BinaryIO

import av
import cv2
import numpy as np
from av.container import InputContainer
from av.video.stream import VideoStream

from mixip.runtime.media import VIDEO, MediaError, sniff
from services.matcher.engines.base import Box, DetectedFace
from services.matcher.imaging import check_pixels

Source = str | BinaryIO | io.RawIOBase  # a path, or a seekable file object
DEFAULT_RATE_HZ = 2.0
# After a face comes on screen, frames are sampled at this rate for this long, so anyone on
# screen for 1 s is seen in at least 3 frames at the default rate (docs/video.md).
DEFAULT_BURST_RATE_HZ = 6.0
DEFAULT_BURST_SECONDS = 0.5
# Decoded frames held ahead of the analysis (burst candidates waiting for a decision).
MAX_BUFFERED_BYTES = 256 * 1024 * 1024
_EPSILON = 1e-9  # float slack when comparing frame times


@dataclass(frozen=True, eq=False)
class Sample:
    """One decoded frame: `base` if on the regular sampling grid, else a burst candidate."""

    t: float
    image: np.ndarray
    base: bool


@dataclass(eq=False)
class Video:
    """An opened video; valid only inside `open_video`'s (or `open_stream`'s) `with` block."""

    # /proc/self/fd/N of the in-memory copy, or a seekable file object read by ranges
    # (services/matcher/ranges.py), rewound for every pass.
    path: Source
    fps: float
    # The frame count the container declares; None when it declares no duration (WebM or
    # MKV written live), in which case frames are counted while sampling, within the limit.
    declared_frames: int | None
    width: int
    height: int
    max_seconds: float
    max_pixels: int
    frames_counted: int = field(default=0)  # frames seen by the last sampling that reached the end

    @property
    def frame_count(self) -> int:
        return self.declared_frames if self.declared_frames is not None else self.frames_counted

    @property
    def duration_seconds(self) -> float:
        return self.frame_count / self.fps

    def frames(self, rate_hz: float = DEFAULT_RATE_HZ) -> Iterator[tuple[float, np.ndarray]]:
        """`(time in seconds, BGR frame)` about `rate_hz` times per second, from the start."""
        for sample in self.samples(rate_hz):
            yield sample.t, sample.image

    def samples(
        self,
        rate_hz: float,
        burst_rate_hz: float | None = None,
        *,
        start: float = 0.0,
        end: float = math.inf,
    ) -> Iterator[Sample]:
        """Frames on the `rate_hz` grid (`base`), and, with `burst_rate_hz`, the frames between
        them on that denser grid (burst candidates), in time order, from `start` (the grids
        stay those of a pass from 0, so a segment samples the frames a whole pass samples)
        until `end`.

        Skipped frames are only decoded (not converted to BGR), and no frame at or past
        `max_seconds` is read even if the container understated its length; a video that
        declared no length and runs past the limit is refused (`MediaError`), and so is a frame
        over `max_pixels` wherever it comes (a stream may grow at a keyframe). Each call reads
        the video again (from the keyframe before `start`).
        """
        if rate_hz <= 0 or (burst_rate_hz is not None and burst_rate_hz <= 0):
            raise ValueError(f"sampling rates must be positive, got {rate_hz}, {burst_rate_hz}")
        with _open(self.path, self.max_pixels) as (container, stream):
            first = 0
            if start > 0:
                container.seek(_pts(stream, start), stream=stream, backward=True)
            frames = _decoded(container, stream, self.max_pixels)
            if start > 0:  # where the seek landed: the keyframe before `start`
                landed = next(frames, None)
                if landed is None:
                    return
                first = _frame_index(landed, stream, self.fps)
                frames = itertools.chain([landed], frames)
            next_base = math.ceil(start * rate_hz - _EPSILON) / rate_hz
            next_burst = (
                math.ceil(start * burst_rate_hz - _EPSILON) / burst_rate_hz
                if burst_rate_hz is not None
                else 0.0
            )
            for index in count(first):
                t = index / self.fps
                if t >= self.max_seconds:
                    if self.declared_frames is None and next(frames, None) is not None:
                        raise MediaError(_too_long(f"over {self.max_seconds:.1f}", self))
                    return
                if t >= end - _EPSILON:
                    return
                frame = next(frames, None)
                if frame is None:
                    self.frames_counted = index
                    return
                if t < start - _EPSILON:
                    continue
                base = t + _EPSILON >= next_base
                burst = burst_rate_hz is not None and t + _EPSILON >= next_burst
                if not (base or burst):
                    continue
                if base:
                    next_base = (math.floor(t * rate_hz + _EPSILON) + 1) / rate_hz
                if burst_rate_hz is not None:
                    next_burst = (math.floor(t * burst_rate_hz + _EPSILON) + 1) / burst_rate_hz
                yield Sample(t, _upright(frame), base)

    def keyframes(self) -> list[float]:
        """The times of the video's keyframes, in order, from its packets (demuxed, not
        decoded): where a segment can start without decoding what comes before it."""
        times = []
        with _open(self.path, self.max_pixels) as (container, stream):
            origin = stream.start_time or 0
            for packet in container.demux(stream):
                if packet.is_keyframe and packet.pts is not None and stream.time_base:
                    times.append(float((packet.pts - origin) * stream.time_base))
        return sorted(times)


def _pts(stream: VideoStream, seconds: float) -> int:
    """`seconds` in the stream's time base, from its first frame."""
    base = stream.time_base
    return (stream.start_time or 0) + (int(seconds / base) if base else 0)


def _frame_index(frame: av.VideoFrame, stream: VideoStream, fps: float) -> int:
    """The frame's position from the stream's first frame, by its time (after a seek)."""
    if frame.pts is None or not stream.time_base:
        return 0
    return round(float((frame.pts - (stream.start_time or 0)) * stream.time_base) * fps)


@contextmanager
def open_video(data: bytes, *, max_seconds: float, max_pixels: int) -> Iterator[Video]:
    """Opens uploaded MP4/MOV/WebM/MKV bytes with FFmpeg, refusing what exceeds our limits.

    FFmpeg reads fastest from a path (a Python file object is read through Python callbacks),
    so the bytes go to an anonymous in-memory file (memfd) read through /proc/self/fd: nothing
    reaches a disk, and the memory is freed when the block exits, whatever happens. Raises
    `MediaError` (safe to show to the caller).
    """
    sniffed = sniff(data)
    if sniffed.kind != VIDEO:
        raise MediaError("expected a video, got an image")
    fd = os.memfd_create("mixip-video", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield _probe(f"/proc/self/fd/{fd}", max_seconds=max_seconds, max_pixels=max_pixels)
    finally:
        os.close(fd)


def open_stream(reader: BinaryIO | io.RawIOBase, *, max_seconds: float, max_pixels: int) -> Video:
    """A stored video read through `reader` (a seekable file object, e.g. a `RangeReader`
    over a segment call), never whole in memory nor on disk; refused as `open_video` refuses.
    Slower to decode than a path (FFmpeg reads through Python callbacks), which a long video
    pays for its bounded memory."""
    return _probe(reader, max_seconds=max_seconds, max_pixels=max_pixels)


@contextmanager
def _open(path: Source, max_pixels: int) -> Iterator[tuple[InputContainer, VideoStream]]:
    """The container and its first video stream, whose decoder refuses, by itself and before
    allocating it, a frame of more than `max_pixels` (libavcodec's own `max_pixels`)."""
    if not isinstance(path, str):
        path.seek(0)
    try:
        container = av.open(path, mode="r")
    except av.FFmpegError as exc:
        raise MediaError("unsupported or corrupt video: FFmpeg cannot open it") from exc
    with container:
        if not container.streams.video:
            raise MediaError("unsupported or corrupt video: FFmpeg cannot open it")
        stream = container.streams.video[0]
        # FFmpeg counts each row rounded up to its memory alignment (at most 63 pixels more).
        stream.codec_context.options = {"max_pixels": str(max_pixels)}
        stream.thread_type = "AUTO"  # frame and slice threads, FFmpeg's (and OpenCV's) default
        yield container, stream


def _decoded(
    container: InputContainer, stream: VideoStream, max_pixels: int
) -> Iterator[av.VideoFrame]:
    """Every frame of `stream` in order, each checked against `max_pixels` (behind the decoder's
    own limit). As OpenCV's FFmpeg capture did, a packet the decoder finds corrupt is skipped
    and a container that cannot be read further ends the video."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets, None)
        except av.FFmpegError:
            return
        if packet is None:
            return
        try:
            frames = stream.decode(packet)
        except av.FFmpegError as exc:
            # A frame over the limit, which the decoder would not allocate? H.264 and HEVC keep
            # the size they refused (and fail with "invalid data" or "out of memory"), VP8 and
            # MPEG-4 zero it and fail with EINVAL. Anything else is a corrupt packet.
            context = stream.codec_context
            check_pixels(context.width, context.height, max_pixels=max_pixels, what="video frame")
            if isinstance(exc, av.error.ArgumentError):
                raise MediaError(
                    f"video frame is over the limit of {max_pixels / 1e6:.1f} MP "
                    "or of an invalid size: the decoder refused it"
                ) from exc
            continue
        for frame in frames:
            check_pixels(frame.width, frame.height, max_pixels=max_pixels, what="video frame")
            yield frame


# Frames are turned as players turn them: by the container's rotation (a phone held upright),
# which FFmpeg gives counter-clockwise; mirroring is ignored, as OpenCV ignored it.
_TURNS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def _upright(frame: av.VideoFrame) -> np.ndarray:
    """The frame as BGR pixels (as OpenCV's capture converts them), turned upright."""
    image = frame.to_ndarray(format="bgr24")
    turn = _TURNS.get(-frame.rotation % 360)
    return image if turn is None else cv2.rotate(image, turn)


def _too_long(length: str, video: Video) -> str:
    return f"video is {length} s long; the limit is {video.max_seconds:.1f} s"


def _probe(path: Source, *, max_seconds: float, max_pixels: int) -> Video:
    """The video's properties, checked against our limits before decoding more than a frame."""
    with _open(path, max_pixels) as (container, stream):
        fps = float(stream.guessed_rate or 0)
        width, height = stream.codec_context.width, stream.codec_context.height
        if not fps > 0 or width <= 0 or height <= 0:
            raise MediaError("unsupported or corrupt video: no frames, size or frame rate")
        video = Video(
            path,
            fps,
            _declared_frames(container, stream, fps),
            width,
            height,
            max_seconds,
            max_pixels,
        )
        if video.declared_frames is not None and video.duration_seconds > max_seconds:
            raise MediaError(_too_long(f"{video.duration_seconds:.1f}", video))
        check_pixels(width, height, max_pixels=max_pixels, what="video frame")
        first = next(_decoded(container, stream, max_pixels), None)
        if first is None:
            raise MediaError("unsupported or corrupt video: cannot decode its first frame")
        # Frames come out turned by the container's rotation (a phone held upright): report
        # the size the boxes are measured in, which is the viewer's.
        video.height, video.width = _upright(first).shape[:2]
    return video


def _declared_frames(container: InputContainer, stream: VideoStream, fps: float) -> int | None:
    """The frame count the container declares, or else its duration's worth (as OpenCV counts
    them); None when it declares neither."""
    if stream.frames > 0:
        return stream.frames
    if container.duration is not None and container.duration > 0:
        seconds = container.duration / av.time_base
    elif stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    else:
        return None
    frames = math.floor(seconds * fps + 0.5)
    return frames if frames > 0 else None


Analysis = tuple[Sequence[DetectedFace], Sequence["Signature"]]


def sample_and_track(
    video: Video,
    analyse: Callable[[np.ndarray], Future[Analysis]],
    tracker: Tracker,
    *,
    rate_hz: float,
    burst_rate_hz: float = DEFAULT_BURST_RATE_HZ,
    burst_seconds: float = DEFAULT_BURST_SECONDS,
    max_in_flight: int = 4,
    max_buffered_bytes: int = MAX_BUFFERED_BYTES,
    start: float = 0.0,
    end: float = math.inf,
) -> int:
    """Samples `video`, analyses frames with `analyse` (a few in flight at once) and feeds the
    results to `tracker` in time order; returns how many frames were analysed.

    Every frame on the `rate_hz` grid is analysed. When a frame shows a face that no live track
    holds (someone new, or back after a gap), the frames on the `burst_rate_hz` grid in the
    following `burst_seconds` are analysed too. Those candidates are decoded ahead while the
    earlier results are pending, at most `max_buffered_bytes` of them, and dropped if no face
    calls for them. Only the frames from `start` until `end` are sampled (a segment).
    """
    run = _Run(
        video.samples(
            rate_hz, burst_rate_hz if burst_rate_hz > rate_hz else None, start=start, end=end
        ),
        analyse,
        tracker,
        burst_seconds,
        max_in_flight,
        max_buffered_bytes,
    )
    try:
        return run.until_done()
    finally:  # after a failure, frames not yet analysed are not worth the pool's time
        run.cancel()


@dataclass(eq=False)
class _Run:
    """One pass of `sample_and_track`."""

    source: Iterator[Sample]
    analyse: Callable[[np.ndarray], Future[Analysis]]
    tracker: Tracker
    burst_seconds: float
    max_in_flight: int
    max_buffered_bytes: int
    pending: deque[_Slot] = field(default_factory=deque)  # in time order
    burst_until: float = -math.inf
    in_flight: int = 0
    buffered: int = 0  # bytes of the burst candidates held
    exhausted: bool = False

    def until_done(self) -> int:
        analysed = 0
        while True:
            self._read_ahead()
            if not self.pending:
                return analysed
            slot = self.pending.popleft()
            if slot.future is None:  # a burst candidate no new face called for
                self.buffered -= slot.image.nbytes if slot.image is not None else 0
                continue
            self.in_flight -= 1
            faces, signatures = slot.future.result()
            analysed += 1
            fresh = self.tracker.add(slot.t, list(zip(faces, signatures, strict=True)))
            if any(fresh):
                self._burst(slot.t + self.burst_seconds)

    def cancel(self) -> None:
        for slot in self.pending:
            if slot.future is not None:
                slot.future.cancel()

    def _read_ahead(self) -> None:
        while not self.exhausted and (
            not self.pending
            or (self.in_flight < self.max_in_flight and self.buffered < self.max_buffered_bytes)
        ):
            sample = next(self.source, None)
            if sample is None:
                self.exhausted = True
            elif sample.base or sample.t <= self.burst_until + _EPSILON:
                self.pending.append(_Slot(sample.t, None, self.analyse(sample.image)))
                self.in_flight += 1
            else:
                self.pending.append(_Slot(sample.t, sample.image, None))
                self.buffered += sample.image.nbytes

    def _burst(self, until: float) -> None:
        """Analyses the burst candidates up to `until`, those held and those still to come."""
        self.burst_until = max(self.burst_until, until)
        for waiting in self.pending:
            if waiting.image is not None and waiting.t <= self.burst_until + _EPSILON:
                self.buffered -= waiting.image.nbytes
                waiting.future, waiting.image = self.analyse(waiting.image), None
                self.in_flight += 1


@dataclass(eq=False)
class _Slot:
    t: float
    image: np.ndarray | None  # a decoded burst candidate awaiting a decision
    future: Future[Analysis] | None  # submitted for analysis


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
    """One person's detections across sampled frames."""

    observations: tuple[Observation, ...]
    # On-screen time ranges `(first_t, last_t)`, merged across small sampling gaps.
    ranges: tuple[tuple[float, float], ...]
    clearest: Observation  # the highest detector score x box area
    appearance: np.ndarray | None  # the mean vector (L2-normalised float32); None for bytes


@dataclass(eq=False)
class _LiveTrack:
    observations: list[Observation]
    vector_sum: np.ndarray | None  # None once any signature is not a vector
    recent: deque[np.ndarray]  # the last few vectors
    # Cached from the above on each add (L2-normalised; None without vectors):
    mean: np.ndarray | None = None  # the whole track's appearance
    recent_mean: np.ndarray | None = None  # the appearance a continuation must match

    @property
    def last(self) -> Observation:
        return self.observations[-1]

    def add(self, observation: Observation) -> None:
        self.observations.append(observation)
        signature = observation.signature
        if self.vector_sum is not None and isinstance(signature, np.ndarray):
            self.vector_sum = self.vector_sum + signature
            self.recent.append(signature.astype(np.float64))
            self.mean = _normalised(self.vector_sum)
            self.recent_mean = _normalised(np.sum(self.recent, axis=0))
        else:
            self.vector_sum = self.mean = self.recent_mean = None


def _present(vector: np.ndarray | None) -> np.ndarray:
    """A vector the caller has already checked is there."""
    assert vector is not None
    return vector


def _normalised(vector: np.ndarray) -> np.ndarray | None:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else None


class Tracker:
    """Links each sampled frame's `(face, signature)` pairs into tracks, one frame at a time.

    With vectors, an observation continues a live track only if it resembles the track's
    recent appearance (the mean of its last `window` vectors): at cosine >= `appearance_min`
    where its box overlaps the track's last box (IoU >= `iou_min`), or >= `similarity_min`
    anywhere (a cut, a jump). So two people never share a track by position alone, and where
    someone else appears in a track's place the track splits: the newcomer starts their own.
    A track unseen for more than `max_gap_seconds` (default three intervals) is dormant: only
    its own face, at cosine >= `similarity_min` to its mean or recent appearance, brings it
    back (one track, a new time range). Without vectors (opaque crops) tracks link by box
    overlap only and a dormant track stays closed. Pairs are taken greedily, best IoU + cosine
    first, each track and each observation at most once per frame.
    """

    def __init__(
        self,
        *,
        interval_seconds: float,
        iou_min: float = 0.3,
        appearance_min: float = 0.3,
        similarity_min: float = 0.5,
        max_gap_seconds: float | None = None,
        window: int = 5,
    ) -> None:
        if interval_seconds <= 0:
            raise ValueError(f"interval_seconds must be positive, got {interval_seconds}")
        self.interval_seconds = interval_seconds
        self.iou_min = iou_min
        self.appearance_min = appearance_min
        self.similarity_min = similarity_min
        self.max_gap = 3 * interval_seconds if max_gap_seconds is None else max_gap_seconds
        self.window = window
        self._tracks: list[_LiveTrack] = []
        self._previous_t = -math.inf

    def add(self, t: float, detections: Sequence[tuple[DetectedFace, Signature]]) -> list[bool]:
        """Links one frame's detections; for each, whether it is newly on screen (it started a
        track or brought a dormant one back) rather than continuing a live track."""
        if t < self._previous_t:
            raise ValueError(f"frames out of time order: {t} after {self._previous_t}")
        self._previous_t = t
        observations = [Observation(t, face, signature) for face, signature in detections]
        live = [t - track.last.t <= self.max_gap + _EPSILON for track in self._tracks]
        pairs = self._live_pairs(observations, live) + self._dormant_pairs(observations, live)
        fresh = [True] * len(observations)
        used_tracks: set[int] = set()
        used_observations: set[int] = set()
        for _, i, j in sorted(pairs, key=lambda pair: -pair[0]):
            if i in used_tracks or j in used_observations:
                continue
            self._tracks[i].add(observations[j])
            fresh[j] = not live[i]
            used_tracks.add(i)
            used_observations.add(j)
        for j, observation in enumerate(observations):
            if j not in used_observations:
                self._tracks.append(self._new_track(observation))
        return fresh

    def tracks(self) -> list[Track]:
        """The tracks so far, ordered by first appearance, fragments of one person joined."""
        return [self._finish(group) for group in self._joined_fragments()]

    def _joined_fragments(self) -> list[list[_LiveTrack]]:
        """Tracks that never share a frame and whose mean appearances match (cosine >=
        `similarity_min`) are one person's fragments, e.g. where a fast move and a turned head
        started a second track: grouped, most similar pairs first."""
        tracks = self._tracks
        with_vectors = [i for i, track in enumerate(tracks) if track.mean is not None]
        group = list(range(len(tracks)))
        if len(with_vectors) > 1:
            means = np.stack([_present(tracks[i].mean) for i in with_vectors])
            similarity = means @ means.T
            rows, columns = np.nonzero(np.triu(similarity >= self.similarity_min, k=1))
            pairs = sorted(
                zip(rows.tolist(), columns.tolist(), strict=True),
                key=lambda rc: -similarity[rc[0], rc[1]],
            )
            seen = {i: {o.t for o in track.observations} for i, track in enumerate(tracks)}
            for r, c in pairs:
                a, b = _root(group, with_vectors[r]), _root(group, with_vectors[c])
                if a != b and not seen[a] & seen[b]:
                    first, second = min(a, b), max(a, b)
                    group[second] = first
                    seen[first] |= seen.pop(second)
        members: dict[int, list[_LiveTrack]] = {}
        for i, track in enumerate(tracks):  # creation order: order of first appearance
            members.setdefault(_root(group, i), []).append(track)
        return list(members.values())

    def _live_pairs(
        self, observations: Sequence[Observation], live: Sequence[bool]
    ) -> list[tuple[float, int, int]]:
        """`(score, track, observation)` for each observation that may continue a live track."""
        pairs = []
        for i, track in enumerate(self._tracks):
            if not live[i]:
                continue
            for j, observation in enumerate(observations):
                iou = track.last.face.box.iou(observation.face.box)
                signature = observation.signature
                if track.recent_mean is None or not isinstance(signature, np.ndarray):
                    if iou >= self.iou_min:
                        pairs.append((iou, i, j))
                    continue
                similarity = float(np.dot(track.recent_mean, signature))
                if similarity >= self.similarity_min or (
                    iou >= self.iou_min and similarity >= self.appearance_min
                ):
                    pairs.append((iou + similarity, i, j))
        return pairs

    def _dormant_pairs(
        self, observations: Sequence[Observation], live: Sequence[bool]
    ) -> list[tuple[float, int, int]]:
        """Pairs that bring a dormant track back: by appearance only (one matrix product, as a
        long video accumulates many dormant tracks)."""
        dormant = [
            i for i, track in enumerate(self._tracks) if not live[i] and track.mean is not None
        ]
        vectors = [j for j, o in enumerate(observations) if isinstance(o.signature, np.ndarray)]
        if not dormant or not vectors:
            return []
        queries = np.stack([observations[j].signature for j in vectors]).astype(np.float64)
        means = np.stack([_present(self._tracks[i].mean) for i in dormant])
        recents = np.stack([_present(self._tracks[i].recent_mean) for i in dormant])
        similarity = np.maximum(means @ queries.T, recents @ queries.T)
        rows, columns = np.nonzero(similarity >= self.similarity_min)
        return [
            (float(similarity[r, c]), dormant[r], vectors[c])
            for r, c in zip(rows.tolist(), columns.tolist(), strict=True)
        ]

    def _new_track(self, observation: Observation) -> _LiveTrack:
        signature = observation.signature
        total = np.zeros(signature.shape) if isinstance(signature, np.ndarray) else None
        track = _LiveTrack([], total, deque(maxlen=self.window))
        track.add(observation)
        return track

    def _finish(self, fragments: Sequence[_LiveTrack]) -> Track:
        observations = tuple(sorted((o for f in fragments for o in f.observations), key=_time))
        clearest = max(observations, key=lambda o: o.face.score * _area(o.face.box))
        sums = [f.vector_sum for f in fragments]
        mean = (
            None
            if any(s is None for s in sums)
            else _normalised(np.sum([_present(s) for s in sums], axis=0))
        )
        return Track(
            observations,
            _ranges(observations, self.interval_seconds),
            clearest,
            None if mean is None else mean.astype(np.float32),
        )


def _root(group: list[int], i: int) -> int:
    while group[i] != i:
        i = group[i]
    return i


def _time(observation: Observation) -> float:
    return observation.t


def link_tracks(
    observations_per_frame: Iterable[tuple[float, Sequence[tuple[DetectedFace, Signature]]]],
    *,
    interval_seconds: float,
    **options: float,
) -> list[Track]:
    """All frames through one `Tracker` (same options); the tracks by first appearance."""
    tracker = Tracker(interval_seconds=interval_seconds, **options)  # type: ignore[arg-type]
    for t, detections in observations_per_frame:
        tracker.add(t, detections)
    return tracker.tracks()


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
