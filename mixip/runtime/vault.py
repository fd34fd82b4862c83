"""A vault of per-talent secrets, sealed at rest under keys that rotate and are destroyed.

Every service that stores something naming or describing a talent keeps it sealed under that
talent's own secret, and finds it by a keyed hash of (account, talent): the audit service's
salts, the matcher's face vectors, the consent ledger's talent ids, the gateway's results and
notes. Destroying the talent's secret (erasure) makes every sealed copy unreadable, in the
database and in its WAL, free pages, dead tuples, archives and replicas; destroying the
key-encryption key (KEK) that wrapped the secret, at the next rotation, does the same for copies
of the vault itself (backups taken before the erasure). See docs/vault.md and docs/erasure.md.

Two keys per key version, unwrapped from the vault's state row by the KEK it names:
- the lookup key: HMAC(lookup key, account, talent) is a secret's primary key, how the vault
  finds a talent's secret from the talent id;
- the sealing key: each secret is sealed under it (AES-256-GCM), with the talent id beside it.

Tables keyed by talent store the talent's row ref instead of the talent id: an HMAC under the
talent's own secret (`TalentKey.ref`), which the secret's row also holds (`row_ref`, to open
rows found by ref). A new life of the same talent (enrolled again after an erasure) gets a new
secret, hence a new ref: nothing links the two.

Rotation (`rotate`) makes key version N+1 under a brand new KEK (a new key file, or a new KMS
key) with a new sealing key and a new lookup key, re-seals every live secret under it (re-keying
its lookup from the talent id sealed beside it), commits, and then destroys the KEK of version
N. A destroyed secret survives in old copies only sealed under version N and found by a lookup
under version N's lookup key, both wrapped under the destroyed KEK: after one rotation, no copy
opens it, and nobody, even with the live keys, can tell which talent an old copy's rows were
about. `destroy` asks for that rotation within `rotate_within` (`rotation_due`).

Every transaction that uses secrets reads the state row (locked against rotations on
PostgreSQL; SQLite write transactions are serial), so a replica that still holds version N
notices version N+1 at its next transaction and reloads. Secrets themselves are never cached:
a destruction takes effect on every replica at once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Integer, LargeBinary, String, bindparam, delete, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from mixip.runtime import logs
from mixip.runtime.config import ConfigError, Env, ServerConfig
from mixip.runtime.db import Database, UtcDateTime, insert_ignoring_conflicts, rowcount
from mixip.runtime.errors import Unavailable
from mixip.runtime.keys import (
    KeyGone,
    KeyRing,
    KmsKeyRing,
    LocalKeyRing,
    SealError,
    open_sealed,
    seal,
)
from mixip.runtime.times import Clock
from mixip.runtime.worker import Worker

_VERSION_BYTES = 4
_STATE_ID = 1
_RESEAL_BATCH = 1000
_SECRET_BYTES = 32
logger = logging.getLogger("mixip.vault")

# Read for every service NAME with a vault as MIXIP_<NAME>_VAULT_<SETTING> (VaultSettings).
VAULT_SETTINGS = ("KEK_FILE", "KMS_KEY_ID", "KMS_DELETION_DAYS")

Step = Callable[[str], None]
"""Called at each step boundary of a rotation ("kek-created", "resealed" (just before the
commit), "committed", "destroyed"): tests stop a rotation there, as a crash would."""


class VaultStateColumns:
    """The vault's one row (id 1), as a mixin for each service's own table: its current key
    version, the KEK that wraps it (a key file name or a KMS key ARN, never key material) and,
    wrapped under that KEK, the sealing key of this version and the lookup key (the same in
    every version). `retired_kek_ref` names the KEK of the previous version until it has been
    destroyed; `rotation_due_at` is when a rotation is owed (a secret was destroyed)."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    kek_ref: Mapped[str] = mapped_column(String(2048))
    wrapped_sealing_key: Mapped[bytes] = mapped_column(LargeBinary(2048))
    wrapped_lookup_key: Mapped[bytes] = mapped_column(LargeBinary(2048))
    rotated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    retired_kek_ref: Mapped[str | None] = mapped_column(String(2048))
    rotation_due_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class VaultSecretColumns:
    """One talent's secret (and its talent id), sealed under the vault's sealing key, keyed by
    the lookup HMAC of (account, talent): the vault holds no talent id in clear either.
    Deleting the row destroys it."""

    lookup: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    sealed_secret: Mapped[bytes] = mapped_column(LargeBinary(512))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class TalentKeyColumns(VaultSecretColumns):
    """A data key's row: a secret plus the ref its talent's rows carry (`TalentKey.ref`), by
    which `keys_by_ref` finds the key that opens them."""

    row_ref: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)


