"""Approximate nearest-neighbour search for large collections: a faiss HNSW graph.

Below `MIXIP_MATCHER_ANN_MIN_FACES` faces a collection is searched exactly (`ExactIndex`, one
matrix product); at or above it, with `HnswIndex`: inner product on L2-normalised float32
vectors (= cosine, the engine's scale), so similarities and labels are unchanged.

Why faiss (faiss-cpu) rather than usearch or hnswlib: measured on this project's machine (see
docs/performance.md) its HNSW built 2x faster than usearch's and searched 2-3x faster at
equal recall; it is maintained by Meta with prebuilt wheels for every platform we run; and it
offers ID selectors, which keep deletions exact without rebuilding. hnswlib has had no release
since 2023.

Updates are incremental, so an enrollment or a deletion in a million-face collection costs
milliseconds instead of a rebuild of minutes (`CollectionIndexes` reads the changes recorded
since the index's collection version and calls `apply`):
- an added face is inserted into the graph;
- a deleted face's vector is overwritten with zeros in the index's storage (the biometric data
  is gone from memory at once), its ids are forgotten, and an ID selector keeps its slot out of
  every result; the graph keeps the slot as a waypoint until the next full rebuild, which
  `CollectionIndexes` does once deletions pass `REBUILD_DELETED_FRACTION` of the slots.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import faiss
import numpy as np

from services.matcher.engines.base import Candidate

# Graph degree, and search breadth at insertion and query time (bench/REPORT.md): recall@1
# 0.995 at ~2 ms on 10^5 random unit vectors, a 10^6 build in minutes on two cores; on 10^6
# random vectors recall@1 needs efSearch ~1024 for 0.985 (the report's efSearch sweep).
DEFAULT_M = 32
DEFAULT_EF_CONSTRUCTION = 80
DEFAULT_EF_SEARCH = 256
# Past this share of deleted slots, a full rebuild is due (search gets slower, memory is idle).
REBUILD_DELETED_FRACTION = 0.2


class HnswIndex:
    """`VectorIndex` over a faiss `IndexHNSWFlat`; safe to share between threads."""

    kind = "hnsw"

    def __init__(
        self,
        vectors: np.ndarray,
        talent_ids: Sequence[str],
        face_ids: Sequence[str],
        *,
        m: int = DEFAULT_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef_search: int = DEFAULT_EF_SEARCH,
    ) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.dimension = vectors.shape[1] if vectors.ndim == 2 and vectors.shape[1] else 128
        self.ef_search = ef_search
        self._index = faiss.IndexHNSWFlat(self.dimension, m, faiss.METRIC_INNER_PRODUCT)
        self._index.hnsw.efConstruction = ef_construction
        # Slot i of the graph is the i-th vector ever added; deleted slots keep None ids.
        self._talents: list[str | None] = []
        self._faces: list[str | None] = []
        self._slot_of: dict[str, int] = {}
        self._deleted: set[int] = set()
        self._params = self._search_params()
        self._lock = threading.Lock()
        self.size = 0
        self._add(vectors, talent_ids, face_ids)

    # -- VectorIndex --------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> list[list[Candidate]]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        with self._lock:
            if self.size == 0:
                return [[] for _ in range(len(queries))]
            k = min(k, self.size)
            similarities, slots = self._index.search(queries, k, params=self._params)
            return [
                [
                    Candidate(self._talents[slot], self._faces[slot], float(similarity))
                    for similarity, slot in zip(row_similarities, row_slots, strict=True)
                    if slot >= 0 and self._faces[slot] is not None
                ]
                for row_similarities, row_slots in zip(similarities, slots, strict=True)
            ]

    # -- incremental updates ------------------------------------------------------------------

    @property
    def face_ids(self) -> set[str]:
        with self._lock:
            return set(self._slot_of)

    def apply(
        self,
        vectors: np.ndarray,
        talent_ids: Sequence[str],
        face_ids: Sequence[str],
        removed_face_ids: Sequence[str],
    ) -> None:
        """Adds faces and deletes others in place (see the module's docstring)."""
        with self._lock:
            if removed_face_ids:
                storage = faiss.downcast_index(self._index.storage)
                stored = faiss.rev_swig_ptr(storage.get_xb(), self._index.ntotal * self.dimension)
                for face_id in removed_face_ids:
                    slot = self._slot_of.pop(face_id, None)
                    if slot is None:
                        continue
                    stored[slot * self.dimension : (slot + 1) * self.dimension] = 0.0
                    self._talents[slot] = self._faces[slot] = None
                    self._deleted.add(slot)
                self.size = len(self._slot_of)
                self._params = self._search_params()
            if len(face_ids):
                self._add(np.ascontiguousarray(vectors, dtype=np.float32), talent_ids, face_ids)

    def set_ef_search(self, ef_search: int) -> None:
        """Search breadth: higher finds the true nearest neighbour more often, and costs more."""
        with self._lock:
            self.ef_search = ef_search
            self._params = self._search_params()

    def needs_rebuild(self) -> bool:
        with self._lock:
            return len(self._deleted) > REBUILD_DELETED_FRACTION * max(1, self._index.ntotal)

    def _add(self, vectors: np.ndarray, talent_ids: Sequence[str], face_ids: Sequence[str]) -> None:
        if not len(face_ids):
            return
        first = self._index.ntotal
        self._index.add(vectors)
        self._talents.extend(talent_ids)
        self._faces.extend(face_ids)
        for offset, face_id in enumerate(face_ids):
            self._slot_of[face_id] = first + offset
        self.size = len(self._slot_of)

    def _search_params(self) -> faiss.SearchParametersHNSW:
        params = faiss.SearchParametersHNSW()
        params.efSearch = self.ef_search
        if self._deleted:
            # Deleted slots never come out of a search; the selectors must outlive the params.
            self._excluded = faiss.IDSelectorBatch(np.fromiter(self._deleted, dtype=np.int64))
            self._selector = faiss.IDSelectorNot(self._excluded)
            params.sel = self._selector
        return params
