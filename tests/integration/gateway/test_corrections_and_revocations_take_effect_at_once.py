"""Correction (one enrolled face deleted), API keys (listed without secrets, revoked at once on
every replica, one key per CreateAccount) and idempotency keys reused with other content."""

from __future__ import annotations

import logging

import grpc
import pytest
from sqlalchemy import func, select

from gateway.store import AccountRow, ApiKeyRow, MediaRow
from mixip.common.v1 import common_pb2 as common
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2_grpc
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.matcher.v1 import matcher_pb2
from mixip.runtime.config import ADMIN_KEY_FILE
from services.matcher.store import CollectionRow, FaceRow
from tests.support import faces
from tests.support.gateway_calls import CHUNK, PROJECT, consent, enroll, gateway_vault, upload
from tests.support.status import expect_error


def count(db, row) -> int:
    with db.read() as session:
        return session.scalar(select(func.count()).select_from(row))


def collection_version(gw, account) -> int:
    with gw.mesh.matcher.app.db.read() as session:
        return session.scalar(
            select(CollectionRow.version).where(CollectionRow.account_id == account)
        )


# -- correction ---------------------------------------------------------------------------------


@pytest.fixture
def misenrolled(gateway, studio, clock):
    """The astronaut enrolled twice: with her photo, and by mistake with Grace Hopper's."""
    account, meta = studio
    wrong = enroll(gateway, meta, "astronaut", faces.grace_hopper()).face
    return account, meta, wrong


def test_deleting_one_face_corrects_a_mis_enrollment_and_keeps_the_others(
    gateway, misenrolled, caplog
):
    account, meta, wrong = misenrolled
    hopper = faces.encode(faces.grace_hopper(), ".jpg")
    assert upload(gateway, meta, hopper).faces[0].talent_id == "astronaut"  # the mistake
    before = collection_version(gateway, account)
    listed = gateway.stub.ListTalentFaces(
        pb.ListTalentFacesRequest(talent_id="astronaut"), metadata=meta
    )
    assert wrong.face_id in {f.face_id for f in listed.faces} and len(listed.faces) == 2

    with caplog.at_level(logging.INFO):
        reply = gateway.stub.DeleteTalentFace(
            pb.DeleteTalentFaceRequest(talent_id="astronaut", face_id=wrong.face_id),
            metadata=meta,
        )
    assert reply.face.face_id == wrong.face_id and reply.face.talent_id == "astronaut"
    remaining = gateway.stub.ListTalentFaces(
        pb.ListTalentFacesRequest(talent_id="astronaut"), metadata=meta
    ).faces
    assert [f.face_id for f in remaining] != [] and wrong.face_id not in {
        f.face_id for f in remaining
    }
    assert collection_version(gateway, account) == before + 1
    assert upload(gateway, meta, hopper).faces[0].label == common.FACE_LABEL_UNKNOWN
    mine = upload(gateway, meta, faces.encode(faces.astronaut(), ".jpg")).faces[0]
    assert (mine.label, mine.talent_id) == (common.FACE_LABEL_CLEARED, "astronaut")
    # the correction is in the logs with who and what, never the talent id
    lines = [r for r in caplog.records if r.getMessage() == "talent face deleted"]
    assert {r.name for r in lines} == {"mixip.gateway", "mixip.matcher"}
    assert all(r.fields["face"] == wrong.face_id for r in lines)
    assert any(r.fields.get("key") for r in lines)
    assert not any("astronaut" in repr(r.fields) for r in lines)


def test_a_deleted_face_stops_matching_on_every_matcher_replica(
    gateway, misenrolled, matcher_factory
):
    account, meta, wrong = misenrolled
    other = matcher_factory(gateway.mesh.consent.address)
    hopper = faces.encode(faces.grace_hopper(), ".jpg")

    def other_replica_match():
        return other.stub.MatchMedia(
            matcher_pb2.MatchMediaRequest(account_id=account, project_id=PROJECT, media=hopper)
        ).faces[0]

    assert other_replica_match().talent_id == "astronaut"  # replica two holds the vector
    gateway.stub.DeleteTalentFace(
        pb.DeleteTalentFaceRequest(talent_id="astronaut", face_id=wrong.face_id), metadata=meta
    )
    assert other_replica_match().label == common.FACE_LABEL_UNKNOWN


