"""The `rekognition` face engine: Amazon Rekognition does detection, indexing and search.

Each account gets its own collection, created on first enrolment, so one account can never
match another's talent. Rekognition's SearchFacesByImage only searches the largest face of an
image, so `describe` returns one JPEG crop per detected face and `search` queries crop by crop.
The matcher stores face metadata only; vectors stay inside Rekognition (`has_vectors` is False).

The boto3 client is injected (the composition root owns credentials, region and botocore's own
retry configuration). Image bytes never reach logs or error messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from mixip.runtime.backoff import Backoff
from services.matcher.engines.base import (
    Box,
    Candidate,
    DetectedFace,
    EngineError,
    EngineUnavailable,
    EnrolledFace,
    UnusableFace,
)
from services.matcher.imaging import encode_jpeg

logger = logging.getLogger(__name__)

# Codes that mean "try again later": the request was refused, not half-applied.
_RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "InternalServerError",
    }
)
_NOT_FOUND = "ResourceNotFoundException"
_ALREADY_EXISTS = "ResourceAlreadyExistsException"
_INVALID_PARAMETER = "InvalidParameterException"

# Service limits (Rekognition "Guidelines and quotas" and the API model).
_MAX_IDS_PER_DELETE = 4096
_MAX_SEARCH_RESULTS = 4096
_MIN_IMAGE_SIDE = 80
_COLLECTION_ID_MAX = 255
_EXTERNAL_IMAGE_ID = re.compile(r"[a-zA-Z0-9_.\-:]{1,255}")
_COLLECTION_ID_CHARS = re.compile(r"[a-zA-Z0-9_.\-]*")

_ACCOUNT_HASH_CHARS = 40
_CROP_MARGIN = 0.25
_JPEG_QUALITY = 90
_MAX_DOWNSCALES = 6


class RekognitionEngine:
    """`FaceEngine` backed by one Amazon Rekognition collection per account."""

    name = "rekognition"
    model = "rekognition"
    has_vectors = False

    def __init__(
        self,
        client: Any,
        *,
        collection_prefix: str = "mixip-",
        max_attempts: int = 5,
        base_delay_seconds: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
        search_threshold: float = 50.0,
        max_image_bytes: int = 5 * 1024 * 1024,
    ) -> None:
        if not _COLLECTION_ID_CHARS.fullmatch(collection_prefix) or (
            len(collection_prefix) + _ACCOUNT_HASH_CHARS > _COLLECTION_ID_MAX
        ):
            raise ValueError("collection_prefix must be short and use only [a-zA-Z0-9_.-]")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0.0 <= search_threshold <= 100.0:
            raise ValueError("search_threshold must be between 0 and 100")
        self._client = client
        self._prefix = collection_prefix
        self._max_attempts = max_attempts
        # Equal jitter: half fixed so delays grow, half random so concurrent workers spread
        # out; the attempts bound the wait, not a cap.
        self._backoff = Backoff(base_delay_seconds, base_delay_seconds * 2.0**max_attempts)
        self._sleep = sleep
        self._threshold = search_threshold
        self._max_image_bytes = max_image_bytes
        self._random = random.Random()
        # Collections known to exist, so enrolment does not call CreateCollection every time.
        self._collections: set[str] = set()

    def collection_id(self, account_id: str) -> str:
        """The account's collection: a hash keeps it valid, collision-free and opaque."""
        digest = hashlib.sha256(account_id.encode("utf-8")).hexdigest()
        return self._prefix + digest[:_ACCOUNT_HASH_CHARS]

    def warm_up(self) -> None:
        """Nothing to load: the models run in AWS."""

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Every face Rekognition finds, boxes in pixels of `image`, largest first."""
        response = self._call(
            "detect_faces",
            {"Image": {"Bytes": self._jpeg(image)}, "Attributes": ["DEFAULT"]},
        )
        height, width = image.shape[:2]
        faces = []
        for detail in response.get("FaceDetails", []):
            box = _to_pixels(detail.get("BoundingBox", {}), width, height)
            if box is not None:
                faces.append(DetectedFace(box=box, score=detail.get("Confidence", 0.0) / 100.0))
        faces.sort(key=lambda face: (face.box.width * face.box.height, face.score), reverse=True)
        return faces

    def describe(self, image: np.ndarray, faces: Sequence[DetectedFace]) -> list[bytes]:
        """One JPEG crop per face: SearchFacesByImage only looks at the largest face it sees."""
        return [self._jpeg(_crop(image, face.box)) for face in faces]

    def enroll(
        self, account_id: str, talent_id: str, image: np.ndarray, face: DetectedFace
    ) -> EnrolledFace:
        """Indexes the face under the talent id; Rekognition keeps the vector, not the image."""
        if not _EXTERNAL_IMAGE_ID.fullmatch(talent_id):
            raise UnusableFace("talent id must be 1-255 characters of [a-zA-Z0-9_.:-]")
        params = {
            "Image": {"Bytes": self._jpeg(_crop(image, face.box))},
            "ExternalImageId": talent_id,
            "MaxFaces": 1,
            "QualityFilter": "AUTO",
            "DetectionAttributes": ["DEFAULT"],
        }
        response = self._index_faces(account_id, params)
        records = response.get("FaceRecords", [])
        if not records:
            raise UnusableFace(f"no face of usable quality: {_unindexed_reasons(response)}")
        return EnrolledFace(face_id=records[0]["Face"]["FaceId"], vector=None)

    def search(self, account_id: str, signatures: Sequence[bytes], k: int) -> list[list[Candidate]]:
        """Up to k candidates per crop; a collection that does not exist yet is empty."""
        if k < 1:
            raise ValueError("k must be at least 1")
        collection = self.collection_id(account_id)
        max_faces = min(k, _MAX_SEARCH_RESULTS)
        results: list[list[Candidate]] = []
        for crop in signatures:
            candidates = self._search_crop(collection, crop, max_faces)
            if candidates is None:
                return [[] for _ in signatures]
            results.append(candidates)
        return results

    def delete(self, account_id: str, face_ids: Sequence[str]) -> None:
        """Removes faces in API-sized chunks; a missing collection holds nothing to delete."""
        collection = self.collection_id(account_id)
        ids = list(dict.fromkeys(face_ids))
        for start in range(0, len(ids), _MAX_IDS_PER_DELETE):
            try:
                response = self._call(
                    "delete_faces",
                    {
                        "CollectionId": collection,
                        "FaceIds": ids[start : start + _MAX_IDS_PER_DELETE],
                    },
                    passthrough=frozenset({_NOT_FOUND}),
                )
            except ClientError:
                return
            _check_deletions(response)

    def _search_crop(self, collection: str, crop: bytes, max_faces: int) -> list[Candidate] | None:
        """Candidates for the largest face of one crop: [] when the crop holds no face, None
        when the collection does not exist (nothing enrolled yet; searching must not create it)."""
        try:
            response = self._call(
                "search_faces_by_image",
                {
                    "CollectionId": collection,
                    "Image": {"Bytes": crop},
                    "MaxFaces": max_faces,
                    "FaceMatchThreshold": self._threshold,
                },
                passthrough=frozenset({_NOT_FOUND, _INVALID_PARAMETER}),
            )
        except ClientError as exc:
            if _code(exc) == _NOT_FOUND:
                return None
            if _is_no_face(exc):
                return []
            raise _engine_error(exc) from exc
        return _candidates(response)

    def _ensure_collection(self, account_id: str) -> str:
        """Creates the account's collection on first use; an existing one is just as good."""
        collection = self.collection_id(account_id)
        if collection not in self._collections:
            # ResourceAlreadyExistsException: created earlier, or concurrently by another worker.
            with contextlib.suppress(ClientError):
                self._call(
                    "create_collection",
                    {"CollectionId": collection},
                    passthrough=frozenset({_ALREADY_EXISTS}),
                )
            self._collections.add(collection)
        return collection

    def _index_faces(self, account_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """IndexFaces, recreating the collection once if it vanished since we cached it."""
        collection = self._ensure_collection(account_id)
        try:
            return self._call(
                "index_faces",
                {"CollectionId": collection, **params},
                passthrough=frozenset({_NOT_FOUND}),
            )
        except ClientError:
            self._collections.discard(collection)
        collection = self._ensure_collection(account_id)
        return self._call("index_faces", {"CollectionId": collection, **params})

    def _call(
        self,
        operation: str,
        params: dict[str, Any],
        passthrough: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        """Calls the client, retrying throttling with backoff; errors whose code is in
        `passthrough` are re-raised as ClientError for the caller to interpret, every other
        failure becomes an `EngineError` that names the code only."""
        method = getattr(self._client, operation)
        attempt = 0
        while True:
            attempt += 1
            try:
                answer: dict[str, Any] = method(**params)
                return answer
            except ClientError as exc:
                code = _code(exc)
                if code in passthrough:
                    raise
                if code not in _RETRYABLE_CODES:
                    raise _engine_error(exc) from exc
                if attempt == self._max_attempts:
                    raise EngineUnavailable(
                        f"rekognition {exc.operation_name} still failing with {code} "
                        f"after {attempt} attempts"
                    ) from exc
                delay = self._backoff.delay(attempt, self._random)
                logger.warning(
                    "event=rekognition_retry operation=%s code=%s attempt=%d delay_s=%.3f",
                    exc.operation_name,
                    code,
                    attempt,
                    delay,
                )
                self._sleep(delay)
            except (BotoConnectionError, HTTPClientError) as exc:
                # botocore has already retried the connection according to its own config.
                raise EngineUnavailable(
                    f"rekognition {operation} unreachable: {type(exc).__name__}"
                ) from exc

    def _jpeg(self, image: np.ndarray) -> bytes:
        """JPEG bytes Rekognition accepts: sides of at least 80 px, at most max_image_bytes.
        Boxes come back as ratios, so resizing never changes the pixel boxes we report."""
        height, width = image.shape[:2]
        if min(height, width) < _MIN_IMAGE_SIDE:
            scale = _MIN_IMAGE_SIDE / max(1, min(height, width))
            image = _resize(image, scale, cv2.INTER_CUBIC)
        data = _encode_jpeg(image)
        downscales = 0
        while len(data) > self._max_image_bytes:
            if downscales == _MAX_DOWNSCALES:
                raise UnusableFace(f"image does not fit in {self._max_image_bytes} bytes as JPEG")
            downscales += 1
            # JPEG size is roughly proportional to pixel count; aim a little under the limit.
            scale = 0.9 * math.sqrt(self._max_image_bytes / len(data))
            image = _resize(image, scale, cv2.INTER_AREA)
            data = _encode_jpeg(image)
        return data


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def _engine_error(exc: ClientError) -> EngineError:
    """A one-line, caller-safe message: the operation and the code, not the raw response."""
    return EngineError(f"rekognition {exc.operation_name} failed: {_code(exc)}")


def _is_no_face(exc: ClientError) -> bool:
    """SearchFacesByImage reports "There are no faces in the image" as InvalidParameterException;
    only the message tells it apart from a genuinely invalid request, which must not be hidden."""
    message = str(exc.response.get("Error", {}).get("Message", ""))
    return _code(exc) == _INVALID_PARAMETER and "no faces" in message.lower()


def _candidates(response: dict[str, Any]) -> list[Candidate]:
    candidates = [
        Candidate(
            talent_id=match["Face"]["ExternalImageId"],
            face_id=match["Face"]["FaceId"],
            similarity=float(match["Similarity"]),
        )
        for match in response.get("FaceMatches", [])
        # Faces indexed without a talent id (not by this engine) cannot be attributed.
        if "ExternalImageId" in match.get("Face", {})
    ]
    return sorted(candidates, key=lambda candidate: candidate.similarity, reverse=True)


def _unindexed_reasons(response: dict[str, Any]) -> str:
    reasons = sorted(
        {
            reason
            for face in response.get("UnindexedFaces", [])
            for reason in face.get("Reasons", [])
        }
    )
    return ", ".join(reasons) if reasons else "no face detected"


def _check_deletions(response: dict[str, Any]) -> None:
    """A face already gone is deleted; any other refusal would leave biometric data behind,
    so it is an error the caller must see (and can retry: deletion is idempotent)."""
    reasons = sorted(
        {
            reason
            for failure in response.get("UnsuccessfulFaceDeletions", [])
            for reason in failure.get("Reasons", [])
            if reason != "FACE_NOT_FOUND"
        }
    )
    if reasons:
        raise EngineError(f"rekognition DeleteFaces refused some faces: {', '.join(reasons)}")


def _to_pixels(bounding_box: dict[str, float], width: int, height: int) -> Box | None:
    """Rekognition ratios (which may overhang the frame) to clipped pixels; None if empty."""
    left, top = bounding_box.get("Left", 0.0), bounding_box.get("Top", 0.0)
    x1 = _clip(round(left * width), width)
    y1 = _clip(round(top * height), height)
    x2 = _clip(round((left + bounding_box.get("Width", 0.0)) * width), width)
    y2 = _clip(round((top + bounding_box.get("Height", 0.0)) * height), height)
    if x2 <= x1 or y2 <= y1:
        return None
    return Box(x=x1, y=y1, width=x2 - x1, height=y2 - y1)


def _crop(image: np.ndarray, box: Box) -> np.ndarray:
    """The face with a margin on every side, so Rekognition's detector sees a whole head."""
    height, width = image.shape[:2]
    dx, dy = round(box.width * _CROP_MARGIN), round(box.height * _CROP_MARGIN)
    x1, y1 = _clip(box.x - dx, width), _clip(box.y - dy, height)
    x2, y2 = _clip(box.x + box.width + dx, width), _clip(box.y + box.height + dy, height)
    if x2 <= x1 or y2 <= y1:
        raise EngineError("face box lies outside the image")
    return image[y1:y2, x1:x2]


def _clip(value: int, upper: int) -> int:
    return max(0, min(value, upper))


def _resize(image: np.ndarray, scale: float, interpolation: int) -> np.ndarray:
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=interpolation)


def _encode_jpeg(image: np.ndarray) -> bytes:
    try:
        return encode_jpeg(image, _JPEG_QUALITY)
    except ValueError as exc:
        raise EngineError("image could not be encoded as JPEG") from exc
