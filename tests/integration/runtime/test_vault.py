"""The runtime vault every service seals talent data with: data keys bound to their rows, a
destruction that owes a rotation, and a rotation that puts copies taken before it out of reach."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import insert, select
from sqlalchemy.orm import DeclarativeBase

from mixip.runtime.config import ConfigError
from mixip.runtime.db import Database
from mixip.runtime.keys import LocalKeyRing, SealError
from mixip.runtime.vault import TalentKeyColumns, Vault, VaultStateColumns


class Base(DeclarativeBase):
    pass


class StateRow(VaultStateColumns, Base):
    __tablename__ = "probe_vault_state"


class KeyRow(TalentKeyColumns, Base):
    __tablename__ = "probe_talent_keys"


ACCOUNT = "acct_probe"


def open_vault(url: str, keys, clock, **options) -> Vault:
    db = Database(url, Base.metadata)
    db.create_tables()
    return Vault(
        db,
        LocalKeyRing(keys / "probe-vault.key"),
        clock,
        name="probe",
        state_model=StateRow,
        secret_model=KeyRow,
        **options,
    )


@pytest.fixture
def vault(database_url, tmp_path, clock):
    vault = open_vault(database_url("probe"), tmp_path / "keys", clock)
    yield vault
    vault.db.dispose()


def test_a_sealed_field_opens_only_with_its_talents_key_and_in_its_own_row(vault):
    with vault.db.write() as session:
        keys = vault.talent_keys(session, ACCOUNT, ["talent-a", "talent-b"], create=True)
    blob = keys["talent-a"].seal_text("talent-a", b"faces/1")
    assert b"talent-a" not in blob
    assert keys["talent-a"].open_text(blob, b"faces/1") == "talent-a"
    with pytest.raises(SealError):
        keys["talent-a"].open(blob, b"faces/2")  # moved to another row
    with pytest.raises(SealError):
        keys["talent-b"].open(blob, b"faces/1")  # another talent's key
    with vault.db.read() as session:
        assert vault.ref(session, ACCOUNT, "talent-a") == keys["talent-a"].ref
        assert vault.keys_by_ref(session, [keys["talent-b"].ref]) == {
            keys["talent-b"].ref: keys["talent-b"]
        }


def test_a_destroyed_key_is_gone_owes_a_rotation_and_a_new_life_gets_another(vault, clock):
    with vault.db.write() as session:
        first = vault.talent_keys(session, ACCOUNT, ["talent-a"], create=True)["talent-a"]
    assert vault.status().rotation_due_at is None
    with vault.db.write() as session:
        assert vault.destroy(session, ACCOUNT, "talent-a")
    assert vault.status().rotation_due_at == clock() + timedelta(hours=24)
    with vault.db.read() as session:
        assert vault.talent_keys(session, ACCOUNT, ["talent-a"], create=False) == {}
        assert vault.account_keys(session, ACCOUNT) == {}
    with vault.db.write() as session:
        again = vault.talent_keys(session, ACCOUNT, ["talent-a"], create=True)["talent-a"]
    # a new life: rows of the first cannot be told apart from anyone else's by their ref
    assert again.ref != first.ref and again.key != first.key


def test_a_rotation_happens_once_when_due_and_not_before(vault, clock):
    with vault.db.write() as session:
        vault.talent_keys(session, ACCOUNT, ["talent-a", "talent-b"], create=True)
        vault.destroy(session, ACCOUNT, "talent-a")
    assert vault.rotate_if_due() is None
    clock.advance(hours=24)
    rotation = vault.rotate_if_due()
    assert rotation is not None and rotation.key_version == 2 and rotation.secrets_resealed == 1
    assert vault.rotate_if_due() is None  # another replica noticing the same due time
    assert vault.status().rotation_due_at is None


def test_a_copy_taken_before_the_destruction_stops_opening_after_the_rotation(
    database_url, tmp_path, clock
):
    keys = tmp_path / "keys"
    live = open_vault(database_url("probe"), keys, clock)
    with live.db.write() as session:
        key = live.talent_keys(session, ACCOUNT, ["talent-a"], create=True)["talent-a"]
    sealed = key.seal_text("talent-a", b"row")
    copy_url = database_url("copy")
    copy = open_vault(copy_url, keys, clock)  # the backup, with the same key directory
    with live.db.read() as source, copy.db.write() as target:
        for table in (StateRow.__table__, KeyRow.__table__):
            target.execute(table.delete())
            target.execute(
                insert(table), [dict(r) for r in source.execute(select(table)).mappings()]
            )
    with live.db.write() as session:
        live.destroy(session, ACCOUNT, "talent-a")
    # before the rotation the copy still opens: the window the rotation closes
    assert reopen(copy_url, keys, clock, sealed) == "talent-a"
    live.rotate()
    with pytest.raises(ConfigError, match="cannot open key version 1"):
        reopen(copy_url, keys, clock, sealed)
    assert sorted(p.name for p in keys.iterdir()) == ["probe-vault.v2.key"]
    live.db.dispose()
    copy.db.dispose()
    # an operator who restores it anyway gets a vault without what the copy sealed
    restored = open_vault(copy_url, tmp_path / "restore-keys", clock, reset_unreadable=True)
    with restored.db.read() as session:
        assert restored.talent_keys(session, ACCOUNT, ["talent-a"], create=False) == {}
        assert restored.account_keys(session, ACCOUNT) == {}
    assert restored.status().key_version == 2
    restored.db.dispose()


def test_after_the_rotation_even_the_live_keys_link_no_old_row_to_a_talent(vault):
    """A copy taken before an erasure keeps the erased talent's secret row and rows carrying
    its ref. The rotation gives every secret a new lookup (a new lookup key): the old lookup
    is under a destroyed KEK, and a row's ref comes from the destroyed secret, so someone with
    the copy and the live keys cannot test a talent id against either."""
    with vault.db.write() as session:
        keys = vault.talent_keys(session, ACCOUNT, ["talent-a", "talent-b"], create=True)
    with vault.db.read() as session:
        copy = {tuple(r) for r in session.execute(select(KeyRow.lookup, KeyRow.row_ref))}
    with vault.db.write() as session:
        vault.destroy(session, ACCOUNT, "talent-a")
    assert vault.rotate().secrets_resealed == 1
    with vault.db.read() as session:
        live = {vault.talent_lookup(session, ACCOUNT, t) for t in ("talent-a", "talent-b")}
        assert not live & {lookup for lookup, _ in copy}
        # the live talent is found again by id, and its rows keep their ref
        again = vault.talent_keys(session, ACCOUNT, ["talent-b"], create=False)["talent-b"]
        assert again == keys["talent-b"]
        assert vault.ref(session, ACCOUNT, "talent-a") is None


def reopen(url, keys, clock, sealed: bytes) -> str:
    vault = open_vault(url, keys, clock)
    try:
        with vault.db.read() as session:
            key = vault.talent_keys(session, ACCOUNT, ["talent-a"], create=False)["talent-a"]
        return key.open_text(sealed, b"row")
    finally:
        vault.db.dispose()


def test_the_keeper_rotates_a_vault_whose_rotation_is_owed(database_url, tmp_path, clock):
    vault = open_vault(database_url("probe"), tmp_path / "keys", clock, rotate_within=timedelta(0))
    with vault.db.write() as session:
        vault.talent_keys(session, ACCOUNT, ["talent-a"], create=True)
        vault.destroy(session, ACCOUNT, "talent-a")
    keeper = vault.keep_rotating(0.05)
    try:
        deadline = time.monotonic() + 10
        while vault.status().key_version == 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        keeper.stop()
    assert vault.status().key_version == 2 and vault.status().rotation_due_at is None
    vault.db.dispose()


class FailingOnce(LocalKeyRing):
    """A key ring whose first destruction fails (KMS unreachable after the commit)."""

    failed = False

    def destroy(self, ref: str) -> None:
        if not self.failed:
            self.failed = True
            raise SealError("KMS unreachable")
        super().destroy(ref)


def test_a_kek_left_alive_by_a_failed_destruction_goes_at_the_next_check(
    database_url, tmp_path, clock
):
    keys = tmp_path / "keys"
    db = Database(database_url("probe"), Base.metadata)
    db.create_tables()
    vault = Vault(
        db,
        FailingOnce(keys / "probe-vault.key"),
        clock,
        name="probe",
        state_model=StateRow,
        secret_model=KeyRow,
        rotate_within=timedelta(0),
    )
    with vault.db.write() as session:
        vault.talent_keys(session, ACCOUNT, ["talent-a"], create=True)
        vault.destroy(session, ACCOUNT, "talent-a")
    with pytest.raises(SealError):
        vault.rotate_if_due()  # committed, but the old KEK is still there
    assert sorted(p.name for p in keys.iterdir()) == ["probe-vault.key", "probe-vault.v2.key"]
    assert vault.rotate_if_due() is None  # nothing owed any more, and yet:
    assert sorted(p.name for p in keys.iterdir()) == ["probe-vault.v2.key"]
    db.dispose()


def test_a_key_that_exists_and_does_not_fit_is_refused_even_when_told_to_reset(
    database_url, tmp_path, clock
):
    """MIXIP_VAULT_RESET_UNREADABLE is for a KEK that is gone (a backup older than a rotation);
    a wrong key directory holds a key of the same name that does not fit: starting would drop
    every secret and sweep that directory's keys, so it is refused instead."""
    url = database_url("probe")
    open_vault(url, tmp_path / "keys", clock).db.dispose()
    wrong = tmp_path / "other-mesh-keys"
    open_vault(database_url("other"), wrong, clock).db.dispose()  # its own probe-vault.key
    before = sorted((p.name, p.read_bytes()) for p in wrong.iterdir())
    with pytest.raises(ConfigError, match="does not open with"):
        open_vault(url, wrong, clock, reset_unreadable=True)
    assert sorted((p.name, p.read_bytes()) for p in wrong.iterdir()) == before