def test_a_face_of_another_talent_or_account_is_not_found_and_nothing_is_deleted(
    gateway, misenrolled, clock
):
    _, meta, wrong = misenrolled
    faces_before = count(gateway.mesh.matcher.app.db, FaceRow)
    _, other_meta = gateway.new_account("rival")
    for metadata, talent, face_id in (
        (meta, "grace", wrong.face_id),  # the right face id under another talent
        (other_meta, "astronaut", wrong.face_id),  # another account
        (meta, "astronaut", "no-such-face"),
    ):
        details = expect_error(
            grpc.StatusCode.NOT_FOUND,
            gateway.stub.DeleteTalentFace,
            pb.DeleteTalentFaceRequest(talent_id=talent, face_id=face_id),
            metadata=metadata,
        )
        assert details.reason == "FACE_NOT_FOUND"
    assert count(gateway.mesh.matcher.app.db, FaceRow) == faces_before
    gateway.stub.DeleteTalentFace(
        pb.DeleteTalentFaceRequest(talent_id="astronaut", face_id=wrong.face_id), metadata=meta
    )
    expect_error(  # a second deletion finds nothing left
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.DeleteTalentFace,
        pb.DeleteTalentFaceRequest(talent_id="astronaut", face_id=wrong.face_id),
        metadata=meta,
    )
    assert count(gateway.mesh.matcher.app.db, FaceRow) == faces_before - 1


# -- API keys -----------------------------------------------------------------------------------


@pytest.fixture
def second_replica(gateway, serve, tmp_path):
    """Another gateway replica on the same database and peers."""
    from gateway.app import ADMIN_SERVICE, GATEWAY_SERVICE, PEER_SERVICES, GatewayApp
    from gateway.app import GatewaySettings as Settings
    from gateway.media_store import LocalEncryptedStore
    from gateway.store import Base
    from mixip.runtime.client import open_channel
    from mixip.runtime.db import Database
    from mixip.runtime.keys import LocalKeyWrapper

    first = gateway.app
    addresses = {
        "matcher": gateway.mesh.matcher.address,
        "consent": gateway.mesh.consent.address,
        "audit": gateway.audit.address,
        "retention": "127.0.0.1:1",
    }
    app = GatewayApp(
        Database(first.db.url, Base.metadata),
        {
            name: open_channel(addresses[name], [service], timeout_seconds=30)
            for name, service in PEER_SERVICES.items()
        },
        LocalEncryptedStore(tmp_path / "media", LocalKeyWrapper(tmp_path / "keys" / "gw.key")),
        Settings(admin_key_file=tmp_path / ADMIN_KEY_FILE, vault=gateway_vault(tmp_path)),
    )
    running = serve(app)
    channel = open_channel(
        f"127.0.0.1:{running.port}", [GATEWAY_SERVICE, ADMIN_SERVICE], timeout_seconds=30
    )
    yield gateway_pb2_grpc.GatewayServiceStub(channel), admin_pb2_grpc.AdminServiceStub(channel)
    channel.close()


def test_a_revoked_key_is_refused_at_once_on_every_replica(gateway, second_replica):
    other, _ = second_replica
    account, meta = gateway.new_account("studio")
    created = gateway.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(account_id=account), metadata=gateway.admin_metadata()
    )
    spare = (("authorization", f"Bearer {created.api_key}"),)
    for stub in (gateway.stub, other):  # both replicas accept (and would cache, if they did)
        assert stub.VerifyAuditLog(pb.VerifyAuditLogRequest(), metadata=meta).ok

    revoked = gateway.admin.RevokeApiKey(
        admin_pb2.RevokeApiKeyRequest(api_key_id=meta[0][1].split("_")[1]),
        metadata=gateway.admin_metadata(),
    ).api_key
    assert revoked.HasField("revoked_at")
    for stub in (other, gateway.stub):
        expect_error(
            grpc.StatusCode.UNAUTHENTICATED,
            stub.VerifyAuditLog,
            pb.VerifyAuditLogRequest(),
            metadata=meta,
        )
        assert stub.VerifyAuditLog(pb.VerifyAuditLogRequest(), metadata=spare).ok
    again = gateway.admin.RevokeApiKey(
        admin_pb2.RevokeApiKeyRequest(api_key_id=revoked.api_key_id),
        metadata=gateway.admin_metadata(),
    ).api_key
    assert again.revoked_at == revoked.revoked_at  # idempotent: the first time stays


