"""The approximate index (quantized codes + int8 re-rank): recall against the enrolled face and
brute force, accurate similarities, in-place updates that erase and equal a rebuild."""

import faiss
import numpy as np
import pytest

from services.matcher.ann import REBUILD_CHANGED_FRACTION, QuantizedIndex
from services.matcher.index import ExactIndex

NOTHING = np.zeros((0, 128), np.float32)


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def collection():
    rng = np.random.default_rng(11)
    vectors = unit(rng.standard_normal((5000, 128)))
    talents = [f"t{i // 2}" for i in range(5000)]
    faces = [f"f{i:05d}" for i in range(5000)]
    return rng, vectors, talents, faces


def probes(rng, vectors: np.ndarray, count: int, cosine: float) -> tuple[np.ndarray, np.ndarray]:
    """New photos of enrolled faces: each source vector turned to exactly `cosine` away."""
    sources = rng.integers(0, len(vectors), count)
    chosen = vectors[sources]
    noise = rng.standard_normal((count, 128)).astype(np.float32)
    noise = unit(noise - (noise * chosen).sum(axis=1, keepdims=True) * chosen)
    return unit(cosine * chosen + np.sqrt(1 - cosine**2) * noise), sources


@pytest.mark.parametrize("cosine", [0.55, 0.6])
def test_top1_is_the_enrolled_face_as_with_brute_force(collection, cosine):
    rng, vectors, talents, faces = collection
    exact, approximate = (
        ExactIndex(vectors, talents, faces),
        QuantizedIndex(vectors, talents, faces),
    )
    queries, sources = probes(rng, vectors, 300, cosine)
    expected, found = exact.search(queries, 5), approximate.search(queries, 5)
    agree = sum(e[0].face_id == f[0].face_id for e, f in zip(expected, found, strict=True))
    enrolled = sum(f[0].face_id == faces[s] for f, s in zip(found, sources, strict=True))
    assert agree / len(queries) >= 0.99 and enrolled / len(queries) >= 0.99
    assert approximate.kind == "quantized" and approximate.size == 5000


def test_similarities_are_cosines_within_int8_rounding(collection):
    rng, vectors, talents, faces = collection
    index = QuantizedIndex(vectors, talents, faces)
    queries, _ = probes(rng, vectors, 100, 0.6)
    errors = [
        abs(c.similarity - float(vectors[faces.index(c.face_id)] @ query))
        for query, row in zip(queries, index.search(queries, 5), strict=True)
        for c in row
    ]
    assert max(errors) < 0.005  # measured ~0.003 at most (docs/search.md)
    first = index.search(queries[:1], 5)[0]
    assert [c.similarity for c in first] == sorted((c.similarity for c in first), reverse=True)
    assert [c.talent_id for c in first] == [talents[faces.index(c.face_id)] for c in first]


def test_a_deleted_face_is_erased_from_memory_at_once(collection):
    _, vectors, talents, faces = collection
    index = QuantizedIndex(vectors[:1000], talents[:1000], faces[:1000])
    doomed = [3, 500, 999]
    stored = {i: index._int8[i].copy() for i in doomed}
    index.apply(NOTHING, [], [], [faces[i] for i in doomed] + ["never-enrolled"])

    assert index.size == 997 and index.contains([faces[3], faces[4]]) == [False, True]
    for i in doomed:
        assert not any(c.face_id == faces[i] for c in index.search(vectors[i : i + 1], 997)[0])
        # no copy of its int8 vector is left anywhere, and no id
        assert not np.any(np.all(index._int8 == stored[i], axis=1))
        assert faces[i].encode() not in index._faces.tolist()
    # the vacated slots past the end hold zeros: codes, vectors, scales, ids
    assert not np.any(index._int8[997:]) and not np.any(index._scale[997:])
    assert set(index._faces[997:1000].tolist()) == {b""}
    for slot in range(997, 1000):
        assert not np.any(unpacked_code(index, slot))
    # and the faces moved into the holes are the same faces, still found as themselves
    for i in (998, 997):
        assert index.search(vectors[i : i + 1], 1)[0][0].face_id == faces[i]


