"""The face engine contract: one interface, two backends chosen by configuration.

- `local` (the embedded default, offline): OpenCV YuNet detection and SFace embeddings; vectors
  are stored by the matcher and searched in its in-memory per-account index.
- `rekognition` (production on AWS): detection, indexing and search happen in one Rekognition
  collection per account; the matcher stores face metadata only.

The matcher service talks to an engine only through `FaceEngine`. Engines raise `EngineError`
subclasses; the service maps them to gRPC status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class Box:
    """Pixels of the original image, origin top-left."""

    x: int
    y: int
    width: int
    height: int

    def iou(self, other: Box) -> float:
        x1, y1 = max(self.x, other.x), max(self.y, other.y)
        x2 = min(self.x + self.width, other.x + other.width)
        y2 = min(self.y + self.height, other.y + other.height)
        inter = max(0, x2 - x1) * max(0, y2 - y1)
        union = self.width * self.height + other.width * other.height - inter
        return inter / union if union > 0 else 0.0


# eq=False: `raw` may hold a numpy array, which has no single truth value to compare by.
@dataclass(frozen=True, eq=False)
class DetectedFace:
    box: Box
    score: float  # detector confidence, 0-1
    # Engine-private data needed to describe the face later (YuNet's 15-value row for the local
    # engine's alignment); None when the engine needs nothing.
    raw: Any = None


@dataclass(frozen=True)
class Candidate:
    """One enrolled face similar to a query face."""

    talent_id: str
    face_id: str
    similarity: float  # engine scale: cosine (local) or 0-100 (rekognition)


@dataclass(frozen=True)
class EnrolledFace:
    face_id: str
    # The L2-normalised float32 vector for engines whose vectors the matcher stores (local);
    # None when the vector lives in the engine's own collection (rekognition).
    vector: np.ndarray | None


class EngineError(Exception):
    """An engine-level failure; the message is safe to show to the caller."""


class EngineUnavailable(EngineError):
    """The engine's backend could not be reached (after retries)."""


class UnusableFace(EngineError):
    """The input cannot be used (no indexable face, an id the backend refuses): the caller's
    to fix, so INVALID_ARGUMENT rather than INTERNAL."""


class VectorIndex(Protocol):
    """Nearest-neighbour search over one account's enrolled vectors (the local engine's
    collection). Exact by default; an approximate index can replace it for large collections."""

    size: int
    kind: str  # "exact" or the approximate index's name

    def search(self, queries: np.ndarray, k: int) -> list[list[Candidate]]:
        """For each L2-normalised query row, up to k candidates by cosine, best first."""
        ...


class FaceEngine(Protocol):
    name: str  # "local" | "rekognition"
    model: str  # e.g. "sface-2021dec"
    # True when `describe` returns comparable vectors (video tracking can use them).
    has_vectors: bool

    def warm_up(self) -> None:
        """Loads whatever the calling thread needs, so the first request does not pay for it."""
        ...

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Every face in a BGR uint8 image, largest first."""
        ...

    def describe(self, image: np.ndarray, faces: Sequence[DetectedFace]) -> list[Any]:
        """One signature per face for `search`: an L2-normalised float32 vector (local) or the
        JPEG bytes of the face crop (rekognition)."""
        ...

    def enroll(
        self, account_id: str, talent_id: str, image: np.ndarray, face: DetectedFace
    ) -> EnrolledFace:
        """Indexes one face of a talent; the image is not kept."""
        ...

    def search(self, account_id: str, signatures: Sequence[Any], k: int) -> list[list[Candidate]]:
        """For each signature, up to k candidates of the account's collection, best first."""
        ...

    def delete(self, account_id: str, face_ids: Sequence[str]) -> None:
        """Removes faces from the engine's own collection (no-op for the local engine)."""
        ...