@dataclass(frozen=True)
class VaultKeys:
    version: int
    sealing: bytes
    lookup: bytes


@dataclass(frozen=True)
class VaultStatus:
    key_version: int
    rotated_at: datetime  # when this key version was made (first start, or its rotation)
    rotation_due_at: datetime | None = None


@dataclass(frozen=True)
class Rotation:
    key_version: int
    rotated_at: datetime
    secrets_resealed: int


class VaultRotated(Unavailable):
    """This transaction's snapshot predates a rotation whose old KEK is gone: retry."""

    default_reason = "VAULT_ROTATED"


@dataclass(frozen=True)
class TalentKey:
    """One talent's data key: seals and opens the fields that name or describe the talent.
    `context` binds a ciphertext to where it is stored (table, row), so a sealed field cannot
    be moved to another row."""

    key: bytes

    @property
    def ref(self) -> bytes:
        """What the talent's rows store instead of the talent id (an HMAC under this key)."""
        return row_ref(self.key)

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        return seal(self.key, plaintext, self.ref + context)

    def open(self, blob: bytes, context: bytes) -> bytes:
        return open_sealed(self.key, blob, self.ref + context)

    def seal_text(self, text: str, context: bytes) -> bytes:
        return self.seal(text.encode(), context)

    def open_text(self, blob: bytes, context: bytes) -> str:
        return self.open(blob, context).decode()

    def digest(self, purpose: str, *parts: bytes) -> bytes:
        """A keyed digest of `parts` under this key (for a row's idempotency check when the
        request names or shows the talent): nobody can recompute it, or test a guess against
        an old copy, once the key is destroyed."""
        mac = hmac.new(self.key, purpose.encode(), hashlib.sha256)
        for part in parts:
            mac.update(len(part).to_bytes(8, "big") + part)
        return mac.digest()


def row_ref(secret: bytes) -> bytes:
    return hmac.new(secret, b"mixip/vault/row-ref", hashlib.sha256).digest()


