"""Faces sealed under their talent's key (issue 17, finding #1): after a talent's faces are
deleted, no byte of its id or vector is left in the matcher's database files; a copy taken before
stops opening after one vault rotation; every deletion path destroys the key with the last face;
faces enrolled before sealing are sealed at start and still match."""

from __future__ import annotations

import secrets
from pathlib import Path

import grpc
import pytest
from sqlalchemy import insert, select, text

from mixip.consent.v1 import consent_pb2 as cpb
from mixip.matcher.v1 import matcher_pb2 as pb
from mixip.runtime import migrations
from mixip.runtime.config import ConfigError
from mixip.runtime.db import Database
from mixip.runtime.idempotency import content_digest
from mixip.runtime.vault import TalentKey, Vault
from services.matcher.store import (
    Base,
    CollectionRow,
    FaceRequestRow,
    FaceRow,
    TalentKeyRow,
    VaultStateRow,
    open_face,
)
from tests.integration.matcher.test_matcher_service import (
    ACCOUNT,
    CLEARED,
    PROJECT,
    UNKNOWN,
    enroll,
    grant,
    grant_usage,
    match,
)
from tests.support import faces
from tests.support.checkpoints import Checkpoints, Outcome
from tests.support.disk import backup, database_bytes, found_in, keys_in_copy

BEFORE_SEALING = "23af0c4eb29c"  # the matcher's revision before faces were sealed


def new_talent() -> str:
    """A talent id no byte sequence holds by accident."""
    return f"talent-{secrets.token_hex(8)}"


def talent_key(app, talent: str) -> TalentKey | None:
    with app.db.read() as session:
        return app.vault.talent_keys(session, ACCOUNT, [talent], create=False).get(talent)


def enrolled_vector(app, talent: str) -> bytes:
    """The talent's one enrolled vector (float32 little-endian), opened as the matcher does."""
    key = talent_key(app, talent)
    assert key is not None
    with app.db.read() as session:
        [row] = session.scalars(select(FaceRow).where(FaceRow.talent_ref == key.ref)).all()
    talent_id, vector = open_face(key, row.face_id, row.sealed)
    assert talent_id == talent and len(vector) == 128 * 4
    return vector


def test_after_deleting_a_talents_faces_no_byte_of_its_id_or_vector_is_left_on_disk(mesh, clock):
    app, talent = mesh.matcher.app, new_talent()
    for someone in (talent, "hopper"):
        grant(mesh, clock, someone)
    face = enroll(mesh, talent, faces.astronaut()).face
    enroll(mesh, "hopper", faces.grace_hopper())  # another talent's face stays
    vector = enrolled_vector(app, talent)
    before = database_bytes(app.db)
    assert found_in(before, face.face_id)  # the scan reads the rows (else it proves nothing)
    # sealed from the start: neither was ever written in clear
    assert found_in(before, talent, vector[:16]) == []

    reply = mesh.matcher.stub.DeleteTalentFaces(
        pb.DeleteTalentFacesRequest(account_id=ACCOUNT, talent_id=talent)
    )

    assert reply.deleted_count == 1
    assert found_in(database_bytes(app.db), talent, vector[:16]) == []
    assert talent_key(app, talent) is None  # its key went with its last face
    assert app.vault.status().rotation_due_at is not None  # and a rotation is owed


def test_enrollment_after_an_erasure_makes_a_new_key(mesh, clock):
    app, talent = mesh.matcher.app, new_talent()
    grant(mesh, clock, talent)
    grant_usage(mesh, clock, talent)
    enroll(mesh, talent, faces.astronaut())
    first = talent_key(app, talent)
    mesh.matcher.stub.DeleteTalentFaces(
        pb.DeleteTalentFacesRequest(account_id=ACCOUNT, talent_id=talent)
    )
    photo = faces.encode(faces.astronaut(), ".jpg")
    assert match(mesh, photo).faces[0].label == UNKNOWN

    enroll(mesh, talent, faces.astronaut())

    again = talent_key(app, talent)
    assert first is not None and again is not None
    assert again.ref != first.ref and again.key != first.key  # nothing links the lives
    [found] = match(mesh, photo).faces
    assert (found.label, found.talent_id) == (CLEARED, talent)