def unpacked_code(index: QuantizedIndex, slot: int) -> np.ndarray:
    """The 4-bit codes of one slot, read out of faiss's packed blocks."""
    codes, packer = index._codes, index._packer
    blocks = faiss.rev_swig_ptr(codes.codes.get(), codes.codes.size()).reshape(
        -1, packer.block_size
    )
    out = np.zeros(packer.code_size, np.uint8)
    packer.unpack_1_c(
        faiss.swig_ptr(blocks[slot // packer.nvec]), slot % packer.nvec, faiss.swig_ptr(out)
    )
    return out


def test_updates_in_place_equal_a_rebuild(collection):
    rng, vectors, talents, faces = collection
    # re-rank depth >= size: both indexes score every face, so results must be identical
    index = QuantizedIndex(vectors[:400], talents[:400], faces[:400], rerank=1000)
    newcomers = unit(rng.standard_normal((30, 128)))
    new_faces = [f"new-face-with-a-longer-id-{i}" for i in range(30)]
    new_talents = [f"newcomer-{i}" for i in range(30)]
    index.apply(newcomers, new_talents, new_faces, [])
    removed = [faces[i] for i in range(0, 400, 7)] + new_faces[:5]
    index.apply(NOTHING, [], [], removed)
    index.apply(vectors[400:420], talents[400:420], faces[400:420], [faces[1]])

    kept = [i for i in range(420) if faces[i] not in removed and i != 1]
    rebuilt = QuantizedIndex(
        np.concatenate([vectors[kept], newcomers[5:]]),
        [talents[i] for i in kept] + new_talents[5:],
        [faces[i] for i in kept] + new_faces[5:],
        rerank=1000,
    )
    assert index.face_ids == rebuilt.face_ids and index.size == rebuilt.size == len(kept) + 25
    assert index.contains([*new_faces[4:6], faces[2], faces[1]]) == [False, True, True, False]
    queries = np.concatenate([probes(rng, vectors[kept], 20, 0.6)[0], newcomers[5:10]])
    for mine, theirs in zip(index.search(queries, 5), rebuilt.search(queries, 5), strict=True):
        assert [(c.face_id, c.talent_id) for c in mine] == [
            (c.face_id, c.talent_id) for c in theirs
        ]
        assert [c.similarity for c in mine] == pytest.approx([c.similarity for c in theirs])
    assert index.search(newcomers[7:8], 1)[0][0].face_id == new_faces[7]


def test_rounds_of_random_adds_and_deletions_keep_every_face_itself(collection):
    rng, vectors, talents, faces = collection
    index = QuantizedIndex(vectors[:300], talents[:300], faces[:300])
    present = dict.fromkeys(range(300))
    unused = list(range(300, 1000))
    for _ in range(8):
        gone = [int(i) for i in rng.choice(list(present), 40, replace=False)]
        new = [unused.pop() for _ in range(25)]
        index.apply(
            vectors[new],
            [talents[i] for i in new],
            [faces[i] for i in new],
            [faces[i] for i in gone],
        )
        for i in gone:
            del present[i]
        present.update(dict.fromkeys(new))
    rows = sorted(present)
    assert index.face_ids == {faces[i] for i in rows} and index.size == len(rows)
    found = index.search(vectors[rows], 1)
    assert [(c[0].face_id, c[0].talent_id) for c in found] == [(faces[i], talents[i]) for i in rows]
    assert min(c[0].similarity for c in found) > 0.999
    assert not np.any(index._int8[index.size :]) and set(index._faces[index.size :]) <= {b""}


def test_a_rebuild_is_due_once_many_faces_changed(collection):
    _, vectors, talents, faces = collection
    index = QuantizedIndex(vectors[:100], talents[:100], faces[:100])
    index.apply(NOTHING, [], [], faces[: int(100 * REBUILD_CHANGED_FRACTION)])
    assert not index.needs_rebuild()
    index.apply(vectors[200:201], talents[200:201], faces[200:201], [])
    assert index.needs_rebuild()


def test_an_empty_or_emptied_index_finds_nothing():
    empty = QuantizedIndex(NOTHING, [], [])
    assert empty.search(np.ones((2, 128), np.float32), 3) == [[], []]
    assert empty.contains(["f"]) == [False]
    one = QuantizedIndex(unit(np.ones((1, 128))), ["t"], ["f"])
    one.apply(NOTHING, [], [], ["f"])
    assert one.search(unit(np.ones((1, 128))), 3) == [[]] and one.face_ids == set()
    one.apply(unit(np.ones((1, 128))), ["t2"], ["g"], [])
    assert [c.face_id for c in one.search(unit(np.ones((1, 128))), 3)[0]] == ["g"]