class Vault:
    """Per-talent secrets of one service (`name`: "audit", "matcher", ...), in its own two
    tables (models made from the mixins above). Subclasses may adopt an older layout by
    overriding `_first_keys` and `_open_secret`, and keep their lookups across rotations
    (`rekeys_lookups = False`: the audit vault, whose salts predate sealed talent ids)."""

    rekeys_lookups = True

    def __init__(
        self,
        db: Database,
        ring: KeyRing,
        clock: Clock,
        *,
        name: str,
        state_model: Any,
        secret_model: Any,
        rotate_within: timedelta = timedelta(hours=24),
        reset_unreadable: bool = False,
        step: Step | None = None,
    ) -> None:
        """`reset_unreadable`: when the database names a KEK that no longer exists (a backup
        restored from before a rotation), start a new vault and drop every secret instead of
        refusing to start: nothing sealed in that copy can be read any more either way."""
        self.db = db
        self.ring = ring
        self.clock = clock
        self.name = name
        self.state_model = state_model
        self.secret_model = secret_model
        self.rotate_within = rotate_within
        self._step = step or (lambda name: None)
        self._stores_row_refs = "row_ref" in secret_model.__table__.c
        self._reset_unreadable = reset_unreadable
        self.reset_at_start = False  # set by `_reset`: this start dropped every secret
        self._keys = self._start()

    # -- contexts -----------------------------------------------------------------------------

    def _sealing_context(self, version: int) -> bytes:
        return f"mixip/{self.name}/vault/sealing-v{version}".encode()

    def _lookup_context(self) -> bytes:
        return f"mixip/{self.name}/vault/lookup".encode()

    # -- start-up -----------------------------------------------------------------------------

    def _start(self) -> VaultKeys:
        """Makes the state row on the very first start (race-safe), finishes a rotation that
        stopped after its commit (destroys the retired KEK), removes KEKs of rotations that
        stopped before theirs, and unwraps the current keys."""
        with self.db.write() as session:
            state = self._locked_state(session, exclusive=True)
            if state is None:
                insert_ignoring_conflicts(
                    session, self.state_model.__table__, [self._first_state(session)], ["id"]
                )
                state = self._state(session, exclusive=True)
            try:
                keys = self._unwrap(state)
            except KeyGone as exc:
                if not self._reset_unreadable:
                    raise ConfigError(
                        f"{self.name} vault: cannot open key version {state.version} with"
                        f" {self.ring.description} ({exc}); is this the key directory the"
                        " vault was made with? A backup restored from before a rotation can no"
                        " longer be read: set MIXIP_VAULT_RESET_UNREADABLE=true to start anyway"
                        " without what it sealed (docs/operations.md)"
                    ) from exc
                keys = self._reset(session, state)
            except SealError as exc:  # the key is there and does not fit: never reset
                raise ConfigError(
                    f"{self.name} vault: key version {state.version} does not open with"
                    f" {self.ring.description} ({exc}); is this the key directory (or KMS key)"
                    " the vault was made with?"
                ) from exc
            # only once this ring is proven to hold the current KEK may it delete the others
            self._finish_retirement(session, state)
            swept = self.ring.sweep(keep=state.kek_ref)
        if swept:
            logs.log(logger, "stale vault keys removed", vault=self.name, count=len(swept))
        return keys

    def _reset(self, session: Session, state: Any) -> VaultKeys:
        """A new key version under a new KEK, and no secret: those stored were sealed under a
        key that is gone. Every other KEK of this ring goes too (they belong to no database
        this directory serves any more)."""
        self.ring.sweep(keep="")
        version = state.version + 1
        ref = self.ring.create(version)
        wrapper = self.ring.open(ref)
        keys = VaultKeys(version, os.urandom(32), os.urandom(32))
        dropped = rowcount(session.execute(delete(self.secret_model)))
        self.reset_at_start = True
        state.version, state.kek_ref, state.rotated_at = version, ref, self.clock()
        state.wrapped_sealing_key = wrapper.wrap(keys.sealing, self._sealing_context(version))
        state.wrapped_lookup_key = wrapper.wrap(keys.lookup, self._lookup_context())
        state.retired_kek_ref, state.rotation_due_at = None, None
        self._rotated(session)
        session.flush()
        logs.log(logger, "vault reset", vault=self.name, key_version=version, dropped=dropped)
        return keys

    def _first_keys(self, session: Session, ref: str) -> tuple[bytes, bytes]:
        """(sealing key, lookup key) of version 1: fresh random keys."""
        return os.urandom(32), os.urandom(32)

    def _first_state(self, session: Session) -> dict[str, Any]:
        ref = self.ring.initial_ref()
        wrapper = self.ring.open(ref)
        sealing, lookup = self._first_keys(session, ref)
        return {
            "id": _STATE_ID,
            "version": 1,
            "kek_ref": ref,
            "wrapped_sealing_key": wrapper.wrap(sealing, self._sealing_context(1)),
            "wrapped_lookup_key": wrapper.wrap(lookup, self._lookup_context()),
            "rotated_at": self.clock(),
            "retired_kek_ref": None,
            "rotation_due_at": None,
        }

    def _finish_retirement(self, session: Session, state: Any) -> None:
        if state.retired_kek_ref:
            self.ring.destroy(state.retired_kek_ref)
            state.retired_kek_ref = None
            session.flush()

    # -- the state row, per transaction -------------------------------------------------------

    def _locked_state(self, session: Session, *, exclusive: bool) -> Any:
        """The state row, locked for this transaction on PostgreSQL: shared by every user of
        secrets (FOR KEY SHARE: they never wait for each other), exclusive for rotations and
        purges (FOR UPDATE)."""
        query = select(self.state_model).where(self.state_model.id == _STATE_ID)
        if exclusive:
            query = query.with_for_update()
        else:
            query = query.with_for_update(read=True, key_share=True)
        return session.scalars(query).one_or_none()

    def _state(self, session: Session, *, exclusive: bool) -> Any:
        """The locked state row, which exists once the vault is open."""
        state = self._locked_state(session, exclusive=exclusive)
        assert state is not None  # made at start, never deleted
        return state

    def current(self, session: Session) -> VaultKeys:
        """The keys of the key version this transaction sees, reloaded when another replica
        rotated since this one last looked."""
        state = self._state(session, exclusive=False)
        cached = self._keys
        if state.version == cached.version:
            return cached
        try:
            keys = self._unwrap(state)
        except SealError as exc:  # an old snapshot whose KEK was destroyed meanwhile
            raise VaultRotated("the vault key was rotated during this call; retry") from exc
        if keys.version > cached.version:
            self._keys = keys
            logs.log(logger, "vault key reloaded", vault=self.name, key_version=keys.version)
        return keys

    def _unwrap(self, state: Any) -> VaultKeys:
        wrapper = self.ring.open(state.kek_ref)
        return VaultKeys(
            state.version,
            wrapper.unwrap(state.wrapped_sealing_key, self._sealing_context(state.version)),
            wrapper.unwrap(state.wrapped_lookup_key, self._lookup_context()),
        )

    # -- secrets ------------------------------------------------------------------------------

    @staticmethod
    def _hmac(keys: VaultKeys, account_id: str, talent_id: str) -> bytes:
        message = f"{account_id}\x00{talent_id}".encode()
        return hmac.new(keys.lookup, message, hashlib.sha256).digest()

    def _seal_secret(self, keys: VaultKeys, secret: bytes, lookup: bytes, talent: str) -> bytes:
        """The secret and (in a vault that re-keys lookups) its talent id, sealed."""
        version = keys.version.to_bytes(_VERSION_BYTES, "big")
        plaintext = secret + (talent.encode() if self.rekeys_lookups else b"")
        return version + seal(keys.sealing, plaintext, lookup + version)

    def _open_sealed(self, keys: VaultKeys, blob: bytes, lookup: bytes) -> tuple[bytes, str]:
        """(secret, talent id; "" when the secret was sealed without it)."""
        plaintext = self._open_secret(keys, blob, lookup)
        return plaintext[:_SECRET_BYTES], plaintext[_SECRET_BYTES:].decode()

    def _open_secret(self, keys: VaultKeys, blob: bytes, lookup: bytes) -> bytes:
        prefix = blob[:_VERSION_BYTES]
        if int.from_bytes(prefix, "big") != keys.version:
            raise VaultRotated("the vault key was rotated during this call; retry")
        return open_sealed(keys.sealing, blob[_VERSION_BYTES:], lookup + prefix)

    def secrets(
        self, session: Session, account_id: str, talent_ids: Iterable[str], *, create: bool
    ) -> dict[str, bytes]:
        """The secrets of these talents; with `create`, missing ones are made first (race-safe:
        concurrent creators insert-or-ignore, then everyone reads the one stored secret)."""
        talent_ids = set(talent_ids)
        if not talent_ids:
            return {}
        keys = self.current(session)
        lookups = {self._hmac(keys, account_id, t): t for t in talent_ids}
        model = self.secret_model
        if create:
            now = self.clock()
            column = model.sealed_secret.property.columns[0].name  # audit's is `sealed_salt`
            rows = []
            for lookup, talent in lookups.items():
                secret = os.urandom(_SECRET_BYTES)
                row = {
                    "lookup": lookup,
                    "account_id": account_id,
                    column: self._seal_secret(keys, secret, lookup, talent),
                    "created_at": now,
                }
                if self._stores_row_refs:
                    row["row_ref"] = row_ref(secret)
                rows.append(row)
            insert_ignoring_conflicts(session, model.__table__, rows, ["lookup"])
        found = session.execute(
            select(model.lookup, model.sealed_secret).where(model.lookup.in_(list(lookups)))
        )
        return {
            lookups[lookup]: self._open_sealed(keys, sealed, lookup)[0] for lookup, sealed in found
        }

    def talent_keys(
        self, session: Session, account_id: str, talent_ids: Iterable[str], *, create: bool
    ) -> dict[str, TalentKey]:
        """Data keys of these talents (made when missing, with `create`); a talent whose key
        was destroyed and not made again is absent: whatever was sealed for it is gone."""
        secrets = self.secrets(session, account_id, talent_ids, create=create)
        return {talent: TalentKey(secret) for talent, secret in secrets.items()}

    def talent_lookup(self, session: Session, account_id: str, talent_id: str) -> bytes:
        """The talent's lookup under this transaction's key version: a keyed name for the
        talent that no row keeps (for locks that serialize work on one talent)."""
        return self._hmac(self.current(session), account_id, talent_id)

    def ref(self, session: Session, account_id: str, talent_id: str) -> bytes | None:
        """The ref the talent's rows carry, or None when the talent has no live key (then no
        row of theirs can be read either)."""
        key = self.talent_keys(session, account_id, [talent_id], create=False).get(talent_id)
        return key.ref if key else None

    def account_keys(self, session: Session, account_id: str) -> dict[bytes, TalentKey]:
        """Every live data key of one account, by row ref (to open an account's rows)."""
        return self._keys_where(session, self.secret_model.account_id == account_id)

    def account_subjects(self, session: Session, account_id: str) -> list[str]:
        """The subjects (talent ids, and a service's own subjects) of every live key of one
        account, opened from beside their keys (a vault that re-keys lookups: "" otherwise)."""
        keys = self.current(session)
        model = self.secret_model
        found = session.execute(
            select(model.lookup, model.sealed_secret).where(model.account_id == account_id)
        )
        return [self._open_sealed(keys, blob, lookup)[1] for lookup, blob in found]

    def destroy_account(self, session: Session, account_id: str) -> int:
        """Deletes every key of one account (its closure) and, if there was any, asks for a
        rotation (see `destroy`). How many."""
        model = self.secret_model
        deleted = rowcount(session.execute(delete(model).where(model.account_id == account_id)))
        if deleted:
            self.owe_rotation(session)
        return deleted

    def keys_by_ref(self, session: Session, refs: Iterable[bytes]) -> dict[bytes, TalentKey]:
        """Live data keys by row ref, whatever their account (to open rows of several)."""
        wanted = list(set(refs))
        return self._keys_where(session, self.secret_model.row_ref.in_(wanted)) if wanted else {}

    def _keys_where(self, session: Session, condition: Any) -> dict[bytes, TalentKey]:
        keys = self.current(session)
        model = self.secret_model
        found = session.execute(select(model.lookup, model.sealed_secret).where(condition))
        talent_keys = (
            TalentKey(self._open_sealed(keys, blob, lookup)[0]) for lookup, blob in found
        )
        return {key.ref: key for key in talent_keys}

    def destroy(self, session: Session, account_id: str, talent_id: str) -> bool:
        """Deletes the talent's secret (True when there was one) and then asks for a rotation
        within `rotate_within`: copies of the row elsewhere open only until that rotation
        completes."""
        lookup = self._hmac(self.current(session), account_id, talent_id)
        return self.destroy_lookup(session, lookup)

    def destroy_ref(self, session: Session, ref: bytes) -> bool:
        """Deletes the secret whose rows carry `ref` (see `destroy`)."""
        model = self.secret_model
        lookup = session.scalar(select(model.lookup).where(model.row_ref == ref))
        return lookup is not None and self.destroy_lookup(session, lookup)

    def destroy_lookup(self, session: Session, lookup: bytes) -> bool:
        model = self.secret_model
        deleted = rowcount(session.execute(delete(model).where(model.lookup == lookup))) > 0
        if deleted:  # nothing destroyed, nothing for old copies to keep
            self.owe_rotation(session)
        return deleted

    def owe_rotation(self, session: Session) -> None:
        """Asks for a rotation within `rotate_within` (an earlier due time stays)."""
        state = self._state(session, exclusive=False)
        due = self.clock() + self.rotate_within
        if state.rotation_due_at is None or state.rotation_due_at > due:
            session.execute(
                update(self.state_model)
                .where(self.state_model.id == _STATE_ID)
                .values(rotation_due_at=due)
            )

    # -- rotation -----------------------------------------------------------------------------

    def status(self) -> VaultStatus:
        with self.db.read() as session:
            state = session.get_one(self.state_model, _STATE_ID)
            return VaultStatus(state.version, state.rotated_at, state.rotation_due_at)

    def rotation_due(self) -> bool:
        """Whether a destroyed secret waits for the rotation that puts old copies out of reach."""
        due = self.status().rotation_due_at
        return due is not None and due <= self.clock()

    def rotate(self) -> Rotation:
        """Rotates now (see `_rotate`)."""
        rotation = self._rotate(only_if_due=False)
        assert rotation is not None
        return rotation

    def rotate_if_due(self) -> Rotation | None:
        """Rotates if a rotation is owed now (see `_rotate`)."""
        return self._rotate(only_if_due=True)

    def _rotate(self, *, only_if_due: bool) -> Rotation | None:
        """Key version N+1 under a new KEK; every live secret re-sealed, and re-keyed under a new
        lookup key (`rekeys_lookups`); then the KEK of version N destroyed. One transaction
        holds the state row exclusively, so secrets are neither read nor made meanwhile, and a
        concurrent rotation waits.

        Crash-safe at every step: before the commit, nothing stored refers to the new KEK (the
        next start or rotation removes it); after the commit, `retired_kek_ref` names the old
        KEK until it is destroyed (the next start or rotation finishes that).

        With `only_if_due`, nothing happens (None) unless a rotation is owed now: replicas that
        notice the same due time rotate once."""
        now = self.clock()
        with self.db.write() as session:
            state = self._state(session, exclusive=True)
            if only_if_due and (state.rotation_due_at is None or state.rotation_due_at > now):
                # a rotation whose old KEK could not be destroyed after its commit (KMS down)
                # is finished here, at the next check, not only at the next start
                self._finish_retirement(session, state)
                return None
            old = self._unwrap(state)
            self._finish_retirement(session, state)
            self.ring.sweep(keep=state.kek_ref)
            version = state.version + 1
            ref = self.ring.create(version)
            self._step("kek-created")
            wrapper = self.ring.open(ref)
            lookup = os.urandom(32) if self.rekeys_lookups else old.lookup
            new = VaultKeys(version, os.urandom(32), lookup)
            resealed = self._reseal(session, old, new)
            retired = state.kek_ref
            state.version, state.kek_ref, state.rotated_at = version, ref, now
            state.wrapped_sealing_key = wrapper.wrap(new.sealing, self._sealing_context(version))
            state.wrapped_lookup_key = wrapper.wrap(new.lookup, self._lookup_context())
            state.retired_kek_ref = retired
            state.rotation_due_at = None
            self._rotated(session)
            session.flush()
            self._step("resealed")
        self._keys = new
        self._step("committed")
        self.ring.destroy(retired)
        self._step("destroyed")
        with self.db.write() as session:
            state = self._state(session, exclusive=True)
            if state.retired_kek_ref == retired:
                state.retired_kek_ref = None
        logs.log(logger, "vault rotated", vault=self.name, key_version=version, resealed=resealed)
        return Rotation(version, now, resealed)

    def keep_rotating(self, check_seconds: float) -> RotationKeeper:
        """Starts the thread that rotates when a rotation is owed (see `RotationKeeper`)."""
        return RotationKeeper(self, check_seconds)

    def _rotated(self, session: Session) -> None:
        """Inside the rotation's transaction: what an older layout leaves behind goes."""

    def _reseal(self, session: Session, old: VaultKeys, new: VaultKeys) -> int:
        """Every secret sealed under `new`, at its lookup under `new` (the lookups are listed
        first: re-keyed rows move within the key order, so the table cannot be paged by it)."""
        model = self.secret_model
        column = model.sealed_secret.property.columns[0].name
        lookups = list(session.scalars(select(model.lookup).order_by(model.lookup)))
        kept = 0
        for start in range(0, len(lookups), _RESEAL_BATCH):
            page = session.execute(
                select(model.lookup, model.account_id, model.sealed_secret).where(
                    model.lookup.in_(lookups[start : start + _RESEAL_BATCH])
                )
            ).all()
            changes = []
            for lookup, account_id, blob in page:
                secret, talent = self._open_sealed(old, blob, lookup)
                moved = self._hmac(new, account_id, talent) if talent else lookup
                kept += talent == "" and self.rekeys_lookups
                changes.append(
                    {
                        "b_lookup": lookup,
                        "b_moved": moved,
                        "b_sealed": self._seal_secret(new, secret, moved, talent),
                    }
                )
            table = model.__table__
            session.execute(
                update(table)
                .where(table.c.lookup == bindparam("b_lookup"))
                .values(
                    {table.c.lookup: bindparam("b_moved"), table.c[column]: bindparam("b_sealed")}
                ),
                changes,
            )
        if kept:  # sealed before talent ids were: their talents can no longer be found by id
            logs.log(logger, "vault secrets kept at old lookups", vault=self.name, count=kept)
        return len(lookups)


