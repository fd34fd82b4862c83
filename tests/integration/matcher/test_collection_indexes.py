"""Per-account indexes on the matcher's database: exact or approximate by collection size, and
always the database's current faces, whichever replica changed them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import delete

from mixip.runtime.db import Database
from mixip.runtime.keys import LocalKeyRing
from mixip.runtime.vault import Vault
from services.matcher.index import CollectionIndexes, sized_index_factory
from services.matcher.store import (
    Base,
    FaceRow,
    TalentKeyRow,
    VaultStateRow,
    bump_version,
    seal_face,
)

ACCOUNT = "acct-1"


@pytest.fixture
def db(database_url):
    database = Database(database_url("matcher"), Base.metadata)
    database.create_tables()
    yield database
    database.dispose()


@pytest.fixture
def vault(db, tmp_path, clock) -> Vault:
    """The matcher's vault: the faces' talent keys."""
    return Vault(
        db,
        LocalKeyRing(tmp_path / "keys" / "matcher-vault.key"),
        clock,
        name="matcher",
        state_model=VaultStateRow,
        secret_model=TalentKeyRow,
    )


def enroll(
    db: Database, vault: Vault, count: int, rng, talent: str = ""
) -> list[tuple[str, np.ndarray]]:
    """Faces sealed as the matcher seals them."""
    vectors = rng.standard_normal((count, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    faces = [(uuid.uuid4().hex, vector) for vector in vectors]
    talents = [talent or f"talent-{i}" for i in range(count)]
    with db.write() as session:
        keys = vault.talent_keys(session, ACCOUNT, talents, create=True)
        session.add_all(
            FaceRow(
                face_id=face_id,
                account_id=ACCOUNT,
                talent_ref=keys[talents[i]].ref,
                sealed=seal_face(keys[talents[i]], face_id, talents[i], vector.tobytes()),
                engine="local",
                model="sface-2021dec",
                box_x=0,
                box_y=0,
                box_width=100,
                box_height=100,
                detection_score=0.9,
                created_at=datetime.now(UTC),
            )
            for i, (face_id, vector) in enumerate(faces)
        )
        bump_version(session, ACCOUNT, added=[face_id for face_id, _ in faces])
    return faces


def settled(indexes: CollectionIndexes):
    """The account's index once any background build has finished."""
    indexes.for_account(ACCOUNT)
    indexes.wait_for_builds(timeout=60)
    return indexes.for_account(ACCOUNT)


def delete_faces(db: Database, face_ids: list[str]) -> None:
    with db.write() as session:
        session.execute(delete(FaceRow).where(FaceRow.face_id.in_(face_ids)))
        bump_version(session, ACCOUNT, removed=face_ids)


def test_the_index_kind_switches_at_the_configured_size(db, vault):
    rng = np.random.default_rng(3)
    indexes = CollectionIndexes(db, vault, sized_index_factory(50))
    enroll(db, vault, 49, rng)
    assert indexes.for_account(ACCOUNT).kind == "exact"
    enroll(db, vault, 1, rng)
    # The approximate index is built in the background; matches are served exactly meanwhile.
    assert indexes.for_account(ACCOUNT).kind == "exact"
    assert settled(indexes).kind == "quantized"
    assert indexes.for_account(ACCOUNT).size == 50
    assert CollectionIndexes(db, vault, sized_index_factory(0)).for_account(ACCOUNT).kind == "exact"


def test_enrollments_and_deletions_on_another_replica_update_the_index_in_place(db, vault):
    rng = np.random.default_rng(4)
    replica_a = CollectionIndexes(db, vault, sized_index_factory(10))
    replica_b = CollectionIndexes(db, vault, sized_index_factory(10))
    faces = enroll(db, vault, 40, rng)
    index = settled(replica_a)
    assert index.kind == "quantized"

    # replica B's writes: a new talent, and a deletion (consent revoked)
    ((new_face, new_vector),) = enroll(db, vault, 1, rng, talent="newcomer")
    gone_face, gone_vector = faces[0]
    delete_faces(db, [gone_face])
    replica_b.for_account(ACCOUNT)

    updated = replica_a.for_account(ACCOUNT)
    assert updated is index  # updated in place, not rebuilt
    assert updated.size == 40
    assert updated.search(new_vector[None, :], 1)[0][0].face_id == new_face
    assert all(c.face_id != gone_face for c in updated.search(gone_vector[None, :], 40)[0])
    assert gone_face not in updated.face_ids


def test_many_deletions_rebuild_the_index(db, vault):
    rng = np.random.default_rng(5)
    indexes = CollectionIndexes(db, vault, sized_index_factory(10))
    faces = enroll(db, vault, 40, rng)
    first = settled(indexes)
    delete_faces(db, [f for f, _ in faces[:20]])
    rebuilt = settled(indexes)
    assert rebuilt is not first and rebuilt.kind == "quantized" and rebuilt.size == 20
    delete_faces(db, [f for f, _ in faces[20:35]])
    assert indexes.for_account(ACCOUNT).kind == "exact"  # 5 faces: below the threshold again


def test_a_version_without_recorded_changes_rebuilds_the_index(db, vault):
    rng = np.random.default_rng(6)
    indexes = CollectionIndexes(db, vault, sized_index_factory(10))
    faces = enroll(db, vault, 30, rng)
    first = settled(indexes)
    with db.write() as session:  # a change the log does not describe (e.g. pruned history)
        session.execute(delete(FaceRow).where(FaceRow.face_id == faces[0][0]))
        bump_version(session, ACCOUNT)
    rebuilt = settled(indexes)
    assert rebuilt is not first and rebuilt.size == 29
    assert faces[0][0] not in rebuilt.face_ids


def test_changes_made_during_a_background_build_are_applied_when_it_takes_over(db, vault):
    rng = np.random.default_rng(7)
    indexes = CollectionIndexes(db, vault, sized_index_factory(10))
    faces = enroll(db, vault, 30, rng)
    assert indexes.for_account(ACCOUNT).kind == "exact"  # the build has started
    ((new_face, new_vector),) = enroll(db, vault, 1, rng, talent="newcomer")
    delete_faces(db, [faces[0][0]])
    index = settled(indexes)
    assert index.kind == "quantized" and index.size == 30
    assert new_face in index.face_ids and faces[0][0] not in index.face_ids
    assert index.search(new_vector[None, :], 1)[0][0].face_id == new_face
