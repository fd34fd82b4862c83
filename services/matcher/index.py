"""Per-account in-memory search over enrolled vectors, consistent across replicas.

Each account's vectors are loaded into one contiguous float32 matrix and searched with a
vectorised top-k. An index is tagged with the account's collection version; every lookup
reads that version (one primary-key query), so an enrollment or a deletion on any replica is
seen by every replica on its next match, and a restarted replica rebuilds on first use.

`index_factory` chooses the index by collection size (`sized_index_factory`): exact below
`MIXIP_MATCHER_ANN_MIN_FACES`, an approximate index (services/matcher/ann.py) at or above.
An approximate index is updated in place rather than rebuilt: every version bump records, in
the same transaction, which faces it added and removed (`matcher_collection_changes`); versions
are handed out one at a time under the collection row's lock, so a snapshot that sees version V
sees every change up to V. On a version change the replica reads, in one snapshot, the version
and the changes since its own, fetches the vectors of the faces added (and still there), and
applies the difference (deleted faces are erased from memory). The index then holds exactly the
snapshot's faces, as a rebuild would, whichever replica made the changes; if any version's
changes are missing (pruned, or the index is older than the log) it is rebuilt instead.

Faces are stored sealed under their talent's data key (services/matcher/store.py): a build or
an update opens the rows it reads once, with the account's keys read in the same snapshot, and
matches then search plain memory. A face whose key is gone (its talent erased) is skipped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from mixip.runtime.db import Database
from mixip.runtime.vault import TalentKey, Vault
from services.matcher.engines.base import Candidate, VectorIndex
from services.matcher.store import CollectionChangeRow, CollectionRow, FaceRow, open_face

logger = logging.getLogger("mixip.matcher.index")
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
# Above this many new faces at once, an approximate index is rebuilt rather than updated.
_MAX_INCREMENTAL_ADDS = 10_000
_IN_CHUNK = 500  # ids per IN (...) when fetching new faces' vectors


class UpdatableIndex(VectorIndex, Protocol):
    """An index that can follow the database in place (the approximate one)."""

    @property
    def face_ids(self) -> set[str]: ...

    def contains(self, face_ids: Sequence[str]) -> list[bool]: ...

    def apply(
        self,
        vectors: np.ndarray,
        talent_ids: Sequence[str],
        face_ids: Sequence[str],
        removed_face_ids: Sequence[str],
    ) -> None: ...

    def needs_rebuild(self) -> bool: ...


class SizedIndexFactory:
    """Exact search below `ann_min_faces` faces, the quantized index at or above (0: always
    exact)."""

    def __init__(self, ann_min_faces: int) -> None:
        self.ann_min_faces = ann_min_faces

    def is_approximate(self, faces: int) -> bool:
        """True when a collection this large gets the approximate index (slow to build)."""
        return bool(self.ann_min_faces) and faces >= self.ann_min_faces

    def __call__(
        self, vectors: np.ndarray, talent_ids: Sequence[str], face_ids: Sequence[str]
    ) -> VectorIndex:
        if self.is_approximate(len(face_ids)):
            from services.matcher.ann import QuantizedIndex  # faiss loads only where it is used

            return QuantizedIndex(vectors, talent_ids, face_ids)
        return ExactIndex(vectors, talent_ids, face_ids)


def sized_index_factory(ann_min_faces: int) -> SizedIndexFactory:
    return SizedIndexFactory(ann_min_faces)


@dataclass(frozen=True)
class _Cached:
    version: int
    index: VectorIndex


class CollectionIndexes:
    def __init__(self, db: Database, vault: Vault, index_factory: IndexFactory = ExactIndex):
        self.db = db
        self.vault = vault
        self.index_factory = index_factory
        self._cache: dict[str, _Cached] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._building: dict[str, threading.Thread] = {}

    def for_account(self, account_id: str) -> VectorIndex:
        with self.db.read() as session:
            version = _version(session, account_id)
        cached = self._cache.get(account_id)
        if cached is not None and cached.version == version:
            return cached.index
        # One refresh at a time per account (others wait and reuse it); other accounts go on.
        with self._lock_of(account_id):
            cached = self._cache.get(account_id)
            if cached is None or cached.version != version:
                cached = self._refresh(account_id, cached)
                self._cache[account_id] = cached
        return cached.index

    def refresh_stale(self) -> int:
        """Brings every cached index to its account's current version (the matcher runs this
        periodically), so faces deleted on another replica leave this replica's memory within
        one sweep, not only at that account's next match here. Returns how many changed."""
        accounts = list(self._cache)
        if not accounts:
            return 0
        with self.db.read() as session:
            versions = dict(
                session.execute(
                    select(CollectionRow.account_id, CollectionRow.version).where(
                        CollectionRow.account_id.in_(accounts)
                    )
                ).all()
            )
        stale = [a for a in accounts if self._cache[a].version != versions.get(a, 0)]
        for account_id in stale:
            self.for_account(account_id)
        return len(stale)

    def _lock_of(self, account_id: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(account_id, threading.Lock())

    def _refresh(self, account_id: str, cached: _Cached | None) -> _Cached:
        index = cached.index if cached is not None else None
        if cached is not None and index is not None and hasattr(index, "apply"):
            updatable = cast(UpdatableIndex, index)
            if not updatable.needs_rebuild():
                updated = self._update(account_id, cached)
                if updated is not None and not updatable.needs_rebuild():
                    return updated
        # First use, an exact index (cheap to build), or an approximate one with too many
        # deleted slots: rebuilt from one snapshot, exact or approximate by its size now.
        return self._build(account_id)

    def _build(self, account_id: str) -> _Cached:
        """Version and vectors from one snapshot, so the tag never claims more than it holds."""
        with self.db.read(snapshot=True) as session:
            # The vault's state row first (see `_update`), then version and rows.
            keys = self.vault.account_keys(session, account_id)
            version = _version(session, account_id)
            rows = session.execute(
                select(FaceRow.face_id, FaceRow.talent_ref, FaceRow.sealed)
                .where(FaceRow.account_id == account_id, FaceRow.sealed.is_not(None))
                .order_by(FaceRow.face_id)
            ).all()
            vectors, talents, faces = _opened(rows, keys)
        is_approximate = getattr(self.index_factory, "is_approximate", None)
        if is_approximate is not None and is_approximate(len(faces)):
            # A million faces take seconds to encode: longer than a match may wait. Matches
            # are served exactly meanwhile; the index then takes over and catches up with the
            # changes made during its build from the change log.
            self._build_in_background(account_id, version, vectors, talents, faces)
            return _Cached(version, ExactIndex(vectors, talents, faces))
        return _Cached(version, self.index_factory(vectors, talents, faces))

    def _build_in_background(self, account_id: str, version: int, *columns: Any) -> None:
        with self._locks_lock:
            if account_id in self._building:
                return
            thread = threading.Thread(
                target=self._background_build,
                args=(account_id, version, *columns),
                name="matcher-index-build",
                daemon=True,
            )
            self._building[account_id] = thread
        thread.start()

    def _background_build(self, account_id: str, version: int, *columns: Any) -> None:
        try:
            index = self.index_factory(*columns)
            with self._lock_of(account_id):
                cached = self._cache.get(account_id)
                if cached is not None and not hasattr(cached.index, "apply"):
                    # Tagged with its snapshot's version: the next match applies what changed.
                    self._cache[account_id] = _Cached(version, index)
        except Exception:
            logger.error("index build failed", exc_info=True)
        finally:
            with self._locks_lock:
                self._building.pop(account_id, None)

    def wait_for_builds(self, timeout: float | None = None) -> None:
        """Waits for background builds started so far (tests, benchmarks, shutdown)."""
        with self._locks_lock:
            threads = list(self._building.values())
        for thread in threads:
            thread.join(timeout)

    def _update(self, account_id: str, cached: _Cached) -> _Cached | None:
        """The index brought to the database's current snapshot in place, from the changes
        recorded since its version; None when they are incomplete (pruned, or older than the
        change log) or too many, and a rebuild is due."""
        index = cast(UpdatableIndex, cached.index)
        with self.db.read(snapshot=True) as session:
            # The vault's state row is locked by the snapshot's first statement: a rotation
            # that commits after the snapshot began would make locking it a serialization
            # failure (UNAVAILABLE, retried); first, only one running at this instant can.
            self.vault.current(session)
            version = _version(session, account_id)
            changes = session.execute(
                select(
                    CollectionChangeRow.version,
                    CollectionChangeRow.face_id,
                    CollectionChangeRow.added,
                )
                .where(
                    CollectionChangeRow.account_id == account_id,
                    CollectionChangeRow.version > cached.version,
                    CollectionChangeRow.version <= version,
                )
                .order_by(CollectionChangeRow.version)
            ).all()
            if len({c.version for c in changes}) != version - cached.version:
                return None  # a version without its changes: rebuild from the snapshot
            latest = {c.face_id: c.added for c in changes}  # a face's last change wins
            present = dict(zip(latest, index.contains(list(latest)), strict=True))
            added = sorted(f for f, is_added in latest.items() if is_added and not present[f])
            if len(added) > _MAX_INCREMENTAL_ADDS:
                return None
            rows: list[Any] = []
            for start in range(0, len(added), _IN_CHUNK):
                rows += session.execute(
                    select(FaceRow.face_id, FaceRow.talent_ref, FaceRow.sealed)
                    .where(FaceRow.face_id.in_(added[start : start + _IN_CHUNK]))
                    .where(FaceRow.sealed.is_not(None))
                    .order_by(FaceRow.face_id)
                ).all()
            vectors, talents, faces = _opened(rows, self._keys(session, rows))
        removed = sorted(f for f, is_added in latest.items() if not is_added and present[f])
        index.apply(vectors, talents, faces, removed)
        return _Cached(version, index)

    def _keys(self, session: Session, rows: Sequence[Any]) -> dict[bytes, TalentKey]:
        return self.vault.keys_by_ref(session, {r.talent_ref for r in rows})


def _version(session: Session, account_id: str) -> int:
    return (
        session.scalar(select(CollectionRow.version).where(CollectionRow.account_id == account_id))
        or 0
    )


def _opened(
    rows: Sequence[Any], keys: dict[bytes, TalentKey]
) -> tuple[np.ndarray, list[str], list[str]]:
    """(contiguous float32 matrix, talent ids, face ids) of sealed (face_id, talent_ref, sealed)
    rows, each opened with its talent's key; faces whose key is gone, or that hold no vector
    (the engine keeps it), are left out."""
    vectors, talents, faces = [], [], []
    for row in rows:
        key = keys.get(row.talent_ref)
        if key is None:  # the talent was erased: whatever is left of the row is unreadable
            continue
        talent_id, vector = open_face(key, row.face_id, row.sealed)
        if vector:
            vectors.append(vector)
            talents.append(talent_id)
            faces.append(row.face_id)
    if not faces:
        return np.zeros((0, 128), dtype=np.float32), [], []
    matrix = np.frombuffer(b"".join(vectors), dtype=VECTOR_DTYPE).reshape(len(faces), -1)
    return matrix, talents, faces
