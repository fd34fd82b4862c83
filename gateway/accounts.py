"""Accounts and their API keys: creation, listing, revocation, and the admin credential; an
account's profile (display name and contact email), which the account corrects itself.

The email is personal data: sealed under the account's own data key (gateway/seals.py), which
the account's closure destroys (gateway/closures.py), and never logged. Authentication (checking
the key a call presents) is gateway/auth.py's.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.auth import KEY_FORMAT, digest, new_key
from gateway.seals import ACCOUNT_SUBJECT, Seals
from gateway.store import AccountClosureRow, AccountRow, ApiKeyRow
from mixip.runtime import logs
from mixip.runtime.db import Database
from mixip.runtime.errors import FailedPrecondition, NotFound
from mixip.runtime.idempotency import require_same
from mixip.runtime.paging import fetch_limit, page_of
from mixip.runtime.times import Clock

logger = logging.getLogger("mixip.gateway.auth")


# What passes for a contact email: one "@" with something on each side, no spaces (minimal:
# the address is the account holder's to get right, and it is never mailed from here).
EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
EMAIL_RULE = 'one "@" with text on each side, no spaces, at most 254 characters'
EMAIL_MAX = 254


def email_context(account_id: str) -> bytes:
    """What an account's sealed email is bound to: its row."""
    return f"gateway_accounts/{account_id}/email".encode()


@dataclass(frozen=True)
class Account:
    account_id: str
    name: str
    created_at: datetime
    email: str = ""
    closed_at: datetime | None = None


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    account_id: str | None  # None for the admin credential
    created_at: datetime
    revoked_at: datetime | None


