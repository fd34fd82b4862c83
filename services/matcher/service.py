"""Matcher use cases: enroll, match (image or video), detect, delete, list, stats.

Inference runs on a small pool of worker threads (one OpenCV detector/recognizer pair per
worker, as the engine objects are not thread-safe); RPC threads hand work to it and wait, so
the number of models in memory is bounded by the pool, not by the RPC concurrency.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mixip.common.v1 import common_pb2
from mixip.runtime import logs
from mixip.runtime.db import Database
from mixip.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from mixip.runtime.idempotency import key_reused, require_same
from mixip.runtime.media import IMAGE, MediaError, Sniffed, sniff
from mixip.runtime.paging import fetch_limit, page_of
from mixip.runtime.telemetry import step
from mixip.runtime.times import Clock
from mixip.runtime.vault import Vault
from services.matcher.engines.base import Box, Candidate, DetectedFace, FaceEngine
from services.matcher.imaging import decode_image
from services.matcher.index import VECTOR_DTYPE, CollectionIndexes
from services.matcher.labels import Label, Thresholds, label_face, label_track, talents_to_check
from services.matcher.peers import ConsentPort
from services.matcher.settings import Limits
from services.matcher.store import (
    FaceRequestRow,
    FaceRow,
    bump_version,
    collection_version,
    count_talent_faces,
    delete_faces,
    delete_legacy_digests,
    delete_talent_face,
    enrollment_digest,
    face_by_request,
    legacy_faces,
    live_counts,
    live_faces_page,
    live_talent_groups,
    open_face,
    seal_face,
    sealed_faces,
    talent_face,
    talent_face_ids,
)
from services.matcher.video import (
    Observation,
    Track,
    Tracker,
    Video,
    open_video,
    sample_and_track,
)

logger = logging.getLogger("mixip.matcher")
# What an erasure or a revocation rewrites: scrubbed after it (Database.scrub).
ERASED_TABLES = ("matcher_faces", "matcher_face_requests", "matcher_talent_keys")
_LEGACY_BATCH = 500


@dataclass(frozen=True)
class Face:
    """An enrolled face as the matcher reports it (never its vector)."""

    face_id: str
    account_id: str
    talent_id: str
    box: Box
    detection_score: float
    engine: str
    model: str
    created_at: datetime


def _face(row: FaceRow, talent_id: str) -> Face:
    box = Box(row.box_x, row.box_y, row.box_width, row.box_height)
    return Face(
        row.face_id,
        row.account_id,
        talent_id,
        box,
        row.detection_score,
        row.engine,
        row.model,
        row.created_at,
    )


@dataclass(frozen=True)
class FaceOutcome:
    box: Box
    detection_score: float
    label: Label
    ranges: tuple[tuple[float, float], ...] = ()
    best_frame_seconds: float = 0.0  # video: the frame whose box this is (see _track_outcomes)
    frames_seen: int = 0  # video: sampled frames the face was seen in


@dataclass(frozen=True)
class MatchOutcome:
    kind: int
    content_type: str
    width: int
    height: int
    faces: list[FaceOutcome]
    duration_seconds: float = 0.0
    frames_sampled: int = 0


@dataclass(frozen=True)
class Detection:
    box: Box
    score: float
    frame_seconds: float = 0.0


@dataclass
class DetectOutcome:
    kind: int
    content_type: str
    width: int
    height: int
    faces: list[Detection] = field(default_factory=list)


class Matcher:
    def __init__(
        self,
        db: Database,
        vault: Vault,
        engine: FaceEngine,
        consent: ConsentPort,
        indexes: CollectionIndexes,
        thresholds: Thresholds,
        limits: Limits,
        clock: Clock,
        *,
        workers: int = 2,
    ) -> None:
        self.db = db
        self.vault = vault
        self.engine = engine
        self.consent = consent
        self.indexes = indexes
        self.thresholds = thresholds
        self.limits = limits
        self.clock = clock
        self.workers = workers
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="matcher-inference")
        # Tests pause an enrollment at its step boundaries through this hook (a no-op here).
        self.checkpoint: Callable[[str], None] = lambda name: None

    def warm_up(self) -> None:
        """Loads the models in every worker before the first request pays for it."""
        for future in [self.pool.submit(self.engine.warm_up) for _ in range(self.workers)]:
            future.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    # -- enrollment ---------------------------------------------------------------------------

    def enroll(self, account_id: str, talent_id: str, data: bytes, request_id: str) -> Face:
        if request_id:
            earlier = self._by_request(account_id, request_id, talent_id, data)
            if earlier is not None:
                return _face(earlier, talent_id)
        image, _ = self._decode(data, "image")
        # No face is even looked for without consent to process the talent's biometrics.
        self._require_biometric_consent(account_id, talent_id)
        self.checkpoint("enroll.consented")
        faces = self.pool.submit(self.engine.detect, image).result()
        face = self._single_usable_face(faces)
        enrolled = self.pool.submit(self.engine.enroll, account_id, talent_id, image, face).result()
        del image  # the enrollment image is never kept
        self.checkpoint("enroll.embedded")
        vector = None if enrolled.vector is None else enrolled.vector.astype(VECTOR_DTYPE).tobytes()
        row = FaceRow(
            face_id=enrolled.face_id,
            account_id=account_id,
            engine=self.engine.name,
            model=self.engine.model,
            box_x=face.box.x,
            box_y=face.box.y,
            box_width=face.box.width,
            box_height=face.box.height,
            detection_score=face.score,
            created_at=self.clock(),
            request_id=request_id or None,
        )
        try:
            with self.db.write() as session:
                # The collection row's lock first, before the talent's key is read: a deletion
                # that destroys the key (it takes the same lock before it counts what is left)
                # either sees this face, or has destroyed the key before it is read here, and a
                # new one is made. No face is ever sealed under a key that is gone.
                bump_version(session, account_id, added=[row.face_id])
                key = self.vault.talent_keys(session, account_id, [talent_id], create=True)
                row.talent_ref = key[talent_id].ref
                row.sealed = seal_face(key[talent_id], row.face_id, talent_id, vector)
                self.checkpoint("enroll.keyed")
                session.add(row)
                if request_id:
                    session.flush()
                    digest = enrollment_digest(key[talent_id], talent_id, data)
                    session.add(FaceRequestRow(face_id=row.face_id, digest=digest))
        except IntegrityError:
            self.engine.delete(account_id, [enrolled.face_id])
            earlier = (
                self._by_request(account_id, request_id, talent_id, data) if request_id else None
            )
            if earlier is None:
                raise
            return _face(earlier, talent_id)
        except Exception:
            self.engine.delete(account_id, [enrolled.face_id])
            raise
        self.checkpoint("enroll.inserted")
        # Consent may have been revoked (or the talent erased: consent is an erasure's first
        # step) while we embedded: its deletion could have run before our insert. Check again,
        # and undo the enrollment if so.
        try:
            active = self.consent.biometric_active(account_id, talent_id)
        except BaseException:  # unknown: fail closed, as if revoked (the caller may retry)
            self.delete_talent(account_id, talent_id)
            raise
        if not active:
            self.delete_talent(account_id, talent_id)
            raise FailedPrecondition(
                "biometric processing consent was revoked during enrollment",
                reason="BIOMETRIC_CONSENT_REQUIRED",
            )
        self.checkpoint("enroll.rechecked")
        logs.log(
            logger, "face enrolled", account=account_id, face=row.face_id, engine=self.engine.name
        )
        return _face(row, talent_id)

    def _by_request(
        self, account_id: str, request_id: str, talent_id: str, data: bytes
    ) -> FaceRow | None:
        """The face enrolled earlier under `request_id`; refused if that enrollment had other
        content (talent or image), or if its talent's key is gone (nothing can be compared)."""
        with self.db.read() as session:
            found = face_by_request(session, account_id, request_id)
            if found is None:
                return None
            earlier, earlier_digest = found
            ref = earlier.talent_ref
            key = self.vault.keys_by_ref(session, [ref]).get(ref) if ref else None
        if key is None or earlier.sealed is None:
            raise key_reused()
        if earlier_digest is None:  # enrolled before keyed digests: the talent must match
            require_same(open_face(key, earlier.face_id, earlier.sealed)[0], talent_id)
        else:
            require_same(earlier_digest, enrollment_digest(key, talent_id, data))
        return earlier

    def _require_biometric_consent(self, account_id: str, talent_id: str) -> None:
        if not self.consent.biometric_active(account_id, talent_id):
            raise FailedPrecondition(
                "the talent has no active biometric processing consent; record it first",
                reason="BIOMETRIC_CONSENT_REQUIRED",
            )

    def _single_usable_face(self, faces: Sequence[DetectedFace]) -> DetectedFace:
        usable = [f for f in faces if f.score >= self.limits.enroll_min_score]
        if not usable:
            raise InvalidArgument.one("image", "no face found in the image", reason="NO_FACE")
        if len(usable) > 1:
            raise InvalidArgument.one(
                "image",
                f"{len(usable)} faces found; enrollment needs an image of exactly one face",
                reason="MULTIPLE_FACES",
            )
        face = usable[0]
        smallest = self.limits.min_face_pixels
        if min(face.box.width, face.box.height) < smallest:
            raise InvalidArgument.one(
                "image",
                f"the face is {face.box.width}x{face.box.height} px; "
                f"at least {smallest}x{smallest} px is needed",
                reason="FACE_TOO_SMALL",
            )
        return face

    # -- matching -----------------------------------------------------------------------------

    def match(self, account_id: str, project_id: str, data: bytes) -> MatchOutcome:
        sniffed = self._sniff(data)
        if sniffed.kind == IMAGE:
            with step("matcher.decode"):
                image, sniffed = self._decode(data, "media")
            with step("matcher.analyse"):  # detection and a signature per face, on the pool
                faces, signatures = self.pool.submit(self._analyse, image).result()
            labels = self._labels(account_id, project_id, signatures)
            return MatchOutcome(
                common_pb2.MEDIA_KIND_IMAGE,
                sniffed.content_type,
                sniffed.width or 0,  # set for every decoded image
                sniffed.height or 0,
                [FaceOutcome(f.box, f.score, lab) for f, lab in zip(faces, labels, strict=True)],
            )
        limits = self.limits
        tracker = Tracker(interval_seconds=1.0 / limits.video_rate_hz)
        with self._video(data) as video:
            analysed = sample_and_track(
                video,
                lambda frame: self.pool.submit(self._analyse, frame),
                tracker,
                rate_hz=limits.video_rate_hz,
                burst_rate_hz=limits.video_burst_rate_hz,
                burst_seconds=limits.video_burst_seconds,
                max_in_flight=2 * self.workers,
            )
            width, height, duration = video.width, video.height, video.duration_seconds
        return MatchOutcome(
            common_pb2.MEDIA_KIND_VIDEO,
            sniffed.content_type,
            width,
            height,
            self._track_outcomes(account_id, project_id, tracker.tracks()),
            duration_seconds=duration,
            frames_sampled=analysed,
        )

    def detect(self, data: bytes) -> DetectOutcome:
        sniffed = self._sniff(data)
        if sniffed.kind == IMAGE:
            image, sniffed = self._decode(data, "media")
            faces = self.pool.submit(self.engine.detect, image).result()
            return DetectOutcome(
                common_pb2.MEDIA_KIND_IMAGE,
                sniffed.content_type,
                sniffed.width or 0,  # set for every decoded image
                sniffed.height or 0,
                [Detection(f.box, f.score) for f in faces],
            )
        with self._video(data) as video:
            outcome = DetectOutcome(
                common_pb2.MEDIA_KIND_VIDEO, sniffed.content_type, video.width, video.height
            )
            for t, faces, _ in self._detect_frames(video):
                outcome.faces.extend(Detection(f.box, f.score, t) for f in faces)
        return outcome

    def _sniff(self, data: bytes) -> Sniffed:
        try:
            return sniff(data)
        except MediaError as exc:
            raise InvalidArgument.one("media", str(exc), reason="BAD_MEDIA") from exc

    def _decode(self, data: bytes, field_name: str) -> tuple[np.ndarray, Sniffed]:
        try:
            return decode_image(data, max_pixels=self.limits.max_pixels)
        except MediaError as exc:
            raise InvalidArgument.one(field_name, str(exc), reason="BAD_MEDIA") from exc

    @contextmanager
    def _video(self, data: bytes) -> Iterator[Video]:
        """The opened video; any MediaError (on opening or while reading) is bad input."""
        try:
            with open_video(
                data, max_seconds=self.limits.max_video_seconds, max_pixels=self.limits.max_pixels
            ) as video:
                yield video
        except MediaError as exc:
            raise InvalidArgument.one("media", str(exc), reason="BAD_MEDIA") from exc

    def _analyse(
        self, image: np.ndarray, describe: bool = True
    ) -> tuple[list[DetectedFace], list[Any]]:
        faces = self.engine.detect(image)
        signatures = self.engine.describe(image, faces) if faces and describe else []
        return faces, signatures

    def _detect_frames(self, video: Video) -> list[tuple[float, list[DetectedFace], list[Any]]]:
        """Frames at the base rate, detected on the pool, a bounded number in flight, in time
        order (no tracking, so no denser sampling around new faces)."""
        results: list[tuple[float, list[DetectedFace], list[Any]]] = []
        in_flight: deque[tuple[float, Future[tuple[list[DetectedFace], list[Any]]]]] = deque()
        for t, frame in video.frames(self.limits.video_rate_hz):
            in_flight.append((t, self.pool.submit(self._analyse, frame, False)))
            if len(in_flight) >= 2 * self.workers:
                done_t, future = in_flight.popleft()
                results.append((done_t, *future.result()))
        while in_flight:
            done_t, future = in_flight.popleft()
            results.append((done_t, *future.result()))
        return results

    def _labels(self, account_id: str, project_id: str, signatures: Sequence[Any]) -> list[Label]:
        """Searches every face at once, asks consent once, labels each face."""
        candidates, biometric, usage = self._search(account_id, project_id, signatures)
        return [
            label_face(c, self.thresholds, biometric_active=biometric, usage_active=usage)
            for c in candidates
        ]

    def _track_outcomes(
        self, account_id: str, project_id: str, tracks: Sequence[Track]
    ) -> list[FaceOutcome]:
        """Each track labelled by its best consented match over its observations (one search,
        one consent call for them all). Its box and `best_frame_seconds` are those of the frame
        that decided the label, or for an UNKNOWN face its clearest frame."""
        searched = [self._searched(track) for track in tracks]
        flat = [o.signature for observations in searched for o in observations]
        candidates, biometric, usage = self._search(account_id, project_id, flat)
        outcomes, start = [], 0
        for track, observations in zip(tracks, searched, strict=True):
            per_observation = candidates[start : start + len(observations)]
            start += len(observations)
            label, decisive = label_track(
                per_observation, self.thresholds, biometric_active=biometric, usage_active=usage
            )
            shown = track.clearest if decisive is None else observations[decisive]
            outcomes.append(
                FaceOutcome(
                    shown.face.box,
                    shown.face.score,
                    label,
                    track.ranges,
                    shown.t,
                    frames_seen=len(track.observations),
                )
            )
        return outcomes

    def _searched(self, track: Track) -> Sequence[Observation]:
        """The observations worth a search: all of them when search is a local vector lookup,
        else the clearest few (each is a remote call)."""
        if self.engine.has_vectors:
            return track.observations
        ranked = sorted(
            track.observations, key=lambda o: -o.face.score * o.face.box.width * o.face.box.height
        )
        return ranked[: self.limits.video_searches_per_track]

    def _search(
        self, account_id: str, project_id: str, signatures: Sequence[Any]
    ) -> tuple[list[list[Candidate]], set[str], set[str]]:
        """Candidates per signature, and the consents (biometric, face usage for the project)
        of the talents among them whose consent can change a label."""
        if not signatures:
            return [], set(), set()
        with step("matcher.search"):
            candidates: list[list[Candidate]] = self.engine.search(
                account_id, signatures, self.limits.top_k
            )
        talents = set().union(*(talents_to_check(c, self.thresholds) for c in candidates))
        with step("matcher.consent"):
            biometric, usage = (
                self.consent.active_sets(account_id, talents, project_id)
                if talents
                else (set(), set())
            )
        return candidates, biometric, usage

    # -- deletion and listings ----------------------------------------------------------------

    def delete_talent(
        self, account_id: str, talent_id: str, *, enrolled_before: datetime | None = None
    ) -> int:
        """Deletes the talent's faces (those enrolled at or before `enrolled_before`, if
        given), from the engine first (idempotent both ways). When no face of the talent is
        left, its key is destroyed in the same transaction; then the tables are scrubbed, so
        no copy of the rows stays readable (docs/erasure.md)."""
        with self.db.read() as session:
            ref = self.vault.ref(session, account_id, talent_id)
            face_ids = talent_face_ids(session, account_id, ref, enrolled_before) if ref else []
        if not face_ids:  # a key exists only while a face does: nothing to destroy either
            return 0
        self.engine.delete(account_id, face_ids)
        with self.db.write() as session:
            deleted = delete_faces(session, face_ids)
            bump_version(session, account_id, removed=face_ids)
            destroyed = self._destroy_key_if_unused(session, account_id, talent_id)
        self.db.scrub(ERASED_TABLES)
        logs.log(logger, "talent faces deleted", account=account_id, deleted=deleted, key=destroyed)
        return deleted

    def _destroy_key_if_unused(self, session: Session, account_id: str, talent_id: str) -> bool:
        """Destroys the talent's key when none of its faces is left. Called after
        `bump_version`, whose lock makes a concurrent enrollment of the talent either visible
        here or wait until the key is gone (see `enroll`)."""
        ref = self.vault.ref(session, account_id, talent_id)
        if ref is None:
            return False
        left = count_talent_faces(session, account_id, ref)
        return not left and self.vault.destroy(session, account_id, talent_id)

    def delete_face(self, account_id: str, talent_id: str, face_id: str) -> tuple[Face, int]:
        """Deletes one face of a talent (a correction), from the engine first, then from the
        database with a collection version bump in the same transaction, so every replica drops
        it from memory before its next match; the talent's last face takes its key with it.
        Returns the face as it was and the version. Logged with the face id, never the talent
        id."""
        with self.db.read() as session:
            ref = self.vault.ref(session, account_id, talent_id)
            row = talent_face(session, account_id, ref, face_id) if ref else None
        if row is None or ref is None:
            raise NotFound("the talent has no such face", reason="FACE_NOT_FOUND")
        self.engine.delete(account_id, [face_id])
        with self.db.write() as session:
            deleted = delete_talent_face(session, account_id, ref, face_id)
            if deleted:
                version = bump_version(session, account_id, removed=[face_id])
                self._destroy_key_if_unused(session, account_id, talent_id)
            else:  # a concurrent deletion won, and bumped the version itself
                version = collection_version(session, account_id)
        if deleted:
            self.db.scrub(ERASED_TABLES)
        logs.log(
            logger,
            "talent face deleted",
            account=account_id,
            face=face_id,
            collection_version=version,
        )
        return _face(row, talent_id), version

    def list_faces(
        self, account_id: str, talent_id: str, page_size: int, after: str
    ) -> tuple[list[Face], str | None]:
        with self.db.read() as session:
            ref = self.vault.ref(session, account_id, talent_id)
            if ref is None:
                return [], None
            rows = live_faces_page(session, account_id, ref, after, fetch_limit(page_size))
        page, position = page_of(rows, page_size, lambda face: face.face_id)
        return [_face(row, talent_id) for row in page], position

    def stats(self, account_id: str) -> tuple[int, int, str]:
        with self.db.read() as session:
            faces, talents = live_counts(session, account_id)
        kind = self.indexes.for_account(account_id).kind if self.engine.has_vectors else "engine"
        return faces, talents, kind

    def enrolled_talents(
        self, account_id: str, page_size: int, after: tuple[str, bytes] | None
    ) -> tuple[list[tuple[str, str, int]], tuple[str, bytes] | None]:
        """(account, talent, face count) per enrolled talent, in (account, talent_ref) order;
        the position is the last row's (account, talent_ref)."""
        with self.db.read() as session:
            groups = live_talent_groups(session, account_id, after, fetch_limit(page_size))
            page, position = page_of(groups, page_size, lambda group: (group[0], group[1]))
            talents = self._talents_of(session, [group[3] for group in page])
        rows = [
            (str(account), talents[face_id], int(count))
            for account, _, count, face_id in page
            if face_id in talents
        ]
        return rows, position

    def _talents_of(self, session: Session, face_ids: list[str]) -> dict[str, str]:
        """The talent ids sealed in these faces, by face id (faces whose key is gone left out)."""
        rows = sealed_faces(session, face_ids)
        keys = self.vault.keys_by_ref(session, {r.talent_ref for r in rows})
        return {
            r.face_id: open_face(keys[r.talent_ref], r.face_id, r.sealed)[0]
            for r in rows
            if r.talent_ref in keys
        }

    # -- faces enrolled before sealing --------------------------------------------------------

    def seal_legacy_faces(self) -> int:
        """Seals the faces enrolled before sealing existed (clear talent id and vector, left by
        the migration) under their talents' keys, in batches, and clears the clear columns;
        deletes the plain enrollment digests (a retry of such an enrollment is compared on its
        talent); then scrubs. The number of rows sealed or deleted. Idempotent; run at start,
        before serving. Each batch bumps its accounts' collection versions, so a replica that
        loaded a collection meanwhile reloads it."""
        sealed = 0
        while True:
            with self.db.write() as session:
                rows = legacy_faces(session, _LEGACY_BATCH)
                accounts: dict[str, list[FaceRow]] = {}
                for row in rows:
                    accounts.setdefault(row.account_id, []).append(row)
                for account_id, account_rows in sorted(accounts.items()):
                    bump_version(session, account_id, added=[r.face_id for r in account_rows])
                    talents = {r.legacy_talent_id for r in account_rows if r.legacy_talent_id}
                    keys = self.vault.talent_keys(session, account_id, talents, create=True)
                    for row in account_rows:
                        key = keys[str(row.legacy_talent_id)]
                        row.talent_ref = key.ref
                        row.sealed = seal_face(
                            key, row.face_id, str(row.legacy_talent_id), row.legacy_vector
                        )
                        row.legacy_talent_id = row.legacy_vector = None
            if not rows:
                break
            sealed += len(rows)
        with self.db.write() as session:  # plain digests: no image to key them again
            dropped = delete_legacy_digests(session)
        if sealed or dropped:
            self.db.scrub(ERASED_TABLES)
            logs.log(logger, "legacy faces sealed", faces=sealed, digests_dropped=dropped)
        return sealed + dropped
