"""The approximate (faiss HNSW) index: recall against brute force, in-place updates."""

import numpy as np
import pytest

from services.matcher.ann import REBUILD_DELETED_FRACTION, HnswIndex
from services.matcher.index import ExactIndex


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def collection():
    rng = np.random.default_rng(11)
    vectors = unit(rng.standard_normal((5000, 128)))
    talents = [f"t{i // 2}" for i in range(5000)]
    faces = [f"f{i:05d}" for i in range(5000)]
    return rng, vectors, talents, faces


def probes(rng, vectors: np.ndarray, count: int) -> np.ndarray:
    """New photos of enrolled faces: each source vector mixed with noise to cosine 0.6."""
    sources = vectors[rng.integers(0, len(vectors), count)]
    return unit(0.6 * sources + 0.8 * unit(rng.standard_normal((count, 128))))


def test_top1_agrees_with_brute_force_on_matching_probes(collection):
    rng, vectors, talents, faces = collection
    exact, approximate = ExactIndex(vectors, talents, faces), HnswIndex(vectors, talents, faces)
    queries = probes(rng, vectors, 200)
    expected = exact.search(queries, 5)
    found = approximate.search(queries, 5)
    agree = sum(e[0].face_id == f[0].face_id for e, f in zip(expected, found, strict=True))
    assert agree / len(queries) >= 0.99
    first = found[0]
    assert [c.similarity for c in first] == sorted((c.similarity for c in first), reverse=True)
    # cosine, on the engine's scale: the same number brute force computes
    assert first[0].similarity == pytest.approx(expected[0][0].similarity, abs=1e-5)
    assert approximate.kind == "hnsw" and approximate.size == 5000


def test_updates_in_place_add_and_delete(collection):
    rng, vectors, talents, faces = collection
    index = HnswIndex(vectors[:1000], talents[:1000], faces[:1000])
    newcomer = unit(rng.standard_normal((1, 128)))
    index.apply(newcomer, ["t-new"], ["f-new"], [])
    assert index.search(newcomer, 1)[0][0].face_id == "f-new"
    assert index.size == 1001

    index.apply(np.zeros((0, 128), np.float32), [], [], ["f-new", faces[3]])
    assert index.size == 999
    assert "f-new" not in index.face_ids and faces[3] not in index.face_ids
    for query in (newcomer, vectors[3:4]):
        assert all(c.face_id not in {"f-new", faces[3]} for c in index.search(query, 10)[0])
    # the deleted vectors are gone from memory, not only hidden
    assert not np.any(index._index.reconstruct(1000)) and not np.any(index._index.reconstruct(3))


def test_a_rebuild_is_due_once_many_faces_are_deleted(collection):
    _, vectors, talents, faces = collection
    index = HnswIndex(vectors[:100], talents[:100], faces[:100])
    doomed = faces[: int(100 * REBUILD_DELETED_FRACTION)]
    index.apply(np.zeros((0, 128), np.float32), [], [], doomed)
    assert not index.needs_rebuild()
    index.apply(np.zeros((0, 128), np.float32), [], [], [faces[99]])
    assert index.needs_rebuild()


def test_an_empty_or_emptied_index_finds_nothing():
    empty = HnswIndex(np.zeros((0, 128), np.float32), [], [])
    assert empty.search(np.ones((2, 128), np.float32), 3) == [[], []]
    one = HnswIndex(unit(np.ones((1, 128))), ["t"], ["f"])
    one.apply(np.zeros((0, 128), np.float32), [], [], ["f"])
    assert one.search(unit(np.ones((1, 128))), 3) == [[]]
