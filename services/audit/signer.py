"""The audit log's Ed25519 note key (docs/audit-log.md): one key in the key directory, made on
the first start, signing each account's checkpoints under the account's own origin
`<key name>/<account_id>`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mixip.runtime.files import write_private
from mixip.tlog.note import Ed25519Signer

KEY_FILE = "audit-log-signer.key"
ORIGIN_PREFIX = "mixip.example/audit"


@dataclass(frozen=True)
class LogSigner:
    """The log's key; its name is the prefix of every account's origin line."""

    key: Ed25519Signer

    @classmethod
    def load_or_create(cls, path: Path) -> LogSigner:
        """The key in `path` (Go's `PRIVATE+KEY+...` text), made there (mode 0600) if absent."""
        try:
            return cls(Ed25519Signer.from_skey(path.read_text().strip()))
        except FileNotFoundError:
            pass
        key = Ed25519Signer.generate(ORIGIN_PREFIX)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            write_private(path, key.skey + "\n", exclusive=True)
        except FileExistsError:  # another replica made it first: use that one
            return cls(Ed25519Signer.from_skey(path.read_text().strip()))
        return cls(key)

    def origin(self, account_id: str) -> str:
        return f"{self.key.name}/{account_id}"

    def for_account(self, account_id: str) -> Ed25519Signer:
        """The key named as the account's origin (a C2SP checkpoint's signer is its origin)."""
        return Ed25519Signer(self.origin(account_id), self.key.seed)

    def vkey(self, account_id: str) -> str:
        """The verifier key of the account's log, in the note verifier-key format."""
        return self.for_account(account_id).verifier().vkey