def test_correcting_away_a_talents_last_face_destroys_its_key_and_not_before(mesh, clock):
    app, talent = mesh.matcher.app, new_talent()
    grant(mesh, clock, talent)
    one = enroll(mesh, talent, faces.astronaut()).face
    two = enroll(mesh, talent, faces.scaled(faces.astronaut(), 0.8)).face

    def delete(face_id: str) -> None:
        mesh.matcher.stub.DeleteTalentFace(
            pb.DeleteTalentFaceRequest(account_id=ACCOUNT, talent_id=talent, face_id=face_id)
        )

    delete(one.face_id)
    assert talent_key(app, talent) is not None  # a face is left: it must still open
    listed = mesh.matcher.stub.ListTalentFaces(
        pb.ListTalentFacesRequest(account_id=ACCOUNT, talent_id=talent)
    )
    assert [f.face_id for f in listed.faces] == [two.face_id]
    delete(two.face_id)
    assert talent_key(app, talent) is None


def test_a_revocation_delivered_by_the_outbox_destroys_the_talents_key(mesh, clock):
    app, talent = mesh.matcher.app, new_talent()
    grant(mesh, clock, talent)
    enroll(mesh, talent, faces.astronaut())
    clock.advance(seconds=1)
    grant(mesh, clock, talent, decision=cpb.CONSENT_DECISION_REVOKED)
    assert mesh.consent.app.outbox.run_once() == 1
    assert talent_key(app, talent) is None


def test_an_enrollment_sealing_under_a_key_keeps_it_from_a_concurrent_last_face_deletion(
    mesh, clock
):
    """An enrollment holds its account's collection lock from before it reads the talent's key
    until it commits; a deletion of the talent's (other) last face counts what is left only
    after taking that lock, so it sees the new face and keeps the key it is sealed under."""
    app, talent = mesh.matcher.app, new_talent()
    grant(mesh, clock, talent)
    grant_usage(mesh, clock, talent)
    old = enroll(mesh, talent, faces.astronaut()).face
    hooks = Checkpoints()
    app.matcher.checkpoint = hooks
    keyed = hooks.pause_at("enroll.keyed")
    enrolling = Outcome(lambda: enroll(mesh, talent, faces.scaled(faces.astronaut(), 0.8)))
    keyed.reached()  # sealed under the talent's key, not committed
    deleting = Outcome(
        lambda: mesh.matcher.stub.DeleteTalentFace(
            pb.DeleteTalentFaceRequest(account_id=ACCOUNT, talent_id=talent, face_id=old.face_id)
        )
    )
    assert not deleting.finishes_within(1.0)  # it waits for the enrollment's lock
    keyed.release()
    new = enrolling.join().result.face
    assert deleting.join().error is None

    assert talent_key(app, talent) is not None
    listed = mesh.matcher.stub.ListTalentFaces(
        pb.ListTalentFacesRequest(account_id=ACCOUNT, talent_id=talent)
    )
    assert [f.face_id for f in listed.faces] == [new.face_id]
    [found] = match(mesh, faces.encode(faces.astronaut(), ".jpg")).faces
    assert (found.label, found.talent_id) == (CLEARED, talent)


def faces_in_copy(copy: Database, vault: Vault, talent: str, key_dir: Path) -> int:
    """How many of the talent's faces in the copy open, with the live vault's sealing key or
    any sealing key of the copy's version that a key file present today unwraps."""
    keys = keys_in_copy(copy, vault, VaultStateRow, TalentKeyRow, key_dir)
    with copy.read() as session:
        rows = session.execute(select(FaceRow.face_id, FaceRow.talent_ref, FaceRow.sealed)).all()
    assert rows, "the copy holds the face (else no proof)"
    return sum(
        open_face(keys[ref], face_id, sealed)[0] == talent
        for face_id, ref, sealed in rows
        if ref in keys
    )


