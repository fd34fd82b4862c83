"""Authentication: who calls, from the API key in the `authorization` header.

API keys are random, shown once, stored as the SHA-256 of their secret part. A key reads
`mixip_<key id>_<secret>`. The key id is public (it names the key in logs and audit events); the
secret is 256 random bits, so a plain SHA-256 is a sound verifier. Keys are issued and revoked
by gateway/accounts.py.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

import grpc

from gateway.store import ApiKeyRow
from mixip.runtime.db import Database
from mixip.runtime.errors import PermissionDenied, Unauthenticated

KEY_FORMAT = re.compile(r"mixip_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class Caller:
    key_id: str
    account_id: str | None  # None for the admin credential
    is_admin: bool


@dataclass(frozen=True)
class AccountCaller:
    """A caller with an account's key."""

    key_id: str
    account_id: str


def digest(secret: str) -> bytes:
    """The stored verifier of a key's secret part."""
    return hashlib.sha256(secret.encode()).digest()


def new_key() -> tuple[str, str, str]:
    """(key id, secret, the key as shown once)."""
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    return key_id, secret, f"mixip_{key_id}_{secret}"


class Authenticator:
    def __init__(self, db: Database) -> None:
        self.db = db

    def caller(self, context: grpc.ServicerContext) -> Caller:
        """The key's owner. The key's row is read on every call, never cached, so a key revoked
        through any replica is refused by every replica from its next call on."""
        headers = [
            v
            for k, v in context.invocation_metadata()
            if k == "authorization" and isinstance(v, str)
        ]
        if len(headers) > 1:
            raise Unauthenticated("send exactly one authorization header")
        scheme, _, token = (headers[0] if headers else "").partition(" ")
        match = KEY_FORMAT.fullmatch(token.strip()) if scheme.lower() == "bearer" else None
        if match is None:
            raise Unauthenticated("missing or malformed API key (authorization: Bearer <key>)")
        key_id, secret = match.groups()
        with self.db.read() as session:
            row = session.get(ApiKeyRow, key_id)
        if (
            row is None
            or row.revoked_at is not None
            or not hmac.compare_digest(row.secret_hash, digest(secret))
        ):
            raise Unauthenticated("unknown or revoked API key")
        return Caller(row.key_id, row.account_id, row.is_admin)

    def account(self, context: grpc.ServicerContext) -> AccountCaller:
        caller = self.caller(context)
        if caller.account_id is None:
            raise PermissionDenied("the admin credential has no account; use an account's key")
        return AccountCaller(caller.key_id, caller.account_id)

    def admin(self, context: grpc.ServicerContext) -> Caller:
        caller = self.caller(context)
        if not caller.is_admin:
            raise PermissionDenied("this call needs the admin credential")
        return caller
