"""The salt vault: one random 256-bit salt per (account, talent), sealed at rest.

The vault's master secret is wrapped by the key-encryption key (a local key file or AWS KMS) and
unwrapped once at start-up. Salts themselves are never cached: every use reads the row, so a
shred takes effect on every replica at once. No salt ever leaves this module except as the
HMAC of a talent id.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mixip.runtime.config import ConfigError
from mixip.runtime.db import Database, insert_ignoring_conflicts
from mixip.runtime.keys import KeyWrapper, SealError, open_sealed, seal
from mixip.runtime.times import Clock
from services.audit.store import SaltRow, VaultKey

MASTER_KEY_NAME = "vault-master-v1"
_WRAP_CONTEXT = b"mixip/audit/vault-master-v1"


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret)


class SaltVault:
    def __init__(self, db: Database, wrapper: KeyWrapper, clock: Clock) -> None:
        self.clock = clock
        secret = self._master_secret(db, wrapper)
        self._sealing_key = _derive(secret, b"mixip audit: salt sealing")
        self._lookup_key = _derive(secret, b"mixip audit: salt lookup")

    def _master_secret(self, db: Database, wrapper: KeyWrapper) -> bytes:
        """Unwraps the master secret, creating it on the very first start (race-safe)."""
        with db.write() as session:
            row = session.get(VaultKey, MASTER_KEY_NAME)
            if row is None:
                fresh = {
                    "name": MASTER_KEY_NAME,
                    "wrapped": wrapper.wrap(os.urandom(32), _WRAP_CONTEXT),
                    "created_at": self.clock(),
                }
                insert_ignoring_conflicts(session, VaultKey.__table__, [fresh], ["name"])
                row = session.get(VaultKey, MASTER_KEY_NAME)
            try:
                return wrapper.unwrap(row.wrapped, _WRAP_CONTEXT)
            except SealError as exc:
                raise ConfigError(
                    f"audit vault: cannot unwrap its master secret with {wrapper.description}"
                    f" ({exc}); is this the key the vault was created with?"
                ) from exc

    def _lookup(self, account_id: str, talent_id: str) -> bytes:
        message = f"{account_id}\x00{talent_id}".encode()
        return hmac.new(self._lookup_key, message, hashlib.sha256).digest()

    def lookup(self, account_id: str, talent_id: str) -> bytes:
        """The talent's key in the vault (a keyed hash: no talent id, no salt), which other
        tables keyed by talent use too (shred markers)."""
        return self._lookup(account_id, talent_id)

    def salts(
        self, session: Session, account_id: str, talent_ids: Iterable[str], *, create: bool
    ) -> dict[str, bytes]:
        """The salts of these talents; with `create`, missing ones are made first (race-safe:
        concurrent creators insert-or-ignore, then everyone reads the one stored salt)."""
        lookups = {self._lookup(account_id, t): t for t in set(talent_ids)}
        if not lookups:
            return {}
        if create:
            now = self.clock()
            rows = [
                {
                    "lookup": lookup,
                    "account_id": account_id,
                    "sealed_salt": seal(self._sealing_key, os.urandom(32), lookup),
                    "created_at": now,
                }
                for lookup in lookups
            ]
            insert_ignoring_conflicts(session, SaltRow.__table__, rows, ["lookup"])
        found = session.execute(
            select(SaltRow.lookup, SaltRow.sealed_salt).where(SaltRow.lookup.in_(list(lookups)))
        )
        return {
            lookups[lookup]: open_sealed(self._sealing_key, sealed, lookup)
            for lookup, sealed in found
        }

    def shred(self, session: Session, account_id: str, talent_id: str) -> bool:
        """Deletes the talent's salt; True when there was one. One row, whatever the history."""
        result = session.execute(
            delete(SaltRow).where(SaltRow.lookup == self._lookup(account_id, talent_id))
        )
        return result.rowcount > 0
