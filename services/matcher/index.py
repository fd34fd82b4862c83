"""Per-account in-memory search over enrolled vectors, consistent across replicas.

Each account's vectors are loaded into one contiguous float32 matrix and searched with a
vectorised top-k. An index is tagged with the account's collection version; every lookup
reads that version (one primary-key query), so an enrollment or a deletion on any replica is
seen by every replica on its next match, and a restarted replica rebuilds on first use.
`index_factory` is the seam for an approximate index on large collections.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select

from mixip.runtime.db import Database
from services.matcher.engines.base import Candidate, VectorIndex
from services.matcher.store import CollectionRow, FaceRow

VECTOR_DTYPE = np.dtype("<f4")


class ExactIndex:
    """Brute-force cosine search: one matrix product and a partial sort."""

    kind = "exact"

    def __init__(self, vectors: np.ndarray, talent_ids: Sequence[str], face_ids: Sequence[str]):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.talent_ids = list(talent_ids)
        self.face_ids = list(face_ids)
        self.size = len(self.face_ids)

    def search(self, queries: np.ndarray, k: int) -> list[list[Candidate]]:
        if self.size == 0:
            return [[] for _ in range(len(queries))]
        k = min(k, self.size)
        similarities = np.asarray(queries, dtype=np.float32) @ self.vectors.T
        top = np.argpartition(-similarities, k - 1, axis=1)[:, :k]
        results = []
        for row, columns in zip(similarities, top, strict=True):
            ordered = columns[np.argsort(-row[columns])]
            results.append(
                [Candidate(self.talent_ids[i], self.face_ids[i], float(row[i])) for i in ordered]
            )
        return results


IndexFactory = Callable[[np.ndarray, Sequence[str], Sequence[str]], VectorIndex]


@dataclass(frozen=True)
class _Cached:
    version: int
    index: VectorIndex


class CollectionIndexes:
    def __init__(self, db: Database, index_factory: IndexFactory = ExactIndex) -> None:
        self.db = db
        self.index_factory = index_factory
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def for_account(self, account_id: str) -> VectorIndex:
        with self.db.read() as session:
            version = (
                session.scalar(
                    select(CollectionRow.version).where(CollectionRow.account_id == account_id)
                )
                or 0
            )
        cached = self._cache.get(account_id)
        if cached is not None and cached.version == version:
            return cached.index
        with self._lock:  # one rebuild at a time; others wait and reuse it
            cached = self._cache.get(account_id)
            if cached is None or cached.version != version:
                cached = self._build(account_id)
                self._cache[account_id] = cached
        return cached.index

    def _build(self, account_id: str) -> _Cached:
        """Version and vectors from one snapshot, so the tag never claims more than it holds."""
        with self.db.read(snapshot=True) as session:
            version = (
                session.scalar(
                    select(CollectionRow.version).where(CollectionRow.account_id == account_id)
                )
                or 0
            )
            rows = session.execute(
                select(FaceRow.face_id, FaceRow.talent_id, FaceRow.vector)
                .where(FaceRow.account_id == account_id, FaceRow.vector.is_not(None))
                .order_by(FaceRow.face_id)
            ).all()
        vectors = (
            np.frombuffer(b"".join(r.vector for r in rows), dtype=VECTOR_DTYPE).reshape(
                len(rows), -1
            )
            if rows
            else np.zeros((0, 128), dtype=np.float32)
        )
        index = self.index_factory(vectors, [r.talent_id for r in rows], [r.face_id for r in rows])
        return _Cached(version, index)
