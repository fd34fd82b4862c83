"""Vault key rotation: shredding that survives backups, crash safety, replicas, idle salts."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mixip.audit.v1 import audit_pb2
from mixip.runtime import migrations
from mixip.runtime.config import ConfigError
from mixip.runtime.db import Database
from mixip.runtime.keys import LocalKeyWrapper, SealError
from mixip.runtime.times import to_timestamp
from mixip.runtime.vault import VaultKeys
from services.audit.app import AuditApp
from services.audit.domain import talent_hash
from services.audit.store import Base, EventRow, SaltActivity, SaltRow, VaultState
from services.audit.vault import SaltVault
from tests.support.disk import backup

ACCOUNT = "acct"


def record(stub, clock, talent: str, key: str) -> None:
    stub.RecordMatchEvents(
        audit_pb2.RecordMatchEventsRequest(
            account_id=ACCOUNT,
            events=[
                audit_pb2.MatchEventInput(
                    idempotency_key=key,
                    project_id="p",
                    media_id=key,
                    label=1,
                    reason=1,
                    similarity=0.9,
                    talent_id=talent,
                    actor="key",
                    occurred_at=to_timestamp(clock()),
                )
            ],
        )
    )


def linked(stub, talent: str) -> int:
    """How many events the audit service links to the talent."""
    reply = stub.ListEvents(audit_pb2.ListEventsRequest(account_id=ACCOUNT, talent_id=talent))
    return len(reply.events)


def link_in_copy(copy: Database, vault: SaltVault, talent: str, kek_candidates) -> bool:
    """Can the talent's events in the copy be linked to it with any of `kek_candidates` (key
    wrappers) or the live vault's own keys? That is: does the copy's sealed salt open, and does
    it give the copy's events' talent hash."""
    lookup = vault.lookup(ACCOUNT, talent)
    with copy.read() as session:
        state = session.get(VaultState, 1)
        blob = session.scalar(select(SaltRow.sealed_secret).where(SaltRow.lookup == lookup))
        hashes = set(session.scalars(select(EventRow.talent_hash)))
    assert blob is not None, "the copy holds the salt (else the test proves nothing)"
    sealing_keys = [vault._keys.sealing]
    for wrapper in kek_candidates:
        try:
            sealing_keys.append(
                wrapper.unwrap(state.wrapped_sealing_key, vault._sealing_context(state.version))
            )
        except SealError:
            continue
    for sealing in sealing_keys:
        try:
            salt = vault._open_secret(VaultKeys(state.version, sealing, b""), blob, lookup)
        except SealError:
            continue
        if talent_hash(salt, talent) in hashes:
            return True
    return False


def key_files(directory: Path) -> list[LocalKeyWrapper]:
    """Every key file the audit service has (all 32-byte files in its key directory)."""
    return [LocalKeyWrapper(path) for path in sorted(directory.iterdir()) if path.is_file()]


def test_a_backup_taken_before_a_shred_no_longer_links_after_a_rotation(
    audit_service, clock, tmp_path, pg_test_database
):
    stub, vault = audit_service.stub, audit_service.app.log.vault
    record(stub, clock, "t-ada", "m1:0")
    record(stub, clock, "t-bob", "m2:0")
    copy = backup(audit_service.app.db, "audit", Base.metadata, tmp_path, pg_test_database)
    stub.ShredTalentSalt(audit_pb2.ShredTalentSaltRequest(account_id=ACCOUNT, talent_id="t-ada"))
    assert linked(stub, "t-ada") == 0  # the live database no longer links
    keys = tmp_path / "keys"
    # ... but the backup still does, with the key material the mesh holds today
    assert link_in_copy(copy, vault, "t-ada", key_files(keys))

    reply = stub.RotateVault(audit_pb2.RotateVaultRequest())
    assert reply.key_version == 2 and reply.vault_entries_resealed == 1

    assert not link_in_copy(copy, vault, "t-ada", key_files(keys))
    assert [path.name for path in keys.iterdir()] == ["audit-kek.v2.key"]
    # the live talent is still linked, and new events about it join the same history
    assert linked(stub, "t-bob") == 1
    record(stub, clock, "t-bob", "m3:0")
    record(stub, clock, "t-cyd", "m4:0")
    assert (linked(stub, "t-bob"), linked(stub, "t-cyd")) == (2, 1)
    assert stub.VerifyLog(audit_pb2.VerifyLogRequest()).ok
    status = stub.GetVaultStatus(audit_pb2.GetVaultStatusRequest())
    assert status.key_version == 2 and status.rotated_at == reply.rotated_at
    copy.dispose()


def test_the_lookup_key_survives_rotations_and_restarts(audit_service, clock, tmp_path):
    stub, vault = audit_service.stub, audit_service.app.log.vault
    record(stub, clock, "t-ada", "m1:0")
    before = vault.lookup(ACCOUNT, "t-ada")
    for _ in range(3):
        stub.RotateVault(audit_pb2.RotateVaultRequest())
    restarted = AuditApp(
        Database(audit_service.app.db.url, Base.metadata),
        LocalKeyWrapper(tmp_path / "keys" / "audit-kek.key"),
        clock,
    )
    assert restarted.log.vault.lookup(ACCOUNT, "t-ada") == before
    assert restarted.log.vault_status().key_version == 4
    with restarted.db.read() as session:
        assert restarted.log.vault.salts(session, ACCOUNT, ["t-ada"], create=False)
    assert [p.name for p in (tmp_path / "keys").iterdir()] == ["audit-kek.v4.key"]
    restarted.close()


class Crash(Exception):
    pass


@pytest.mark.parametrize(
    ("step", "version"), [("kek-created", 1), ("committed", 2), ("destroyed", 2)]
)
def test_a_rotation_stopped_at_any_step_is_finished_or_undone_at_the_next_start(
    audit_service, clock, tmp_path, step, version
):
    record(audit_service.stub, clock, "t-ada", "m1:0")
    url, keys = audit_service.app.db.url, tmp_path / "keys" / "audit-kek.key"

    def crash_at(name: str) -> None:
        if name == step:
            raise Crash(name)

    crashing = AuditApp(Database(url, Base.metadata), LocalKeyWrapper(keys), clock, step=crash_at)
    with pytest.raises(Crash):
        crashing.log.rotate_vault()  # no clean-up runs after a crash: the exception skips it
    crashing.close()
    left = sorted(p.name for p in keys.parent.iterdir())
    if step == "destroyed":  # destroyed, but still recorded as to be destroyed
        assert left == ["audit-kek.v2.key"]
        with audit_service.app.db.read() as session:
            assert session.get(VaultState, 1).retired_kek_ref == "audit-kek.key"
    else:  # an orphan new KEK, or a retired one not yet destroyed
        assert left == ["audit-kek.key", "audit-kek.v2.key"]

    restarted = AuditApp(Database(url, Base.metadata), LocalKeyWrapper(keys), clock)
    with restarted.db.read() as session:
        state = session.get(VaultState, 1)
        assert (state.version, state.retired_kek_ref) == (version, None)
        assert restarted.log.vault.salts(session, ACCOUNT, ["t-ada"], create=False)
    assert [p.name for p in keys.parent.iterdir()] == [state.kek_ref]
    assert restarted.log.rotate_vault().key_version == version + 1
    restarted.close()


def test_a_replica_holding_the_old_key_notices_a_rotation(audit_service, clock, tmp_path):
    stub = audit_service.stub
    record(stub, clock, "t-ada", "m1:0")
    replica = AuditApp(
        Database(audit_service.app.db.url, Base.metadata),
        LocalKeyWrapper(tmp_path / "keys" / "audit-kek.key"),
        clock,
    )
    assert replica.log.vault._keys.version == 1
    stub.RotateVault(audit_pb2.RotateVaultRequest())
    # the replica's next transaction reloads version 2 (version 1's key file is gone)
    with replica.db.read() as session:
        assert replica.log.vault.salts(session, ACCOUNT, ["t-ada"], create=False)
    assert replica.log.vault._keys.version == 2
    from services.audit.service import NewEvent

    replica.log.record(
        ACCOUNT,
        [NewEvent("m2:0", "p", "m2", 0, 1, 1, 0.9, "t-ada", "key", clock())],
    )
    assert linked(stub, "t-ada") == 2
    replica.close()


def test_a_missing_key_file_stops_the_start_with_a_configuration_error(
    audit_service, clock, tmp_path
):
    audit_service.stub.RotateVault(audit_pb2.RotateVaultRequest())
    (tmp_path / "keys" / "audit-kek.v2.key").unlink()
    with pytest.raises(ConfigError, match="cannot open key version 2"):
        AuditApp(
            Database(audit_service.app.db.url, Base.metadata),
            LocalKeyWrapper(tmp_path / "keys" / "audit-kek.key"),
            clock,
        )


def test_a_restored_backup_older_than_a_rotation_does_not_open_and_deletes_no_key(
    audit_service, clock, tmp_path, pg_test_database
):
    """The price of shredding that reaches backups, and the guard that keeps a mistaken
    restore from destroying the live key: nothing is deleted before the vault opens."""
    record(audit_service.stub, clock, "t-ada", "m1:0")
    audit_service.stub.RotateVault(audit_pb2.RotateVaultRequest())
    copy = backup(audit_service.app.db, "audit", Base.metadata, tmp_path, pg_test_database)
    audit_service.stub.RotateVault(audit_pb2.RotateVaultRequest())
    keys = tmp_path / "keys"
    with pytest.raises(ConfigError, match="cannot open key version 2"):
        AuditApp(copy, LocalKeyWrapper(keys / "audit-kek.key"), clock)
    assert "audit-kek.v3.key" in [p.name for p in keys.iterdir()]
    assert linked(audit_service.stub, "t-ada") == 1
    copy.dispose()


def test_a_vault_made_before_rotation_existed_becomes_version_1(database_url, clock, tmp_path):
    """The old layout (one master secret; salts sealed without a version) keeps working, and
    its first rotation removes the master secret."""
    import os

    from mixip.runtime.keys import seal
    from services.audit.store import VaultKey
    from services.audit.vault import _WRAP_CONTEXT, MASTER_KEY_NAME, _derive

    url, kek = database_url("audit"), LocalKeyWrapper(tmp_path / "keys" / "audit-kek.key")
    db = Database(url, Base.metadata)
    migrations.upgrade(url, "audit", migrations.revisions("audit")[0])  # before rotation existed
    master, salt = os.urandom(32), os.urandom(32)
    lookup_key = _derive(master, b"mixip audit: salt lookup")
    lookup = VaultKeys(1, b"", lookup_key)
    row = SaltVault._hmac(lookup, ACCOUNT, "t-ada")
    with db.write() as session:
        session.add(
            VaultKey(
                name=MASTER_KEY_NAME, wrapped=kek.wrap(master, _WRAP_CONTEXT), created_at=clock()
            )
        )
        session.add(
            SaltRow(
                lookup=row,
                account_id=ACCOUNT,
                created_at=clock(),
                sealed_secret=seal(_derive(master, b"mixip audit: salt sealing"), salt, row),
            )
        )
    app = AuditApp(db, kek, clock)
    with app.db.read() as session:
        assert app.log.vault.salts(session, ACCOUNT, ["t-ada"], create=False) == {"t-ada": salt}
    app.log.rotate_vault()
    with app.db.read() as session:
        assert app.log.vault.salts(session, ACCOUNT, ["t-ada"], create=False) == {"t-ada": salt}
        assert session.get(VaultKey, MASTER_KEY_NAME) is None
    app.close()


# -- the retention rule: salts outlive no event -------------------------------------------------


def test_a_salt_is_purged_with_its_talents_last_event(audit_service, clock):
    stub, db = audit_service.stub, audit_service.app.db
    record(stub, clock, "t-ada", "m1:0")
    clock.advance(days=200)
    record(stub, clock, "t-bob", "m2:0")
    clock.advance(days=200)
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(SaltRow)) == 2

    cutoff = clock() - timedelta(days=365)
    reply = stub.PurgeExpired(audit_pb2.PurgeExpiredRequest(cutoff=to_timestamp(cutoff)))
    assert (reply.purged_count, reply.vault_entries_deleted, reply.done) == (1, 1, True)
    vault = audit_service.app.log.vault
    with db.read() as session:
        assert set(vault.salts(session, ACCOUNT, ["t-ada", "t-bob"], create=False)) == {"t-bob"}
        assert session.scalar(select(func.count()).select_from(SaltActivity)) == 1
    assert linked(stub, "t-bob") == 1
    assert stub.VerifyLog(audit_pb2.VerifyLogRequest()).ok


def test_salts_from_before_activity_tracking_wait_for_their_accounts_last_event(
    audit_service, clock
):
    stub, db = audit_service.stub, audit_service.app.log.db
    record(stub, clock, "t-ada", "m1:0")
    with db.write() as session:  # as if recorded before activity was tracked
        session.execute(SaltActivity.__table__.delete())
    clock.advance(days=200)
    record(stub, clock, "t-bob", "m2:0")  # the account's last event: 200 days after ada's
    clock.advance(days=200)
    cutoff = to_timestamp(clock() - timedelta(days=365))
    reply = stub.PurgeExpired(audit_pb2.PurgeExpiredRequest(cutoff=cutoff))
    assert reply.vault_entries_deleted == 0  # ada's last event is unknown: kept, not guessed
    clock.advance(days=200)
    cutoff = to_timestamp(clock() - timedelta(days=365))
    reply = stub.PurgeExpired(audit_pb2.PurgeExpiredRequest(cutoff=cutoff))
    assert reply.vault_entries_deleted == 2
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(SaltRow)) == 0


# -- rotations and writers ----------------------------------------------------------------------


def _blocked_on_a_lock(db: Database) -> bool:
    with db.engine.connect() as connection:
        return bool(
            connection.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).scalar()
        )


@pytest.mark.parametrize("step", ["kek-created", "resealed"])
def test_a_salt_made_while_a_rotation_runs_is_sealed_under_the_new_version(
    audit_service, clock, tmp_path, backend, step
):
    """A rotation paused inside its transaction (before or after re-sealing) while an event
    about a new talent is recorded: the recorder waits for the rotation, so its salt is not
    sealed under the version being retired (whose key file goes right after)."""
    import threading

    from services.audit.service import NewEvent

    stub = audit_service.stub
    record(stub, clock, "t-ada", "m1:0")
    paused, resume = threading.Event(), threading.Event()

    def pause_at(name: str) -> None:
        if name == step:
            paused.set()
            assert resume.wait(60)

    rotating = AuditApp(
        Database(audit_service.app.db.url, Base.metadata),
        LocalKeyWrapper(tmp_path / "keys" / "audit-kek.key"),
        clock,
        step=pause_at,
    )
    rotation = threading.Thread(target=rotating.log.rotate_vault)
    rotation.start()
    assert paused.wait(60)
    recorder_done = threading.Event()

    def record_new_talent() -> None:
        audit_service.app.log.record(
            ACCOUNT, [NewEvent("m2:0", "p", "m2", 0, 1, 1, 0.9, "t-new", "key", clock())]
        )
        recorder_done.set()

    recorder = threading.Thread(target=record_new_talent)
    recorder.start()
    try:
        if backend == "postgresql":  # observably waiting for the rotation's lock, not done
            for _ in range(600):
                if _blocked_on_a_lock(audit_service.app.db) or recorder_done.is_set():
                    break
                threading.Event().wait(0.05)
            assert not recorder_done.is_set() and _blocked_on_a_lock(audit_service.app.db)
    finally:
        resume.set()
    rotation.join(60)
    recorder.join(60)
    assert recorder_done.is_set()
    assert rotating.log.vault_status().key_version == 2
    assert (linked(stub, "t-ada"), linked(stub, "t-new")) == (1, 1)
    with audit_service.app.db.read() as session:
        blobs = list(session.scalars(select(SaltRow.sealed_secret)))
    assert [int.from_bytes(blob[:4], "big") for blob in blobs] == [2, 2]
    rotating.close()
