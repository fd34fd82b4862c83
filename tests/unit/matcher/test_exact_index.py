"""Brute-force search returns the true top-k, best first."""

import numpy as np

from services.matcher.index import ExactIndex


def test_top_k_matches_a_full_sort():
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(500, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = ExactIndex(vectors, [f"t{i % 50}" for i in range(500)], [f"f{i}" for i in range(500)])
    queries = vectors[[3, 42]] + 0.01
    results = index.search(queries, 5)
    for query, result in zip(queries, results, strict=True):
        expected = np.argsort(-(vectors @ query))[:5]
        assert [c.face_id for c in result] == [f"f{i}" for i in expected]
        assert [c.similarity for c in result] == sorted(
            (c.similarity for c in result), reverse=True
        )


def test_an_empty_index_finds_nothing():
    empty = ExactIndex(np.zeros((0, 128), np.float32), [], [])
    assert empty.search(np.ones((2, 128), np.float32), 3) == [[], []]