def test_a_copy_taken_before_an_erasure_yields_no_face_of_the_talent_after_a_rotation(
    mesh, clock, tmp_path, pg_test_database
):
    app, talent = mesh.matcher.app, new_talent()
    grant(mesh, clock, talent)
    enroll(mesh, talent, faces.astronaut())
    copy = backup(app.db, "matcher", Base.metadata, tmp_path, pg_test_database)
    mesh.matcher.stub.DeleteTalentFaces(
        pb.DeleteTalentFacesRequest(account_id=ACCOUNT, talent_id=talent)
    )
    key_dir = tmp_path / "keys"
    # The window: until the rotation, the key material the mesh holds opens the copy's face.
    assert faces_in_copy(copy, app.vault, talent, key_dir) == 1
    assert app.vault.rotation_due() is False and app.vault.status().rotation_due_at

    app.vault.rotate()

    assert faces_in_copy(copy, app.vault, talent, key_dir) == 0
    with pytest.raises(ConfigError, match="cannot open key version 1"):  # nor does the service
        Vault(
            copy,
            app.vault.ring,
            clock,
            name="matcher",
            state_model=VaultStateRow,
            secret_model=TalentKeyRow,
        )
    copy.dispose()


def test_faces_enrolled_before_sealing_are_sealed_at_start_and_still_match(
    mesh, clock, matcher_factory, database_url
):
    """...and their plain enrollment digests (which a photo and a guessed talent id would
    confirm) are deleted: a retry of such an enrollment is compared on its talent."""
    talent = new_talent()
    grant(mesh, clock, talent)
    grant_usage(mesh, clock, talent)
    enroll(mesh, talent, faces.astronaut())
    vector = enrolled_vector(mesh.matcher.app, talent)  # a real embedding for the old row
    photo = faces.encode(faces.astronaut(), ".png")
    plain = content_digest(talent, photo)  # as an older matcher kept it
    old = database_url("legacy_matcher")
    migrations.upgrade(old, "matcher", BEFORE_SEALING)
    legacy = Database(old, Base.metadata)
    with legacy.write() as session:
        session.execute(
            text(
                "INSERT INTO matcher_faces (face_id, account_id, talent_id, engine, model,"
                " vector, box_x, box_y, box_width, box_height, detection_score, created_at,"
                " request_id) VALUES ('old-face', :account, :talent, 'local', 'sface-2021dec',"
                " :vector, 1, 2, 100, 120, 0.95, :at, 'old-request')"
            ),
            {"account": ACCOUNT, "talent": talent, "vector": vector, "at": clock()},
        )
        session.execute(
            text("INSERT INTO matcher_face_requests (face_id, digest) VALUES ('old-face', :d)"),
            {"d": plain},
        )
        session.execute(insert(CollectionRow).values(account_id=ACCOUNT, version=1))
    assert found_in(database_bytes(legacy), talent, plain)  # in clear before the upgrade

    upgraded = matcher_factory(mesh.consent.address, database=old)

    with legacy.read() as session:
        [row] = session.scalars(select(FaceRow)).all()
    assert (row.legacy_talent_id, row.legacy_vector) == (None, None)
    with legacy.read() as session:
        ref = upgraded.app.vault.ref(session, ACCOUNT, talent)
    assert (row.face_id, row.talent_ref) == ("old-face", ref)
    assert found_in(database_bytes(legacy), talent, vector[:16], plain) == []
    with legacy.read() as session:
        assert session.scalars(select(FaceRequestRow)).all() == []
    retry = {"account_id": ACCOUNT, "image": photo, "request_id": "old-request"}
    again = upgraded.stub.EnrollTalentFace(pb.EnrollTalentFaceRequest(talent_id=talent, **retry))
    assert again.face.face_id == "old-face"
    with pytest.raises(grpc.RpcError) as refused:
        upgraded.stub.EnrollTalentFace(pb.EnrollTalentFaceRequest(talent_id=new_talent(), **retry))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    [found] = upgraded.stub.MatchMedia(
        pb.MatchMediaRequest(
            account_id=ACCOUNT, project_id=PROJECT, media=faces.encode(faces.astronaut(), ".jpg")
        )
    ).faces
    assert (found.label, found.talent_id) == (CLEARED, talent)
    listed = upgraded.stub.ListTalentFaces(
        pb.ListTalentFacesRequest(account_id=ACCOUNT, talent_id=talent)
    )
    assert [(f.face_id, f.talent_id) for f in listed.faces] == [("old-face", talent)]
    assert upgraded.app.matcher.seal_legacy_faces() == 0  # idempotent: nothing left to seal
    legacy.dispose()
