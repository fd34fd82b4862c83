"""Talent ids sealed under per-talent keys (issue 17, finding #1): after EraseTalentConsent no
byte of the consent database's files names the talent, a copy taken before the erasure opens
nothing once the vault has rotated, and rows written in clear before sealing are sealed when
the service starts."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from sqlalchemy import MetaData, insert, select

from mixip.consent.v1 import consent_pb2 as pb
from mixip.consent.v1 import consent_pb2_grpc
from mixip.runtime import migrations
from mixip.runtime.client import open_channel
from mixip.runtime.config import ConfigError
from mixip.runtime.db import Database
from mixip.runtime.keys import LocalKeyRing
from mixip.runtime.vault import Vault
from services.consent import service as service_module
from services.consent.app import MATCHER_SERVICE, SERVICE_NAME, ConsentApp
from services.consent.store import (
    AccountVersionRow,
    Base,
    OutboxRow,
    RecordRow,
    TalentKeyRow,
    VaultStateRow,
    record_context,
)
from tests.integration.consent.test_consent_service import (
    ACCOUNT,
    BIO,
    GRANT,
    REVOKE,
    USAGE,
    consent,
    state,
)
from tests.support.disk import backup, database_bytes, found_in, keys_in_copy

# The revision before talent ids were sealed.
BEFORE_SEALING = "b0620074e9b9"
# The serial columns a restored copy goes on numbering after its rows.
SERIALS = (("consent_records", "sequence"), ("consent_outbox", "id"))


def unique_talent() -> str:
    """A talent id no file holds by accident."""
    return f"talent-{secrets.token_hex(8)}"


def listed(stub, talent: str = "") -> list[str]:
    reply = stub.ListConsentRecords(
        pb.ListConsentRecordsRequest(account_id=ACCOUNT, talent_id=talent, page_size=1000)
    )
    return [record.talent_id for record in reply.records]


def app_keys(app: ConsentApp, session, talents: list[str]) -> set[str]:
    """Which of these talents have a data key in the live vault."""
    return set(app.vault.talent_keys(session, ACCOUNT, talents, create=False))


def test_an_erased_talent_leaves_no_byte_in_the_consent_database_files(
    consent_service, clock, backend
):
    stub, db = consent_service.stub, consent_service.app.db
    talent, other = unique_talent(), unique_talent()
    marker = f"req-{secrets.token_hex(8)}"  # stored in clear: shows the scan sees the rows
    consent(stub, clock, talent, BIO, GRANT, request_id=marker)
    consent(stub, clock, talent, USAGE, GRANT, project="film-1")
    consent(stub, clock, talent, BIO, REVOKE)  # an outbox row
    consent(stub, clock, other, BIO, GRANT)
    with db.read() as session:
        sealed = [*session.scalars(select(RecordRow.sealed_talent_id))]
        sealed += session.scalars(select(OutboxRow.sealed_talent_id)).all()
        sealed += session.scalars(select(TalentKeyRow.sealed_secret)).all()
    before = database_bytes(db)
    assert found_in(before, marker) and all(found_in(before, blob) for blob in sealed)
    assert found_in(before, talent) == []  # never stored in clear in the first place

    reply = stub.EraseTalentConsent(
        pb.EraseTalentConsentRequest(account_id=ACCOUNT, talent_id=talent)
    )
    assert (reply.records_deleted, reply.outbox_rows_deleted) == (3, 1)

    after = database_bytes(db)
    assert found_in(after, talent) == []
    if backend == "sqlite":  # secure_delete zeroes what the rows held, and the WAL is emptied
        assert found_in(after, marker) == []  # the rows left the files, not just the tables
        erased = [blob for blob in sealed if not found_in(after, blob)]
        assert len(erased) == 5  # the talent's 3 records, its outbox row and its key
    # (PostgreSQL's VACUUM frees the dead tuples without zeroing them: their bytes may stay in
    # free space until overwritten, sealed under a key that no longer exists.)
    with db.read() as session:
        assert app_keys(consent_service.app, session, [talent, other]) == {other}
    assert listed(stub) == [other]


# -- copies taken before an erasure -------------------------------------------------------------


def opened_in_copy(copy: Database, vault: Vault, key_dir: Path) -> set[str]:
    """The talent ids the copy's records open to, with the live vault's keys or any key file
    of the key directory (tests/support/disk.py)."""
    keys = keys_in_copy(copy, vault, VaultStateRow, TalentKeyRow, key_dir)
    with copy.read() as session:
        rows = session.execute(
            select(RecordRow.record_id, RecordRow.talent_ref, RecordRow.sealed_talent_id)
        ).all()
    assert rows, "the copy holds records (else the test proves nothing)"
    return {
        keys[ref].open_text(blob, record_context(record_id))
        for record_id, ref, blob in rows
        if ref in keys
    }


def test_a_copy_taken_before_an_erasure_opens_nothing_once_the_vault_rotated(
    consent_service, matcher_double, clock, tmp_path, pg_test_database, serve, channels
):
    stub, app = consent_service.stub, consent_service.app
    talent, other = unique_talent(), unique_talent()
    consent(stub, clock, talent, BIO, GRANT)
    consent(stub, clock, talent, BIO, REVOKE)  # its face deletion waits in the outbox
    consent(stub, clock, other, BIO, GRANT)
    copy = backup(app.db, "consent", Base.metadata, tmp_path, pg_test_database, sequences=SERIALS)
    stub.EraseTalentConsent(pb.EraseTalentConsentRequest(account_id=ACCOUNT, talent_id=talent))
    assert state(stub, talent, BIO) == pb.CONSENT_STATE_ABSENT
    keys = tmp_path / "keys"
    # ... but the copy still opens with the key material the mesh holds today
    assert talent in opened_in_copy(copy, app.vault, keys)

    # The erasure owes a rotation within 24 hours, which the vault's keeper makes.
    assert not app.vault.rotation_due()
    clock.advance(hours=24)
    rotation = app.vault.rotate_if_due()
    assert rotation is not None and rotation.key_version == 2
    assert opened_in_copy(copy, app.vault, keys) == set()
    assert [path.name for path in keys.iterdir()] == ["consent-vault.v2.key"]
    assert state(stub, other, BIO) == pb.CONSENT_STATE_ACTIVE  # the live ledger is whole

    # Restored into a fresh mesh, the copy's vault does not open: the service refuses to start
    # and deletes no key file; told to start anyway, it starts a new vault, and whatever the
    # copy holds about anyone reads as absent (the outbox row is dropped, not delivered).
    matcher = open_channel(matcher_double.address, [MATCHER_SERVICE], timeout_seconds=2)
    with pytest.raises(ConfigError, match="cannot open key version 1"):
        ConsentApp(copy, matcher, LocalKeyRing(keys / "consent-vault.key"), clock, dispatch=False)
    assert [path.name for path in keys.iterdir()] == ["consent-vault.v2.key"]
    fresh_keys = LocalKeyRing(tmp_path / "restored-keys" / "consent-vault.key")
    with copy.read() as session:
        versions = dict(
            session.execute(select(AccountVersionRow.account_id, AccountVersionRow.version)).all()
        )
    restored = ConsentApp(copy, matcher, fresh_keys, clock, dispatch=False, reset_unreadable=True)
    with copy.read() as session:  # a matcher's answers cached under the old versions are stale
        renewed = dict(
            session.execute(select(AccountVersionRow.account_id, AccountVersionRow.version)).all()
        )
    assert versions and versions.keys() == renewed.keys()
    assert not set(versions.values()) & set(renewed.values())
    running = serve(restored)
    restored_stub = consent_pb2_grpc.ConsentServiceStub(
        channels(f"127.0.0.1:{running.port}", SERVICE_NAME)
    )
    with copy.read() as session:
        assert len(session.scalars(select(RecordRow)).all()) == 3  # still there, unreadable
    assert state(restored_stub, talent, BIO) == pb.CONSENT_STATE_ABSENT
    assert state(restored_stub, other, BIO) == pb.CONSENT_STATE_ABSENT
    assert listed(restored_stub) == [] and listed(restored_stub, talent) == []
    assert restored.outbox.pending() == 1
    assert restored.outbox.run_once() == 0 and restored.outbox.pending() == 0
    assert matcher_double.deletions == []
    # a consent recorded now starts the talent's new life under a new key
    consent(restored_stub, clock, talent, BIO, GRANT)
    assert listed(restored_stub) == [talent]
    assert state(restored_stub, talent, BIO) == pb.CONSENT_STATE_ACTIVE


def test_a_consent_recorded_after_an_erasure_gets_a_new_key(consent_service, clock):
    stub, app = consent_service.stub, consent_service.app
    talent = unique_talent()
    consent(stub, clock, talent, BIO, GRANT)
    with app.db.read() as session:
        first = session.scalars(select(TalentKeyRow.sealed_secret)).one()
        first_ref = app.vault.ref(session, ACCOUNT, talent)
    stub.EraseTalentConsent(pb.EraseTalentConsentRequest(account_id=ACCOUNT, talent_id=talent))
    with app.db.read() as session:
        assert session.scalars(select(TalentKeyRow)).all() == []
    consent(stub, clock, talent, BIO, GRANT)
    with app.db.read() as session:
        again = session.scalars(select(TalentKeyRow.sealed_secret)).one()
        [key] = app.vault.talent_keys(session, ACCOUNT, [talent], create=False).values()
    assert again != first
    assert key.ref != first_ref  # nothing links the rows of the two lives
    assert listed(stub, talent) == [talent] and state(stub, talent, BIO) == pb.CONSENT_STATE_ACTIVE


# -- upgrading a database that holds talent ids in clear ----------------------------------------


def test_clear_talent_ids_are_sealed_when_the_service_starts_and_still_work(
    consent_factory, matcher_double, clock, backend, monkeypatch
):
    monkeypatch.setattr(service_module, "_LEGACY_BATCH", 2)  # the records take two batches
    talent, revoked = unique_talent(), unique_talent()
    url = consent_factory.url
    migrations.upgrade(url, "consent", BEFORE_SEALING)
    old = Database(url, MetaData())
    tables = MetaData()
    with old.engine.connect() as connection:
        tables.reflect(connection, only=["consent_records", "consent_outbox"])
    now = clock()
    record = {"method": "signed-release", "policy_version": "2026-10", "actor": "staff-7"}
    record |= {"account_id": ACCOUNT, "captured_at": now, "recorded_at": now}
    with old.write() as session:
        session.execute(
            insert(tables.tables["consent_records"]),
            [
                record
                | {"record_id": "r1", "talent_id": talent, "scope": BIO}
                | {"project_id": "", "decision": GRANT, "request_id": "req-1"},
                record
                | {"record_id": "r2", "talent_id": talent, "scope": USAGE}
                | {"project_id": "film-1", "decision": GRANT, "request_id": None},
                record
                | {"record_id": "r3", "talent_id": revoked, "scope": BIO}
                | {"project_id": "", "decision": REVOKE, "request_id": None},
            ],
        )
        session.execute(
            insert(tables.tables["consent_outbox"]).values(
                outbox_id="o1",
                account_id=ACCOUNT,
                talent_id=revoked,
                created_at=now,
                attempts=0,
                next_attempt_at=now,
            )
        )
    old.dispose()

    service = consent_factory(matcher_double.address)  # upgrades, then seals, then serves
    stub, db = service.stub, service.app.db
    with db.read() as session:
        for model in (RecordRow, OutboxRow):
            rows = session.scalars(select(model)).all()
            assert rows and all(r.legacy_talent_id is None and r.talent_ref for r in rows)
    if backend == "sqlite":
        assert found_in(database_bytes(db), talent) == []  # scrubbed out of the files too

    assert state(stub, talent, BIO) == pb.CONSENT_STATE_ACTIVE
    assert state(stub, talent, USAGE, "film-1") == pb.CONSENT_STATE_ACTIVE
    assert state(stub, revoked, BIO) == pb.CONSENT_STATE_REVOKED
    assert listed(stub, talent) == [talent, talent]
    assert sorted(listed(stub)) == sorted([talent, talent, revoked])
    again = consent(stub, clock, talent, BIO, GRANT, request_id="req-1")
    assert again.replayed and again.record.record_id == "r1"
    assert service.app.outbox.run_once() == 1
    assert [(a, t) for a, t, _ in matcher_double.deletions] == [(ACCOUNT, revoked)]
    erased = stub.EraseTalentConsent(
        pb.EraseTalentConsentRequest(account_id=ACCOUNT, talent_id=talent)
    )
    assert erased.records_deleted == 2 and listed(stub) == [revoked]
    # a restart finds nothing left to seal
    assert service.app.ledger.seal_legacy() == 0
