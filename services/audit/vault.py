"""The salt vault: one random 256-bit salt per (account, talent), sealed at rest.

Two keys, unwrapped from the vault's state row by the key-encryption key (KEK) it names:
- the lookup key: HMAC(lookup key, account, talent) is a salt row's primary key (and the key of
  whatever else is kept per talent without its id). It never changes: nothing could recompute
  the rows' keys without the talent ids.
- the sealing key of the current key version: each salt is sealed under it (AES-256-GCM).

Rotation (`rotate`, run weekly by the retention service) makes key version N+1 under a brand
new KEK (a new key file, or a new KMS key), re-seals every live salt under it, re-wraps the
lookup key, commits, and then destroys the KEK of version N. A salt shredded before the rotation
survives in backups, WAL and replicas only sealed under version N, whose sealing key survives
only wrapped under the destroyed KEK: after one rotation, no copy of it opens. See docs/vault.md.

Every transaction that uses salts reads the state row (locked against rotations on PostgreSQL;
SQLite write transactions are serial), so a replica that still holds version N notices version
N+1 at its next transaction and reloads. Salts themselves are never cached: a shred takes effect
on every replica at once. No salt ever leaves this module except as the HMAC of a talent id.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mixip.runtime import logs
from mixip.runtime.config import ConfigError
from mixip.runtime.db import Database, UtcDateTime, insert_ignoring_conflicts, rowcount
from mixip.runtime.errors import Unavailable
from mixip.runtime.keys import (
    KeyRing,
    KeyWrapper,
    KmsKeyRing,
    KmsKeyWrapper,
    LocalKeyRing,
    LocalKeyWrapper,
    SealError,
    open_sealed,
    seal,
)
from mixip.runtime.times import Clock
from services.audit.store import ChainHead, SaltActivity, SaltRow, VaultKey, VaultState

# The layout before rotation existed: one master secret, both keys derived from it. A vault
# found in that layout becomes key version 1 of the new one (same keys), and the master row is
# deleted by the first rotation.
MASTER_KEY_NAME = "vault-master-v1"
_WRAP_CONTEXT = b"mixip/audit/vault-master-v1"
_LEGACY_BLOB = 60  # nonce + sealed 32-byte salt + tag, no version prefix: version 1
_VERSION_BYTES = 4
_STATE_ID = 1
_LOOKUP_CONTEXT = b"mixip/audit/vault/lookup"
_RESEAL_BATCH = 1000
logger = logging.getLogger("mixip.audit")

Step = Callable[[str], None]
"""Called at each step boundary of a rotation ("kek-created", "resealed" (just before the
commit), "committed", "destroyed"):
tests stop a rotation there, as a crash would."""


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret)


def _sealing_context(version: int) -> bytes:
    return b"mixip/audit/vault/sealing-v%d" % version


def as_key_ring(keys: KeyRing | KeyWrapper) -> KeyRing:
    """A key ring from a ring or from a single-KEK wrapper (the ring's first KEK)."""
    if isinstance(keys, LocalKeyWrapper):
        return LocalKeyRing(keys.path)
    if isinstance(keys, KmsKeyWrapper):
        return KmsKeyRing(keys.kms, keys.key_id)
    return cast(KeyRing, keys)  # not one of the single-KEK wrappers: a ring


@dataclass(frozen=True)
class _Keys:
    version: int
    sealing: bytes
    lookup: bytes


@dataclass(frozen=True)
class VaultStatus:
    key_version: int
    rotated_at: datetime  # when this key version was made (first start, or its rotation)


@dataclass(frozen=True)
class Rotation:
    key_version: int
    rotated_at: datetime
    salts_resealed: int


class VaultRotated(Unavailable):
    """This transaction's snapshot predates a rotation whose old KEK is gone: retry."""

    default_reason = "VAULT_ROTATED"


class SaltVault:
    def __init__(
        self, db: Database, keys: KeyRing | KeyWrapper, clock: Clock, *, step: Step | None = None
    ) -> None:
        self.db = db
        self.ring = as_key_ring(keys)
        self.clock = clock
        self._step = step or (lambda name: None)
        self._keys = self._start()

    # -- start-up -----------------------------------------------------------------------------

    def _start(self) -> _Keys:
        """Makes (or adopts) the state row on the very first start (race-safe), finishes a
        rotation that stopped after its commit (destroys the retired KEK), removes KEKs of
        rotations that stopped before theirs, and unwraps the current keys."""
        with self.db.write() as session:
            state = self._locked_state(session, exclusive=True)
            if state is None:
                insert_ignoring_conflicts(
                    session, VaultState.__table__, [self._first_state(session)], ["id"]
                )
                state = self._state(session, exclusive=True)
            try:
                keys = self._unwrap(state)
            except SealError as exc:
                raise ConfigError(
                    f"audit vault: cannot open key version {state.version} with"
                    f" {self.ring.description} ({exc}); is this the key the vault was made with?"
                ) from exc
            # only once this ring is proven to hold the current KEK may it delete the others
            self._finish_retirement(session, state)
            swept = self.ring.sweep(keep=state.kek_ref)
        if swept:
            logs.log(logger, "stale vault keys removed", count=len(swept))
        return keys

    def _first_state(self, session: Session) -> dict[str, Any]:
        now = self.clock()
        ref = self.ring.initial_ref()
        wrapper = self.ring.open(ref)
        legacy = session.get(VaultKey, MASTER_KEY_NAME)
        if legacy is not None:
            try:
                secret = wrapper.unwrap(legacy.wrapped, _WRAP_CONTEXT)
            except SealError as exc:
                raise ConfigError(
                    f"audit vault: cannot unwrap its master secret with {self.ring.description}"
                    f" ({exc}); is this the key the vault was created with?"
                ) from exc
            sealing = _derive(secret, b"mixip audit: salt sealing")
            lookup = _derive(secret, b"mixip audit: salt lookup")
        else:
            sealing, lookup = os.urandom(32), os.urandom(32)
        return {
            "id": _STATE_ID,
            "version": 1,
            "kek_ref": ref,
            "wrapped_sealing_key": wrapper.wrap(sealing, _sealing_context(1)),
            "wrapped_lookup_key": wrapper.wrap(lookup, _LOOKUP_CONTEXT),
            "rotated_at": now,
            "retired_kek_ref": None,
        }

    def _finish_retirement(self, session: Session, state: VaultState) -> None:
        if state.retired_kek_ref:
            self.ring.destroy(state.retired_kek_ref)
            state.retired_kek_ref = None
            session.flush()

    # -- the state row, per transaction -------------------------------------------------------

    @staticmethod
    def _locked_state(session: Session, *, exclusive: bool) -> VaultState | None:
        """The state row, locked for this transaction on PostgreSQL: shared by every user of
        salts (FOR KEY SHARE: they never wait for each other), exclusive for rotations and the
        salt purge (FOR UPDATE)."""
        query = select(VaultState).where(VaultState.id == _STATE_ID)
        if exclusive:
            query = query.with_for_update()
        else:
            query = query.with_for_update(read=True, key_share=True)
        return session.scalars(query).one_or_none()

    @classmethod
    def _state(cls, session: Session, *, exclusive: bool) -> VaultState:
        """The locked state row, which exists once the vault is open."""
        state = cls._locked_state(session, exclusive=exclusive)
        assert state is not None  # made by open(), never deleted
        return state

    def _current(self, session: Session) -> _Keys:
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
            logs.log(logger, "vault key reloaded", key_version=keys.version)
        return keys

    def _unwrap(self, state: VaultState) -> _Keys:
        wrapper = self.ring.open(state.kek_ref)
        return _Keys(
            state.version,
            wrapper.unwrap(state.wrapped_sealing_key, _sealing_context(state.version)),
            wrapper.unwrap(state.wrapped_lookup_key, _LOOKUP_CONTEXT),
        )

    # -- salts --------------------------------------------------------------------------------

    @staticmethod
    def _hmac(keys: _Keys, account_id: str, talent_id: str) -> bytes:
        message = f"{account_id}\x00{talent_id}".encode()
        return hmac.new(keys.lookup, message, hashlib.sha256).digest()

    def _lookup(self, account_id: str, talent_id: str) -> bytes:
        """The lookup HMAC of (account, talent): stable across rotations."""
        return self._hmac(self._keys, account_id, talent_id)

    @staticmethod
    def _seal(keys: _Keys, salt: bytes, lookup: bytes) -> bytes:
        version = keys.version.to_bytes(_VERSION_BYTES, "big")
        return version + seal(keys.sealing, salt, lookup + version)

    @staticmethod
    def _open(keys: _Keys, blob: bytes, lookup: bytes) -> bytes:
        if len(blob) == _LEGACY_BLOB:
            version, aad, sealed = 1, lookup, blob
        else:
            prefix = blob[:_VERSION_BYTES]
            version, aad, sealed = int.from_bytes(prefix, "big"), lookup + prefix, blob[4:]
        if version != keys.version:
            raise VaultRotated("the vault key was rotated during this call; retry")
        return open_sealed(keys.sealing, sealed, aad)

    def lookup(self, account_id: str, talent_id: str) -> bytes:
        """The talent's key in the vault (a keyed hash: no talent id, no salt), which other
        tables keyed by talent use too (shred markers)."""
        return self._lookup(account_id, talent_id)

    def salts(
        self, session: Session, account_id: str, talent_ids: Iterable[str], *, create: bool
    ) -> dict[str, bytes]:
        """The salts of these talents; with `create`, missing ones are made first (race-safe:
        concurrent creators insert-or-ignore, then everyone reads the one stored salt)."""
        talent_ids = set(talent_ids)
        if not talent_ids:
            return {}
        keys = self._current(session)
        lookups = {self._hmac(keys, account_id, t): t for t in talent_ids}
        if create:
            now = self.clock()
            rows = [
                {
                    "lookup": lookup,
                    "account_id": account_id,
                    "sealed_salt": self._seal(keys, os.urandom(32), lookup),
                    "created_at": now,
                }
                for lookup in lookups
            ]
            insert_ignoring_conflicts(session, SaltRow.__table__, rows, ["lookup"])
        found = session.execute(
            select(SaltRow.lookup, SaltRow.sealed_salt).where(SaltRow.lookup.in_(list(lookups)))
        )
        return {lookups[lookup]: self._open(keys, sealed, lookup) for lookup, sealed in found}

    def shred(self, session: Session, account_id: str, talent_id: str) -> bool:
        """Deletes the talent's salt; True when there was one. One row, whatever the history.
        Copies of the row elsewhere stay openable until the next rotation completes."""
        lookup = self._hmac(self._current(session), account_id, talent_id)
        session.execute(delete(SaltActivity).where(SaltActivity.lookup == lookup))
        result = session.execute(delete(SaltRow).where(SaltRow.lookup == lookup))
        return rowcount(result) > 0

    def touch(
        self, session: Session, account_id: str, talent_ids: Iterable[str], at: datetime
    ) -> None:
        """Notes that events about these talents were recorded at `at` (for the salt purge)."""
        keys = self._current(session)
        rows = [
            {"lookup": self._hmac(keys, account_id, t), "account_id": account_id}
            | {"last_event_at": at}
            for t in sorted(set(talent_ids))
        ]
        if not rows:
            return
        dialect = session.get_bind().dialect.name
        upsert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(SaltActivity)
        statement = upsert.values(rows)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["lookup"],
                set_={"last_event_at": statement.excluded.last_event_at},
            )
        )

    def purge_idle(self, session: Session, cutoff: datetime, limit: int) -> tuple[int, bool]:
        """Deletes up to `limit` salts whose talent's last event was recorded before `cutoff`
        (those events are purged with this cutoff, so nothing refers to the salt any more);
        returns (deleted, done). Exclusive with recorders, so a salt never goes while an event
        about its talent is being recorded.

        Salts from before activity was tracked get the latest time their account recorded
        anything: an upper bound of their last event."""
        self._locked_state(session, exclusive=True)
        untracked = (
            select(
                SaltRow.lookup,
                SaltRow.account_id,
                func.coalesce(ChainHead.last_recorded_at, literal(self.clock(), UtcDateTime)),
            )
            .outerjoin(ChainHead, ChainHead.account_id == SaltRow.account_id)
            .where(~select(SaltActivity).where(SaltActivity.lookup == SaltRow.lookup).exists())
        )
        session.execute(
            insert(SaltActivity).from_select(["lookup", "account_id", "last_event_at"], untracked)
        )
        idle = list(
            session.scalars(
                select(SaltActivity.lookup)
                .where(SaltActivity.last_event_at < cutoff)
                .order_by(SaltActivity.last_event_at, SaltActivity.lookup)
                .limit(limit + 1)
            )
        )
        batch, done = idle[:limit], len(idle) <= limit
        if not batch:
            return 0, True
        deleted = rowcount(session.execute(delete(SaltRow).where(SaltRow.lookup.in_(batch))))
        session.execute(delete(SaltActivity).where(SaltActivity.lookup.in_(batch)))
        return deleted, done

    # -- rotation -----------------------------------------------------------------------------

    def status(self) -> VaultStatus:
        with self.db.read() as session:
            state = session.get_one(VaultState, _STATE_ID)
            return VaultStatus(state.version, state.rotated_at)

    def rotate(self) -> Rotation:
        """Key version N+1 under a new KEK; every live salt re-sealed; the lookup key re-wrapped;
        then the KEK of version N destroyed. One transaction holds the state row exclusively,
        so salts are neither read nor made meanwhile, and a concurrent rotation waits.

        Crash-safe at every step: before the commit, nothing stored refers to the new KEK (the
        next start or rotation removes it); after the commit, `retired_kek_ref` names the old
        KEK until it is destroyed (the next start or rotation finishes that)."""
        now = self.clock()
        with self.db.write() as session:
            state = self._state(session, exclusive=True)
            old = self._unwrap(state)
            self._finish_retirement(session, state)
            self.ring.sweep(keep=state.kek_ref)
            version = state.version + 1
            ref = self.ring.create(version)
            self._step("kek-created")
            wrapper = self.ring.open(ref)
            new = _Keys(version, os.urandom(32), old.lookup)
            resealed = self._reseal(session, old, new)
            retired = state.kek_ref
            state.version, state.kek_ref, state.rotated_at = version, ref, now
            state.wrapped_sealing_key = wrapper.wrap(new.sealing, _sealing_context(version))
            state.wrapped_lookup_key = wrapper.wrap(new.lookup, _LOOKUP_CONTEXT)
            state.retired_kek_ref = retired
            session.execute(delete(VaultKey).where(VaultKey.name == MASTER_KEY_NAME))
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
        logs.log(logger, "vault rotated", key_version=version, salts_resealed=resealed)
        return Rotation(version, now, resealed)

    def _reseal(self, session: Session, old: _Keys, new: _Keys) -> int:
        resealed, after = 0, b""
        while True:
            page = session.execute(
                select(SaltRow.lookup, SaltRow.sealed_salt)
                .where(SaltRow.lookup > after)
                .order_by(SaltRow.lookup)
                .limit(_RESEAL_BATCH)
            ).all()
            if not page:
                return resealed
            session.execute(
                update(SaltRow),
                [
                    {
                        "lookup": lookup,
                        "sealed_salt": self._seal(new, self._open(old, blob, lookup), lookup),
                    }
                    for lookup, blob in page
                ],
            )
            resealed += len(page)
            after = page[-1][0]