def test_keys_are_listed_without_their_secrets(gateway):
    account, meta = gateway.new_account("studio")
    token = meta[0][1].removeprefix("Bearer ")
    second = gateway.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(account_id=account), metadata=gateway.admin_metadata()
    )
    listed = gateway.admin.ListApiKeys(
        admin_pb2.ListApiKeysRequest(account_id=account, page_size=1),
        metadata=gateway.admin_metadata(),
    )
    rest = gateway.admin.ListApiKeys(
        admin_pb2.ListApiKeysRequest(
            account_id=account, page_size=1, page_token=listed.next_page_token
        ),
        metadata=gateway.admin_metadata(),
    )
    keys = [*listed.api_keys, *rest.api_keys]
    assert rest.next_page_token == ""
    assert {k.api_key_id for k in keys} == {token.split("_")[1], second.api_key_id}
    for key in keys:
        assert key.prefix == f"mixip_{key.api_key_id}_" and not key.HasField("revoked_at")
        assert key.account_id == account
    wire = listed.SerializeToString() + rest.SerializeToString()
    for secret in (token, second.api_key):
        assert secret.split("_", 2)[2].encode() not in wire
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.admin.ListApiKeys,
        admin_pb2.ListApiKeysRequest(account_id="acct_nobody"),
        metadata=gateway.admin_metadata(),
    )
    expect_error(  # an account's key cannot list keys
        grpc.StatusCode.PERMISSION_DENIED,
        gateway.admin.ListApiKeys,
        admin_pb2.ListApiKeysRequest(account_id=account),
        metadata=meta,
    )


def test_the_admin_credential_is_not_revoked_through_the_api(gateway):
    admin_key_id = gateway.app.admin_key.split("_")[1]
    details = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        gateway.admin.RevokeApiKey,
        admin_pb2.RevokeApiKeyRequest(api_key_id=admin_key_id),
        metadata=gateway.admin_metadata(),
    )
    assert details.reason == "ADMIN_KEY_NOT_REVOCABLE"
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.admin.RevokeApiKey,
        admin_pb2.RevokeApiKeyRequest(api_key_id="0123456789abcdef"),
        metadata=gateway.admin_metadata(),
    )


def test_a_replayed_create_account_mints_no_second_key(gateway, second_replica):
    _, other_admin = second_replica
    request = admin_pb2.CreateAccountRequest(name="studio", request_id="create-1")
    first = gateway.admin.CreateAccount(request, metadata=gateway.admin_metadata())
    replay = other_admin.CreateAccount(request, metadata=gateway.admin_metadata())
    assert replay.account.account_id == first.account.account_id
    assert replay.api_key == "" and replay.api_key_id == first.api_key_id
    with gateway.app.db.read() as session:
        keys = session.scalar(
            select(func.count())
            .select_from(ApiKeyRow)
            .where(ApiKeyRow.account_id == first.account.account_id)
        )
    assert keys == 1 and count(gateway.app.db, AccountRow) == 1
    details = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        gateway.admin.CreateAccount,
        admin_pb2.CreateAccountRequest(name="another studio", request_id="create-1"),
        metadata=gateway.admin_metadata(),
    )
    assert details.reason == "IDEMPOTENCY_KEY_REUSED"
    assert count(gateway.app.db, AccountRow) == 1


# -- idempotency keys reused with other content ---------------------------------------------------


def test_an_upload_request_id_reused_for_other_content_is_refused(gateway, studio):
    _, meta = studio
    astronaut = faces.encode(faces.astronaut(), ".jpg")
    first = upload(gateway, meta, astronaut, request_id="up-1")
    assert upload(gateway, meta, astronaut, request_id="up-1").media_id == first.media_id
    for data, project in (
        (faces.encode(faces.grace_hopper(), ".jpg"), PROJECT),  # other media
        (astronaut, "film-2"),  # other project
    ):
        details = expect_error(
            grpc.StatusCode.FAILED_PRECONDITION,
            upload,
            gateway,
            meta,
            data,
            project=project,
            request_id="up-1",
        )
        assert details.reason == "IDEMPOTENCY_KEY_REUSED"
    assert count(gateway.app.db, MediaRow) == 1


def test_an_enrollment_request_id_reused_for_another_image_is_refused(gateway, clock):
    _, meta = gateway.new_account("studio")
    consent(gateway, meta, clock, "astronaut", cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    consent(gateway, meta, clock, "grace", cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)

    def enroll_with_key(talent, image):
        data = faces.encode(image, ".png")
        header = pb.EnrollHeader(talent_id=talent, request_id="enroll-1")
        chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
        return gateway.stub.EnrollTalent(
            iter(
                [pb.EnrollTalentRequest(header=header)]
                + [pb.EnrollTalentRequest(chunk=c) for c in chunks]
            ),
            metadata=meta,
        )

    first = enroll_with_key("astronaut", faces.astronaut()).face
    assert enroll_with_key("astronaut", faces.astronaut()).face.face_id == first.face_id
    for talent, image in (("astronaut", faces.grace_hopper()), ("grace", faces.astronaut())):
        details = expect_error(grpc.StatusCode.FAILED_PRECONDITION, enroll_with_key, talent, image)
        assert details.reason == "IDEMPOTENCY_KEY_REUSED"
    assert count(gateway.mesh.matcher.app.db, FaceRow) == 1
