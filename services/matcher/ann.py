"""Approximate nearest-neighbour search for large collections: compact codes, then a re-rank.

Below `MIXIP_MATCHER_ANN_MIN_FACES` faces a collection is searched exactly (`ExactIndex`, one
matrix product over float32); at or above it, with `QuantizedIndex`, in two steps:

1. **Candidates**: every face is kept as a 16-byte product-quantised code (faiss
   `IndexPQFastScan`: one 4-bit code per 4 dimensions, codebooks trained on the collection),
   and a query is scored against every code with SIMD look-up tables (the query itself is not
   quantised). The best `rerank` (256) codes are the candidates.
2. **Re-rank**: each candidate's similarity is computed from an int8 copy of its vector
   (128 bytes + a 4-byte scale), and the best k are returned with that similarity.

Why this and not a graph (HNSW, the previous index): on 10^6 faces a probe at cosine 0.55-0.6
to an enrolled face finds it as top-1 ~100% of the time at ~1.5 ms and ~210 B/face, where HNSW
found 0.67 at 2.9 ms and ~945 B/face (docs/search.md); it builds in seconds, not minutes, and
deletes by moving one slot, with no dead slots left behind.

Vectors are rotated by a fixed random orthogonal matrix first (queries too, so inner products
are unchanged): it spreads each face's energy evenly over the dimensions, which balances the
product quantiser's sub-spaces and bounds the int8 rounding error. The int8 scale is 1 / the
quantised vector's norm, so a similarity is the cosine between the query and the quantised
face: on the engine's scale, within ~0.003 of the float32 cosine (docs/search.md measures
it). The float32 vectors stay in the database, not in memory.

Updates are incremental (`CollectionIndexes` reads the changes recorded since the index's
collection version and calls `apply`):
- an added face is encoded and appended;
- a deleted face's slot is filled by the last face (its code, int8 vector and ids move) and
  the last slot is overwritten with zeros, so the deleted face's data is gone from memory at
  once and no slot is ever dead;
- the codebooks are those of the faces the index was built from: once adds and deletions
  reach `REBUILD_CHANGED_FRACTION` of that collection, a full rebuild is due (`needs_rebuild`).

Ids are kept as fixed-width byte arrays indexed by slot, plus the slots sorted by face id (a
binary search finds a face), not as Python strings and dicts (which would cost more than the
codes and vectors together).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence

import faiss
import numpy as np

from services.matcher.engines.base import Candidate

SUBSPACE_DIMENSIONS = 4  # one 4-bit code per 4 dimensions: 16 bytes for 128-d vectors
DEFAULT_RERANK = 256  # candidates re-ranked per query (docs/search.md: the depth sweep)
TRAINING_ROWS = 4096  # 256 points per centroid, 16 centroids per sub-space (faiss's own rule)
TRAINING_ITERATIONS = 10
# Past this share of the built collection added or deleted, the codebooks are stale.
REBUILD_CHANGED_FRACTION = 0.2
_SEED = 2026  # rotation and training sample: the same faces give the same index

# faiss on one OpenMP thread in this process: a query, or a few added faces, is too little
# work to share, and on a busy two-core machine OpenMP's threads wait for each other: adding
# one face to 10^5 measured 25 ms with two threads and 0.01 ms with one (a single-query
# search took the same either way). The other core serves other work: detection, embeddings,
# other accounts' searches.
faiss.omp_set_num_threads(1)


class QuantizedIndex:
    """`VectorIndex` over product-quantised codes with an int8 re-rank; safe to share between
    threads."""

    kind = "quantized"

    def __init__(
        self,
        vectors: np.ndarray,
        talent_ids: Sequence[str],
        face_ids: Sequence[str],
        *,
        rerank: int = DEFAULT_RERANK,
    ) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.dimension = vectors.shape[1] if vectors.ndim == 2 and vectors.shape[1] else 128
        if self.dimension % SUBSPACE_DIMENSIONS:
            raise ValueError(f"dimension {self.dimension} is not a multiple of 4")
        self.rerank = rerank
        rng = np.random.default_rng(_SEED)
        self._rotation = _rotation(self.dimension)
        self._codes = faiss.IndexPQFastScan(
            self.dimension,
            self.dimension // SUBSPACE_DIMENSIONS,
            4,
            faiss.METRIC_INNER_PRODUCT,
        )
        centroids = _train_codebooks(self._training_rows(vectors, rng), rng)
        faiss.copy_array_to_vector(centroids.ravel(), self._codes.pq.centroids)
        self._codes.is_trained = True
        self._packer = self._codes.get_CodePacker()  # type: ignore[attr-defined]  # not in faiss's stubs
        self._int8 = np.zeros((0, self.dimension), dtype=np.int8)
        self._scale = np.zeros(0, dtype=np.float32)
        self._faces = np.zeros(0, dtype="S1")
        self._talents = np.zeros(0, dtype="S1")
        self._order = np.zeros(0, dtype=np.int32)  # slots, sorted by face id
        self._lock = threading.Lock()
        self.size = self._changed = 0
        self._add(vectors, talent_ids, face_ids)
        self._built_size, self._changed = self.size, 0  # faces added or deleted since

    # -- VectorIndex --------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> list[list[Candidate]]:
        rotated = np.ascontiguousarray(np.asarray(queries, np.float32) @ self._rotation)
        with self._lock:
            if self.size == 0:
                return [[] for _ in range(len(rotated))]
            k = min(k, self.size)
            _, candidates = self._codes.search(rotated, min(self.size, max(k, self.rerank)))
            results = []
            for query, slots in zip(rotated, candidates, strict=True):
                slots = slots[slots >= 0]
                scores = (self._int8[slots].astype(np.float32) @ query) * self._scale[slots]
                best = (
                    np.argpartition(-scores, k - 1)[:k] if len(slots) > k else np.arange(len(slots))
                )
                best = best[np.argsort(-scores[best])]
                results.append(
                    [
                        Candidate(
                            self._talents[slots[i]].decode(),
                            self._faces[slots[i]].decode(),
                            float(scores[i]),
                        )
                        for i in best
                    ]
                )
            return results

    # -- incremental updates ------------------------------------------------------------------

    @property
    def face_ids(self) -> set[str]:
        with self._lock:
            return {face.decode() for face in self._faces[: self.size]}

    def contains(self, face_ids: Sequence[str]) -> list[bool]:
        """Whether each face is in the index (a binary search each, no set of every id)."""
        with self._lock:
            found: list[bool] = self._find(face_ids)[0].tolist()
            return found

    def apply(
        self,
        vectors: np.ndarray,
        talent_ids: Sequence[str],
        face_ids: Sequence[str],
        removed_face_ids: Sequence[str],
    ) -> None:
        """Adds faces and deletes others in place (see the module's docstring)."""
        with self._lock:
            if len(removed_face_ids):
                found, slots, positions = self._find(removed_face_ids)
                slots, first = np.unique(slots[found], return_index=True)
                self._remove(slots, positions[found][first])
            if len(face_ids):
                self._add(np.ascontiguousarray(vectors, dtype=np.float32), talent_ids, face_ids)

    def needs_rebuild(self) -> bool:
        with self._lock:
            return self._changed > REBUILD_CHANGED_FRACTION * max(1, self._built_size)

    @property
    def nbytes(self) -> int:
        """Everything the index holds in memory: codes, codebooks, rotation, int8 vectors and
        scales, ids and the sorted slots (arrays' full capacity, not only the used part)."""
        with self._lock:
            return (
                self._codes.codes.size()
                + self._codes.pq.centroids.size() * 4
                + self._rotation.nbytes
                + self._int8.nbytes
                + self._scale.nbytes
                + self._faces.nbytes
                + self._talents.nbytes
                + self._order.nbytes
            )

    # -- internals (under the lock) -----------------------------------------------------------

    def _training_rows(self, vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A sample of the rotated faces; topped up with random unit vectors in a small
        collection, so every codebook can be trained (they then only pick candidates among
        fewer faces than the re-rank reads anyway)."""
        picked = vectors[rng.choice(len(vectors), min(len(vectors), TRAINING_ROWS), replace=False)]
        missing = TRAINING_ROWS - len(picked)
        if missing:
            filler = rng.standard_normal((missing, self.dimension)).astype(np.float32)
            filler /= np.linalg.norm(filler, axis=1, keepdims=True)
            picked = np.concatenate([picked, filler])
        return np.ascontiguousarray(picked @ self._rotation)

    def _add(self, vectors: np.ndarray, talent_ids: Sequence[str], face_ids: Sequence[str]) -> None:
        count = len(face_ids)
        if not count:
            return
        first, last = self.size, self.size + count
        faces = np.array([face.encode() for face in face_ids], dtype=bytes)
        talents = np.array([talent.encode() for talent in talent_ids], dtype=bytes)
        self._grow(last, faces.dtype, talents.dtype)
        rotated = np.ascontiguousarray(vectors @ self._rotation)
        peak = np.abs(rotated).max(axis=1, keepdims=True)
        quantised = np.round(rotated * (127 / np.where(peak > 0, peak, 1))).astype(np.int8)
        norms = np.linalg.norm(quantised.astype(np.float32), axis=1)
        self._int8[first:last] = quantised
        self._scale[first:last] = np.where(norms > 0, 1 / np.where(norms > 0, norms, 1), 0)
        self._faces[first:last] = faces
        self._talents[first:last] = talents
        self._codes.add(rotated)
        by_face = np.argsort(faces, kind="stable")
        positions = np.searchsorted(self._faces[:first], faces[by_face], sorter=self._order)
        self._order = np.insert(self._order, positions, (first + by_face).astype(np.int32))
        self.size = last
        self._changed += count

    def _grow(self, needed: int, face_dtype: np.dtype, talent_dtype: np.dtype) -> None:
        """Room for `needed` faces (capacity grows by an eighth at least, so single adds are
        amortised) and ids as wide as the widest seen."""
        if face_dtype.itemsize > self._faces.dtype.itemsize:
            self._faces = self._faces.astype(face_dtype)
        if talent_dtype.itemsize > self._talents.dtype.itemsize:
            self._talents = self._talents.astype(talent_dtype)
        capacity = len(self._scale)
        if needed <= capacity:
            return
        capacity = needed if capacity == 0 else max(needed, capacity + capacity // 8)
        for name in ("_int8", "_scale", "_faces", "_talents"):
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            new[: self.size] = old[: self.size]
            setattr(self, name, new)

    def _find(self, face_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found mask, slots, positions in the sorted slots) of these faces, by binary
        search."""
        keys = np.array([face.encode() for face in face_ids], dtype=bytes)
        if self.size == 0 or not len(keys):
            nowhere = np.zeros(len(keys), dtype=np.int64)
            return np.zeros(len(keys), dtype=bool), nowhere, nowhere
        faces = self._faces[: self.size]
        positions = np.minimum(np.searchsorted(faces, keys, sorter=self._order), self.size - 1)
        slots = self._order[positions].astype(np.int64)
        return faces[slots] == keys, slots, positions

    def _remove(self, slots: np.ndarray, positions: np.ndarray) -> None:
        """Deletes these slots (unique; `positions`: theirs in the sorted slots): the last
        faces move into the holes, and every slot past the new end is zeroed (codes, int8
        vectors, scales, ids). O(deleted) moves, plus one copy of the sorted slots."""
        if not len(slots):
            return
        size, kept = self.size, self.size - len(slots)
        dead_tail = np.zeros(size - kept, dtype=bool)
        dead_tail[slots[slots >= kept] - kept] = True
        holes = slots[slots < kept]
        movers = kept + np.flatnonzero(~dead_tail)
        moving = np.searchsorted(self._faces[:size], self._faces[movers], sorter=self._order)
        self._order[moving] = holes  # face ids are unique: each mover's own position
        self._order = np.delete(self._order, positions)
        for array in (self._int8, self._scale, self._faces, self._talents):
            array[holes] = array[movers]
            array[kept:size] = np.zeros(1, dtype=array.dtype)
        codes = faiss.rev_swig_ptr(self._codes.codes.get(), self._codes.codes.size())
        blocks = codes.reshape(-1, self._packer.block_size)
        per_block = self._packer.nvec
        code = np.zeros(self._packer.code_size, dtype=np.uint8)
        for hole, mover in zip(holes, movers, strict=True):
            self._packer.unpack_1_c(
                faiss.swig_ptr(blocks[mover // per_block]),
                int(mover % per_block),
                faiss.swig_ptr(code),
            )
            self._packer.pack_1_c(
                faiss.swig_ptr(code),
                int(hole % per_block),
                faiss.swig_ptr(blocks[hole // per_block]),
            )
        code[:] = 0
        for slot in range(kept, size):
            # Zeroed, not only past the end: faiss ORs the next added codes into these bytes.
            self._packer.pack_1_c(
                faiss.swig_ptr(code), slot % per_block, faiss.swig_ptr(blocks[slot // per_block])
            )
        self._codes.ntotal = kept
        self.size = kept
        self._changed += len(slots)


@functools.cache
def _rotation(dimension: int) -> np.ndarray:
    """The fixed random orthogonal matrix of this dimension (made once per process)."""
    gaussian = np.random.default_rng(_SEED).standard_normal((dimension, dimension))
    rotation = np.linalg.qr(gaussian)[0].astype(np.float32)
    rotation.flags.writeable = False
    return rotation


def _train_codebooks(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """k-means of 16 centroids in every 4-dimensional sub-space, all sub-spaces at once:
    (sub-spaces, 16, 4) float32. In numpy rather than faiss's trainer, which takes seconds on
    a busy two-core machine (OpenMP threads spinning against each other) for milliseconds of
    work, and is not bit-for-bit reproducible across thread counts."""
    points = rows.reshape(len(rows), -1, SUBSPACE_DIMENSIONS).transpose(1, 0, 2).copy()
    subspaces = len(points)
    centroids = points[:, rng.choice(len(rows), 16, replace=False)].copy()
    cells = np.arange(subspaces)[:, None] * 16
    for _ in range(TRAINING_ITERATIONS):
        distances = sum(
            (points[:, :, None, axis] - centroids[:, None, :, axis]) ** 2
            for axis in range(SUBSPACE_DIMENSIONS)
        )
        nearest = (cells + distances.argmin(axis=2)).ravel()
        counts = np.bincount(nearest, minlength=subspaces * 16).reshape(subspaces, 16)
        sums = np.stack(
            [
                np.bincount(nearest, points[:, :, axis].ravel(), minlength=subspaces * 16)
                for axis in range(SUBSPACE_DIMENSIONS)
            ],
            axis=-1,
        ).reshape(subspaces, 16, SUBSPACE_DIMENSIONS)
        filled = counts > 0  # an empty cell keeps its centroid
        centroids[filled] = (sums[filled] / counts[filled][:, None]).astype(np.float32)
    return centroids.astype(np.float32)
