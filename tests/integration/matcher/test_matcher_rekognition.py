"""The matcher service configured with the Rekognition engine: the same RPCs and label rules,
with Rekognition's calls answered by botocore's Stubber (moto lacks face collections)."""

from __future__ import annotations

import hashlib

import boto3
import pytest
from botocore.stub import ANY, Stubber

from mixip.common.v1 import common_pb2 as common
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.matcher.v1 import matcher_pb2 as pb
from mixip.runtime.times import to_timestamp
from services.matcher.engines.rekognition import RekognitionEngine
from services.matcher.settings import DEFAULT_THRESHOLDS, MatcherSettings
from tests.support import faces

ACCOUNT = "acct-r"
COLLECTION = "mixip-" + hashlib.sha256(ACCOUNT.encode()).hexdigest()[:40]
FACE_ID = "11111111-1111-4111-8111-111111111111"


@pytest.fixture
def rekognition(aws_credentials):
    client = boto3.client("rekognition", region_name="eu-west-1")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def service(rekognition, consent_factory, matcher_factory, clock):
    client, _ = rekognition
    consent = consent_factory("127.0.0.1:9")  # no dispatch in these tests
    for scope, project in (
        (cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING, ""),
        (cpb.CONSENT_SCOPE_FACE_USAGE, "film-1"),
    ):
        consent.stub.RecordConsent(
            cpb.RecordConsentRequest(
                account_id=ACCOUNT,
                talent_id="astronaut",
                scope=scope,
                project_id=project,
                decision=cpb.CONSENT_DECISION_GRANTED,
                evidence=cpb.Evidence(
                    method="signed",
                    policy_version="v1",
                    actor="staff",
                    captured_at=to_timestamp(clock()),
                ),
            )
        )
    settings = MatcherSettings(engine="rekognition", thresholds=DEFAULT_THRESHOLDS["rekognition"])
    return matcher_factory(
        consent.address,
        settings,
        engine_factory=lambda s, i: RekognitionEngine(client, sleep=lambda _: None),
    )


def _face(similarity_box=(0.3, 0.1, 0.4, 0.5)):
    left, top, width, height = similarity_box
    return {
        "BoundingBox": {"Left": left, "Top": top, "Width": width, "Height": height},
        "Confidence": 99.5,
    }


def test_enroll_match_and_delete_through_rekognition(service, rekognition):
    _, stubber = rekognition
    # enrollment: detection runs on Rekognition too, then the collection is made and indexed
    stubber.add_response(
        "detect_faces",
        {"FaceDetails": [_face()]},
        {"Image": {"Bytes": ANY}, "Attributes": ["DEFAULT"]},
    )
    stubber.add_response("create_collection", {"StatusCode": 200}, {"CollectionId": COLLECTION})
    stubber.add_response(
        "index_faces",
        {
            "FaceRecords": [
                {"Face": {"FaceId": FACE_ID, "ExternalImageId": "astronaut", "Confidence": 99.9}}
            ]
        },
        {
            "CollectionId": COLLECTION,
            "Image": {"Bytes": ANY},
            "ExternalImageId": "astronaut",
            "MaxFaces": 1,
            "QualityFilter": "AUTO",
            "DetectionAttributes": ["DEFAULT"],
        },
    )
    enrolled = service.stub.EnrollTalentFace(
        pb.EnrollTalentFaceRequest(
            account_id=ACCOUNT, talent_id="astronaut", image=faces.encode(faces.astronaut())
        )
    )
    assert (enrolled.face.face_id, enrolled.face.engine) == (FACE_ID, "rekognition")

    stubber.add_response(
        "detect_faces",
        {"FaceDetails": [_face()]},
        {"Image": {"Bytes": ANY}, "Attributes": ["DEFAULT"]},
    )
    stubber.add_response(
        "search_faces_by_image",
        {
            "FaceMatches": [
                {"Similarity": 99.2, "Face": {"FaceId": FACE_ID, "ExternalImageId": "astronaut"}}
            ]
        },
        {
            "CollectionId": COLLECTION,
            "Image": {"Bytes": ANY},
            "MaxFaces": 5,
            "FaceMatchThreshold": ANY,
        },
    )
    reply = service.stub.MatchMedia(
        pb.MatchMediaRequest(
            account_id=ACCOUNT, project_id="film-1", media=faces.encode(faces.astronaut())
        )
    )
    assert reply.engine == "rekognition"
    [face] = reply.faces
    assert (face.label, face.talent_id) == (common.FACE_LABEL_CLEARED, "astronaut")
    assert face.similarity == pytest.approx(99.2)

    stubber.add_response(
        "delete_faces",
        {"DeletedFaces": [FACE_ID]},
        {"CollectionId": COLLECTION, "FaceIds": [FACE_ID]},
    )
    deleted = service.stub.DeleteTalentFaces(
        pb.DeleteTalentFacesRequest(account_id=ACCOUNT, talent_id="astronaut")
    )
    assert deleted.deleted_count == 1