class Accounts:
    def __init__(self, db: Database, clock: Clock, seals: Seals) -> None:
        self.db = db
        self.clock = clock
        self.seals = seals

    def ensure_admin_key(self, path: Path, configured: str | None) -> str:
        """The admin credential: the configured one, or the one in `path`, created (mode 0600)
        at the first start. Its hash is (re)registered so a fresh database accepts it, and any
        other admin credential is revoked (rotation)."""
        token = configured or (path.read_text().strip() if path.exists() else "")
        if not token:
            token = new_key()[2]
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(token + "\n")
        match = KEY_FORMAT.fullmatch(token)
        if match is None:
            raise ValueError(f"the admin credential in {path} is not a mixip key")
        key_id, secret = match.groups()
        with self.db.write() as session:
            # One admin credential at a time: configuring a new one revokes the old.
            session.execute(
                update(ApiKeyRow)
                .where(
                    ApiKeyRow.is_admin.is_(True),
                    ApiKeyRow.key_id != key_id,
                    ApiKeyRow.revoked_at.is_(None),
                )
                .values(revoked_at=self.clock())
            )
            if session.get(ApiKeyRow, key_id) is None:
                session.add(
                    ApiKeyRow(
                        key_id=key_id,
                        secret_hash=digest(secret),
                        account_id=None,
                        is_admin=True,
                        created_at=self.clock(),
                    )
                )
        return token

    def create_account(self, name: str, request_id: str) -> tuple[Account, str, str]:
        """A new account and its first key: (account, key, key id). The request id is the
        idempotency key: a replay returns the account and its first key's id but no key (""),
        so a replay never leaves a second live key; the same request id with another name is
        refused. Names are display names, not unique: no request id, a new account."""
        if request_id:
            earlier = self._account_by_request(name, request_id)
            if earlier is not None:
                return earlier
        try:
            with self.db.write() as session:
                account = AccountRow(
                    account_id=f"acct_{secrets.token_hex(8)}",
                    name=name,
                    created_at=self.clock(),
                    request_id=request_id or None,
                )
                session.add(account)
                session.flush()
                key_id, token = self._add_key(session, account.account_id)
        except IntegrityError:  # a concurrent replay created it first
            earlier = self._account_by_request(name, request_id) if request_id else None
            if earlier is None:
                raise
            return earlier
        logs.log(logger, "account created", account=account.account_id, key=key_id)
        return _account(account), token, key_id

    def _account_by_request(self, name: str, request_id: str) -> tuple[Account, str, str] | None:
        with self.db.read() as session:
            account = session.scalars(
                select(AccountRow).where(AccountRow.request_id == request_id)
            ).one_or_none()
            if account is None:
                return None
            require_same(account.name, name)
            first_key = session.scalar(
                select(ApiKeyRow.key_id)
                .where(ApiKeyRow.account_id == account.account_id)
                .order_by(ApiKeyRow.created_at, ApiKeyRow.key_id)
                .limit(1)
            )
        logs.log(logger, "account creation replayed", account=account.account_id)
        return _account(account), "", first_key or ""

    def create_key(self, account_id: str) -> tuple[str, str]:
        with self.db.write() as session:
            _open_account(session, account_id)
            key_id, token = self._add_key(session, account_id)
        logs.log(logger, "api key created", account=account_id, key=key_id)
        return token, key_id

    def _add_key(self, session: Session, account_id: str) -> tuple[str, str]:
        key_id, secret, token = new_key()
        session.add(
            ApiKeyRow(
                key_id=key_id,
                secret_hash=digest(secret),
                account_id=account_id,
                is_admin=False,
                created_at=self.clock(),
            )
        )
        return key_id, token

    def list_keys(
        self, account_id: str, page_size: int, after: str
    ) -> tuple[list[ApiKey], str | None]:
        """An account's keys by id (NOT_FOUND for an unknown account)."""
        with self.db.read() as session:
            if session.get(AccountRow, account_id) is None:
                raise NotFound("no such account")
            rows = list(
                session.scalars(
                    select(ApiKeyRow)
                    .where(ApiKeyRow.account_id == account_id, ApiKeyRow.key_id > after)
                    .order_by(ApiKeyRow.key_id)
                    .limit(fetch_limit(page_size))
                )
            )
        page, last = page_of(rows, page_size, lambda r: r.key_id)
        return [_api_key(r) for r in page], last

    def revoke_key(self, key_id: str) -> ApiKey:
        """Revokes an account's key (idempotent: the first revocation time stays). Every
        replica checks the key's row on every call, so it is refused from the next call on."""
        with self.db.write() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFound("no such API key")
            if row.is_admin:
                raise FailedPrecondition(
                    "the admin credential is rotated by configuration (MIXIP_GATEWAY_ADMIN_KEY "
                    "or the admin key file), not revoked",
                    reason="ADMIN_KEY_NOT_REVOCABLE",
                )
            if row.revoked_at is None:
                row.revoked_at = self.clock()
        logs.log(logger, "api key revoked", account=row.account_id, key=key_id)
        return _api_key(row)

    def list_accounts(self, page_size: int, after: str) -> tuple[list[Account], str | None]:
        with self.db.read() as session:
            rows = list(
                session.scalars(
                    select(AccountRow)
                    .where(AccountRow.account_id > after)
                    .order_by(AccountRow.account_id)
                    .limit(fetch_limit(page_size))
                )
            )
            page, last = page_of(rows, page_size, lambda r: r.account_id)
            return self._accounts(session, page), last

    # -- profile ------------------------------------------------------------------------------

    def profile(self, account_id: str) -> Account:
        """The account as its holder reads it (NOT_FOUND once closed: its data is going)."""
        with self.db.read() as session:
            return self._accounts(session, [_open_account(session, account_id)])[0]

    def profiles(self, account_ids: set[str]) -> dict[str, Account]:
        """The profiles of these accounts, by id (a closed or unknown one is absent)."""
        if not account_ids:
            return {}
        with self.db.read() as session:
            rows = session.scalars(
                select(AccountRow).where(
                    AccountRow.account_id.in_(sorted(account_ids)), AccountRow.closed_at.is_(None)
                )
            ).all()
            return {a.account_id: a for a in self._accounts(session, list(rows))}

    def update_profile(self, account_id: str, name: str | None, email: str | None) -> Account:
        """Corrects the account's display name and contact email (None: unchanged; an empty
        email removes it). The email is sealed under the account's key; the log line names the
        fields changed, never their values."""
        with self.db.write() as session:
            row = _open_account(session, account_id)
            if name is not None:
                row.name = name
            if email is not None:
                row.email_ref, row.sealed_email = None, None
                if email:
                    key = self.seals.keys(session, account_id, [ACCOUNT_SUBJECT], create=True)
                    account_key = key[ACCOUNT_SUBJECT]
                    row.email_ref = account_key.ref
                    row.sealed_email = account_key.seal_text(email, email_context(account_id))
            session.flush()
            updated = self._accounts(session, [row])[0]
        changed = ",".join(f for f, v in (("name", name), ("email", email)) if v is not None)
        logs.log(logger, "account profile updated", account=account_id, fields=changed)
        return updated

    def _accounts(self, session: Session, rows: list[AccountRow]) -> list[Account]:
        """Accounts with their emails opened (one key query)."""
        keys = self.seals.by_ref(session, (r.email_ref for r in rows if r.sealed_email))
        accounts = []
        for row in rows:
            key = keys.get(row.email_ref) if row.email_ref else None
            email = ""
            if key is not None and row.sealed_email is not None:
                email = key.open_text(row.sealed_email, email_context(row.account_id))
            accounts.append(_account(row, email))
        return accounts


def _open_account(session: Session, account_id: str) -> AccountRow:
    """The account's row, NOT_FOUND for an unknown account and FAILED_PRECONDITION
    (ACCOUNT_CLOSED) for one being closed or closed."""
    row = session.get(AccountRow, account_id)
    if row is None:
        if session.get(AccountClosureRow, account_id) is not None:
            raise _closed()
        raise NotFound("no such account")
    if row.closed_at is not None:
        raise _closed()
    return row


def _closed() -> FailedPrecondition:
    return FailedPrecondition("this account is closed", reason="ACCOUNT_CLOSED")


def _account(row: AccountRow, email: str = "") -> Account:
    return Account(row.account_id, row.name, row.created_at, email, row.closed_at)


def _api_key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(row.key_id, row.account_id, row.created_at, row.revoked_at)