class RotationKeeper(Worker):
    """Rotates a vault when a destroyed secret owes a rotation (`rotation_due_at` has passed),
    checking every `check_seconds` on a background worker (started here); a failed rotation is
    logged and tried at the next check (a rotation is crash-safe at every step). `stop()` ends
    it."""

    def __init__(self, vault: Vault, check_seconds: float) -> None:
        super().__init__(
            f"{vault.name}-vault-rotation",
            self._rotate,
            poll_seconds=check_seconds,
            wait_first=True,
            on_error=self._failed,
        )
        self.vault = vault
        self.start()

    def _rotate(self) -> bool:
        self.vault.rotate_if_due()
        return False

    def _failed(self, exc: Exception) -> None:
        """The next check tries again."""
        logs.log(logger, "vault rotation failed", vault=self.vault.name, error=type(exc).__name__)


@dataclass(frozen=True)
class VaultSettings:
    """Where a service's vault keeps its key-encryption keys (docs/configuration.md)."""

    kek_file: Path
    """MIXIP_<SERVICE>_VAULT_KEK_FILE (default <key dir>/<service>-vault.key): the first KEK
    file; rotations write versioned files next to it (the directory must be the key dir)."""
    kms_key_id: str | None = None
    """MIXIP_<SERVICE>_VAULT_KMS_KEY_ID: AWS KMS instead of key files; the vault's first KMS
    key, dedicated to it (the first rotation schedules its deletion)."""
    aws_region: str | None = None
    """AWS_REGION (else AWS_DEFAULT_REGION): the KMS region."""
    aws_endpoint_url: str | None = None
    """MIXIP_AWS_ENDPOINT_URL: another AWS endpoint (tests, LocalStack)."""
    kms_deletion_days: int = 7
    """MIXIP_<SERVICE>_VAULT_KMS_DELETION_DAYS (default 7): retired KMS keys' pending window,
    7-30 days."""
    rotate_within: timedelta = timedelta(hours=24)
    """MIXIP_VAULT_ROTATE_WITHIN_SECONDS (default 86400): how soon after a talent's secret is
    destroyed (erasure) the vault rotates, so backups taken before it stop opening."""
    check_seconds: float = 60.0
    """MIXIP_VAULT_ROTATION_CHECK_SECONDS (default 60): how often a replica looks for a
    rotation that is owed."""
    name: str = "audit"
    """The service whose vault this is (KMS keys a rotation makes are tagged `<name>-vault`)."""
    reset_unreadable: bool = False
    """MIXIP_VAULT_RESET_UNREADABLE (default false): start on a restored backup whose vault
    key was destroyed by a later rotation, dropping what it sealed (else refuse to start)."""

    @classmethod
    def load(
        cls,
        name: str,
        config: ServerConfig,
        env: Env,
        *,
        kek_variable: str | None = None,
        kek_file_name: str | None = None,
        kms_variable: str | None = None,
        deletion_variable: str | None = None,
    ) -> VaultSettings:
        """The settings of service `name`'s vault; a service with older variable names (the
        audit service) passes them, and its key file's name."""
        prefix = f"MIXIP_{name.upper()}_VAULT"
        kek_name, kms_name, days_name = (f"{prefix}_{setting}" for setting in VAULT_SETTINGS)
        days = env.int(deletion_variable or days_name, 7, minimum=7)
        if days > 30:
            raise ConfigError(f"{days_name}={days} must be 7-30 (AWS's limits)")
        default_kek = config.key_dir / (kek_file_name or f"{name}-vault.key")
        return cls(
            kek_file=Path(env.str(kek_variable or kek_name, str(default_kek))),
            kms_key_id=env.optional(kms_variable or kms_name),
            aws_region=env.optional("AWS_REGION") or env.optional("AWS_DEFAULT_REGION"),
            aws_endpoint_url=env.optional("MIXIP_AWS_ENDPOINT_URL"),
            kms_deletion_days=days,
            rotate_within=timedelta(
                seconds=env.float("MIXIP_VAULT_ROTATE_WITHIN_SECONDS", 86400.0, minimum=0.0)
            ),
            check_seconds=env.float("MIXIP_VAULT_ROTATION_CHECK_SECONDS", 60.0, minimum=0.05),
            name=name,
            reset_unreadable=env.bool("MIXIP_VAULT_RESET_UNREADABLE", False),
        )

    def open(
        self, db: Database, clock: Clock, *, name: str, state_model: Any, secret_model: Any
    ) -> Vault:
        """Service `name`'s vault in its own tables, as these settings say (the composition
        roots call this after migrating; tests may build a `Vault` themselves)."""
        return Vault(
            db,
            self.key_ring(),
            clock,
            name=name,
            state_model=state_model,
            secret_model=secret_model,
            rotate_within=self.rotate_within,
            reset_unreadable=self.reset_unreadable,
        )

    def key_ring(self) -> KeyRing:
        """AWS KMS when a key id is set, else local key files."""
        if self.kms_key_id:
            import boto3

            client = boto3.client(
                "kms", region_name=self.aws_region, endpoint_url=self.aws_endpoint_url
            )
            return KmsKeyRing(client, self.kms_key_id, deletion_window_days=self.kms_deletion_days)
        return LocalKeyRing(self.kek_file)
