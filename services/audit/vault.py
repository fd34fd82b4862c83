"""The salt vault: one random 256-bit salt per (account, talent), sealed at rest.

The audit service's `Vault` (mixip/runtime/vault.py: lookup key, sealing key per key version,
rotation that destroys the old KEK) whose secrets are the salts: no salt ever leaves this
module except as the HMAC of a talent id. What is the audit service's own: the layout from
before rotation existed (one master secret), and the salt purge that follows the log's
retention. See docs/vault.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, func, insert, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mixip.runtime.config import ConfigError
from mixip.runtime.db import Database, UtcDateTime, rowcount
from mixip.runtime.keys import KeyRing, KeyWrapper, SealError, as_key_ring, open_sealed
from mixip.runtime.times import Clock
from mixip.runtime.vault import Rotation, Step, Vault, VaultKeys, VaultStatus
from services.audit.store import ChainHead, SaltActivity, SaltRow, VaultKey, VaultState

__all__ = ["Rotation", "SaltVault", "VaultStatus"]

# The layout before rotation existed: one master secret, both keys derived from it. A vault
# found in that layout becomes key version 1 of the new one (same keys), and the master row is
# deleted by the first rotation.
MASTER_KEY_NAME = "vault-master-v1"
_WRAP_CONTEXT = b"mixip/audit/vault-master-v1"
_LEGACY_BLOB = 60  # nonce + sealed 32-byte salt + tag, no version prefix: version 1


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret)


class SaltVault(Vault):
    def __init__(
        self,
        db: Database,
        keys: KeyRing | KeyWrapper,
        clock: Clock,
        *,
        step: Step | None = None,
        rotate_within: timedelta = timedelta(hours=24),
        reset_unreadable: bool = False,
    ) -> None:
        super().__init__(
            db,
            as_key_ring(keys),
            clock,
            name="audit",
            state_model=VaultState,
            secret_model=SaltRow,
            rotate_within=rotate_within,
            reset_unreadable=reset_unreadable,
            step=step,
        )

    rekeys_lookups = False  # its salts were sealed without their talent ids

    def lookup(self, account_id: str, talent_id: str) -> bytes:
        """The salt's key in the vault (a keyed hash of account and talent), the same in every
        key version: the salt purge's activity rows and the shred markers are keyed by it."""
        return self._hmac(self._keys, account_id, talent_id)

    def _first_keys(self, session: Session, ref: str) -> tuple[bytes, bytes]:
        legacy = session.get(VaultKey, MASTER_KEY_NAME)
        if legacy is None:
            return super()._first_keys(session, ref)
        try:
            secret = self.ring.open(ref).unwrap(legacy.wrapped, _WRAP_CONTEXT)
        except SealError as exc:
            raise ConfigError(
                f"audit vault: cannot unwrap its master secret with {self.ring.description}"
                f" ({exc}); is this the key the vault was created with?"
            ) from exc
        return (
            _derive(secret, b"mixip audit: salt sealing"),
            _derive(secret, b"mixip audit: salt lookup"),
        )

    def _open_secret(self, keys: VaultKeys, blob: bytes, lookup: bytes) -> bytes:
        if len(blob) == _LEGACY_BLOB and keys.version == 1:
            return open_sealed(keys.sealing, blob, lookup)
        return super()._open_secret(keys, blob, lookup)

    def _rotated(self, session: Session) -> None:
        session.execute(delete(VaultKey).where(VaultKey.name == MASTER_KEY_NAME))

    def salts(
        self, session: Session, account_id: str, talent_ids: Iterable[str], *, create: bool
    ) -> dict[str, bytes]:
        """The salts of these talents; with `create`, missing ones are made first."""
        return self.secrets(session, account_id, talent_ids, create=create)

    def shred(self, session: Session, account_id: str, talent_id: str) -> bool:
        """Deletes the talent's salt; True when there was one. One row, whatever the history.
        Copies of the row elsewhere stay openable until the next rotation completes, which
        this asks for within `rotate_within`."""
        # the state row first (shared), as every user of salts: a rotation holding it
        # exclusively is waited for, never deadlocked with on the salt rows
        lookup = self._hmac(self.current(session), account_id, talent_id)
        session.execute(delete(SaltActivity).where(SaltActivity.lookup == lookup))
        return self.destroy_lookup(session, lookup)

    def touch(
        self, session: Session, account_id: str, talent_ids: Iterable[str], at: datetime
    ) -> None:
        """Notes that events about these talents were recorded at `at` (for the salt purge)."""
        keys = self.current(session)
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
