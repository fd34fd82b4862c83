"""RekognitionEngine against a real botocore client whose calls are answered by `Stubber`.

moto does not implement Rekognition collections; `Stubber` validates every request and every
canned response against the real service model, so shapes and parameter names are checked.
The synthetic images are never decoded by the (stubbed) service.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import cv2
import numpy as np
import pytest
from botocore.exceptions import EndpointConnectionError
from botocore.stub import ANY, Stubber

from services.matcher.engines.base import (
    Box,
    DetectedFace,
    EngineError,
    EngineUnavailable,
)
from services.matcher.engines.rekognition import RekognitionEngine

ACCOUNT = "acct-4711"
TALENT = "talent-0001"
FACE_A = "11111111-1111-4111-8111-111111111111"
FACE_B = "22222222-2222-4222-8222-222222222222"
IMAGE_ID = "33333333-3333-4333-8333-333333333333"
COLLECTION = "mixip-" + hashlib.sha256(ACCOUNT.encode()).hexdigest()[:40]
NO_FACE_MESSAGE = "There are no faces in the image. Should be at least 1."


@pytest.fixture
def client(aws_credentials: None) -> Any:
    return boto3.client(
        "rekognition",
        region_name="eu-west-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def stubber(client: Any) -> Iterator[Stubber]:
    with Stubber(client) as stubbed:
        yield stubbed


@pytest.fixture
def sleeps() -> list[float]:
    """The delays the engine asked to sleep for; nothing actually sleeps."""
    return []


@pytest.fixture
def engine(client: Any, sleeps: list[float]) -> RekognitionEngine:
    return RekognitionEngine(client, sleep=sleeps.append)


@pytest.fixture
def image() -> np.ndarray:
    """A 640x480 BGR frame of seeded noise (noise makes JPEG sizes realistic)."""
    return np.random.default_rng(7).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)


@pytest.fixture
def face() -> DetectedFace:
    return DetectedFace(box=Box(x=200, y=120, width=160, height=200), score=0.99)


def _bounding_box(left: float, top: float, width: float, height: float) -> dict[str, float]:
    return {"Left": left, "Top": top, "Width": width, "Height": height}


def _face(face_id: str, talent_id: str) -> dict[str, Any]:
    return {
        "FaceId": face_id,
        "ImageId": IMAGE_ID,
        "ExternalImageId": talent_id,
        "BoundingBox": _bounding_box(0.2, 0.2, 0.6, 0.6),
        "Confidence": 99.9,
    }


def _index_params(talent_id: str = TALENT) -> dict[str, Any]:
    return {
        "CollectionId": COLLECTION,
        "Image": {"Bytes": ANY},
        "ExternalImageId": talent_id,
        "MaxFaces": 1,
        "QualityFilter": "AUTO",
        "DetectionAttributes": ["DEFAULT"],
    }


def _indexed(face_id: str) -> dict[str, Any]:
    return {
        "FaceRecords": [{"Face": _face(face_id, TALENT)}],
        "UnindexedFaces": [],
        "FaceModelVersion": "7.0",
    }


def _search_params(k: int) -> dict[str, Any]:
    return {
        "CollectionId": COLLECTION,
        "Image": {"Bytes": ANY},
        "MaxFaces": k,
        "FaceMatchThreshold": 50.0,
    }


def _matches(*matches: tuple[str, str, float]) -> dict[str, Any]:
    return {
        "SearchedFaceBoundingBox": _bounding_box(0.2, 0.2, 0.6, 0.6),
        "SearchedFaceConfidence": 99.5,
        "FaceMatches": [
            {"Similarity": similarity, "Face": _face(face_id, talent_id)}
            for face_id, talent_id, similarity in matches
        ],
        "FaceModelVersion": "7.0",
    }


def _captured_image_bytes(client: Any, operation: str) -> list[bytes]:
    """Image bytes sent to `operation`, captured before the stubber answers."""
    captured: list[bytes] = []

    def capture(params: dict[str, Any], **_: Any) -> None:
        captured.append(params["Image"]["Bytes"])

    client.meta.events.register(f"provide-client-params.rekognition.{operation}", capture)
    return captured


def test_enroll_creates_the_account_collection_once_and_indexes_the_face(
    engine: RekognitionEngine, stubber: Stubber, image: np.ndarray, face: DetectedFace
) -> None:
    stubber.add_response(
        "create_collection",
        {"StatusCode": 200, "CollectionArn": "arn:aws:rekognition:eu-west-1:1:collection/x"},
        {"CollectionId": COLLECTION},
    )
    stubber.add_response("index_faces", _indexed(FACE_A), _index_params())
    stubber.add_response("index_faces", _indexed(FACE_B), _index_params())

    first = engine.enroll(ACCOUNT, TALENT, image, face)
    second = engine.enroll(ACCOUNT, TALENT, image, face)

    assert (first.face_id, first.vector) == (FACE_A, None)
    assert second.face_id == FACE_B
    assert engine.collection_id(ACCOUNT) == COLLECTION
    assert ACCOUNT not in COLLECTION
    stubber.assert_no_pending_responses()


def test_enroll_accepts_an_existing_collection(
    engine: RekognitionEngine, stubber: Stubber, image: np.ndarray, face: DetectedFace
) -> None:
    stubber.add_client_error(
        "create_collection",
        "ResourceAlreadyExistsException",
        "collection exists",
        400,
        {"CollectionId": COLLECTION},
    )
    stubber.add_response("index_faces", _indexed(FACE_A), _index_params())

    assert engine.enroll(ACCOUNT, TALENT, image, face).face_id == FACE_A
    stubber.assert_no_pending_responses()


def test_enroll_recreates_a_collection_deleted_since_it_was_cached(
    engine: RekognitionEngine, stubber: Stubber, image: np.ndarray, face: DetectedFace
) -> None:
    stubber.add_response("create_collection", {"StatusCode": 200}, {"CollectionId": COLLECTION})
    stubber.add_response("index_faces", _indexed(FACE_A), _index_params())
    stubber.add_client_error("index_faces", "ResourceNotFoundException", "gone", 400)
    stubber.add_response("create_collection", {"StatusCode": 200}, {"CollectionId": COLLECTION})
    stubber.add_response("index_faces", _indexed(FACE_B), _index_params())

    engine.enroll(ACCOUNT, TALENT, image, face)
    assert engine.enroll(ACCOUNT, TALENT, image, face).face_id == FACE_B
    stubber.assert_no_pending_responses()


def test_enroll_without_an_indexable_face_says_why(
    engine: RekognitionEngine, stubber: Stubber, image: np.ndarray, face: DetectedFace
) -> None:
    stubber.add_response("create_collection", {"StatusCode": 200}, {"CollectionId": COLLECTION})
    stubber.add_response(
        "index_faces",
        {
            "FaceRecords": [],
            "UnindexedFaces": [{"Reasons": ["SMALL_BOUNDING_BOX", "LOW_SHARPNESS"]}],
        },
        _index_params(),
    )

    with pytest.raises(
        EngineError, match=r"^no face of usable quality: LOW_SHARPNESS, SMALL_BOUNDING_BOX$"
    ):
        engine.enroll(ACCOUNT, TALENT, image, face)
    stubber.assert_no_pending_responses()


def test_enroll_rejects_a_talent_id_rekognition_cannot_store(
    engine: RekognitionEngine, stubber: Stubber, image: np.ndarray, face: DetectedFace
) -> None:
    with pytest.raises(EngineError, match="talent id"):
        engine.enroll(ACCOUNT, "talent with spaces", image, face)
    stubber.assert_no_pending_responses()


def test_match_searches_each_detected_face_separately(
    engine: RekognitionEngine, stubber: Stubber, image: np.ndarray
) -> None:
    stubber.add_response(
        "detect_faces",
        {
            "FaceDetails": [
                # Listed small first: the engine must order largest first.
                {"BoundingBox": _bounding_box(0.5, 0.25, 0.125, 0.25), "Confidence": 98.0},
                # Overhangs the left edge: clipped to the frame.
                {"BoundingBox": _bounding_box(-0.05, 0.1, 0.3, 0.5), "Confidence": 99.5},
            ]
        },
        {"Image": {"Bytes": ANY}, "Attributes": ["DEFAULT"]},
    )
    stubber.add_response(
        "search_faces_by_image",
        _matches((FACE_B, "talent-b", 81.5), (FACE_A, "talent-a", 97.25)),
        _search_params(k=3),
    )
    stubber.add_response("search_faces_by_image", _matches(), _search_params(k=3))

    faces = engine.detect(image)
    results = engine.search(ACCOUNT, engine.describe(image, faces), k=3)

    assert [f.box for f in faces] == [
        Box(x=0, y=48, width=160, height=240),
        Box(x=320, y=120, width=80, height=120),
    ]
    assert [f.score for f in faces] == pytest.approx([0.995, 0.98])
    assert [[(c.talent_id, c.face_id, c.similarity) for c in r] for r in results] == [
        [("talent-a", FACE_A, 97.25), ("talent-b", FACE_B, 81.5)],
        [],
    ]
    stubber.assert_no_pending_responses()


def test_a_crop_without_a_face_has_no_candidates(
    engine: RekognitionEngine, stubber: Stubber
) -> None:
    stubber.add_client_error(
        "search_faces_by_image", "InvalidParameterException", NO_FACE_MESSAGE, 400
    )
    stubber.add_response(
        "search_faces_by_image", _matches((FACE_A, TALENT, 90.0)), _search_params(k=5)
    )

    results = engine.search(ACCOUNT, [b"crop-without-face", b"crop-with-face"], k=5)

    assert [len(r) for r in results] == [0, 1]
    stubber.assert_no_pending_responses()


def test_other_invalid_parameters_are_not_mistaken_for_a_missing_face(
    engine: RekognitionEngine, stubber: Stubber
) -> None:
    stubber.add_client_error(
        "search_faces_by_image", "InvalidParameterException", "Request has invalid image", 400
    )

    with pytest.raises(
        EngineError, match=r"^rekognition SearchFacesByImage failed: InvalidParameterException$"
    ):
        engine.search(ACCOUNT, [b"crop"], k=5)
    stubber.assert_no_pending_responses()


def test_search_in_a_collection_that_does_not_exist_finds_nothing(
    engine: RekognitionEngine, stubber: Stubber
) -> None:
    stubber.add_client_error(
        "search_faces_by_image",
        "ResourceNotFoundException",
        "collection not found",
        400,
        _search_params(k=5),
    )

    # One call only, and no CreateCollection: the stubber would reject any other call.
    assert engine.search(ACCOUNT, [b"crop-1", b"crop-2"], k=5) == [[], []]
    stubber.assert_no_pending_responses()


def test_delete_chunks_face_ids_to_the_api_limit(
    engine: RekognitionEngine, stubber: Stubber
) -> None:
    face_ids = [str(uuid.UUID(int=i)) for i in range(5000)]
    for chunk in (face_ids[:4096], face_ids[4096:]):
        stubber.add_response(
            "delete_faces",
            {"DeletedFaces": chunk},
            {"CollectionId": COLLECTION, "FaceIds": chunk},
        )

    engine.delete(ACCOUNT, face_ids)
    stubber.assert_no_pending_responses()


def test_delete_tolerates_faces_already_gone_but_not_refusals(
    engine: RekognitionEngine, stubber: Stubber
) -> None:
    stubber.add_response(
        "delete_faces",
        {"UnsuccessfulFaceDeletions": [{"FaceId": FACE_A, "Reasons": ["FACE_NOT_FOUND"]}]},
    )
    stubber.add_response(
        "delete_faces",
        {
            "UnsuccessfulFaceDeletions": [
                {"FaceId": FACE_B, "Reasons": ["ASSOCIATED_TO_AN_EXISTING_USER"]}
            ]
        },
    )

    engine.delete(ACCOUNT, [FACE_A])
    with pytest.raises(EngineError, match="ASSOCIATED_TO_AN_EXISTING_USER"):
        engine.delete(ACCOUNT, [FACE_B])
    stubber.assert_no_pending_responses()


def test_delete_from_a_collection_that_does_not_exist_is_a_no_op(
    engine: RekognitionEngine, stubber: Stubber
) -> None:
    stubber.add_client_error(
        "delete_faces",
        "ResourceNotFoundException",
        "collection not found",
        400,
        {"CollectionId": COLLECTION, "FaceIds": [FACE_A]},
    )

    engine.delete(ACCOUNT, [FACE_A])
    stubber.assert_no_pending_responses()


def test_throttling_is_retried_with_growing_jittered_delays(
    engine: RekognitionEngine, stubber: Stubber, image: np.ndarray, sleeps: list[float]
) -> None:
    stubber.add_client_error("detect_faces", "ThrottlingException", "slow down", 400)
    stubber.add_client_error("detect_faces", "ThrottlingException", "slow down", 400)
    stubber.add_response("detect_faces", {"FaceDetails": []})

    assert engine.detect(image) == []
    # base 0.2 s, equal jitter: attempt n sleeps within [0.1, 0.2] * 2**(n-1).
    assert len(sleeps) == 2
    assert 0.1 <= sleeps[0] <= 0.2
    assert 0.2 <= sleeps[1] <= 0.4
    assert sleeps[1] > sleeps[0]
    stubber.assert_no_pending_responses()


@pytest.mark.parametrize(
    "code",
    [
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "InternalServerError",
    ],
)
def test_persistent_throttling_makes_the_engine_unavailable(
    client: Any, stubber: Stubber, image: np.ndarray, code: str
) -> None:
    sleeps: list[float] = []
    engine = RekognitionEngine(client, max_attempts=3, sleep=sleeps.append)
    for _ in range(3):
        stubber.add_client_error("detect_faces", code, "try later", 400)

    with pytest.raises(EngineUnavailable, match=code):
        engine.detect(image)
    assert len(sleeps) == 2
    stubber.assert_no_pending_responses()


def test_other_client_errors_name_the_code_not_the_response(
    engine: RekognitionEngine, stubber: Stubber, image: np.ndarray, sleeps: list[float]
) -> None:
    stubber.add_client_error(
        "detect_faces", "AccessDeniedException", "User arn:aws:iam::1:user/x is not allowed", 400
    )

    with pytest.raises(EngineError) as raised:
        engine.detect(image)
    assert not isinstance(raised.value, EngineUnavailable)
    assert str(raised.value) == "rekognition DetectFaces failed: AccessDeniedException"
    assert sleeps == []
    stubber.assert_no_pending_responses()


def test_an_unreachable_endpoint_makes_the_engine_unavailable(image: np.ndarray) -> None:
    class UnreachableClient:
        def detect_faces(self, **_: Any) -> dict[str, Any]:
            raise EndpointConnectionError(endpoint_url="https://rekognition.invalid")

    with pytest.raises(EngineUnavailable, match="EndpointConnectionError"):
        RekognitionEngine(UnreachableClient()).detect(image)


def test_large_images_are_downscaled_but_boxes_stay_in_original_pixels(
    client: Any, stubber: Stubber, image: np.ndarray
) -> None:
    engine = RekognitionEngine(client, max_image_bytes=40_000)
    sent = _captured_image_bytes(client, "DetectFaces")
    stubber.add_response(
        "detect_faces",
        {"FaceDetails": [{"BoundingBox": _bounding_box(0.25, 0.25, 0.5, 0.5), "Confidence": 90.0}]},
    )

    faces = engine.detect(image)

    assert len(sent[0]) <= 40_000
    decoded = cv2.imdecode(np.frombuffer(sent[0], np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[1] < 640
    assert faces[0].box == Box(x=160, y=120, width=320, height=240)
    stubber.assert_no_pending_responses()


def test_describe_crops_each_face_with_a_margin_clipped_to_the_frame(
    engine: RekognitionEngine, stubber: Stubber, image: np.ndarray
) -> None:
    faces = [
        DetectedFace(box=Box(x=200, y=120, width=160, height=200), score=0.9),
        DetectedFace(box=Box(x=0, y=400, width=120, height=80), score=0.8),
        # Smaller than Rekognition's 80 px minimum once cropped: upscaled.
        DetectedFace(box=Box(x=500, y=50, width=20, height=20), score=0.7),
    ]

    crops = engine.describe(image, faces)

    shapes = [cv2.imdecode(np.frombuffer(c, np.uint8), cv2.IMREAD_COLOR).shape for c in crops]
    assert shapes[0] == (300, 240, 3)  # 25 % on every side
    assert shapes[1] == (100, 150, 3)  # clipped at the left and bottom edges
    assert min(shapes[2][:2]) >= 80
    stubber.assert_no_pending_responses()
