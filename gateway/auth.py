"""Authentication: who calls, from the API key in the `authorization` header.

API keys are random, shown once, stored as the SHA-256 of their secret part. A key reads
`mixip_<key id>_<secret>`. The key id is public (it names the key in logs and audit events); the
secret is 256 random bits, so a plain SHA-256 is a sound verifier. Keys are issued and revoked
by gateway/accounts.py.

Each call to the client port has a `CallNote` (made by gateway/access_recording.py's interceptor):
authentication writes the caller into it, and use cases add what the request alone does not
say (`note`); the access log records it when the call ends.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

import grpc
from sqlalchemy.orm import Session

from gateway.store import ApiKeyRow
from mixip.runtime.db import Database
from mixip.runtime.errors import PermissionDenied, Unauthenticated
from mixip.runtime.telemetry import step

T = TypeVar("T")

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


@dataclass
class CallNote:
    """What the access log records about the current call beyond what its interceptor sees:
    the authenticated caller, and what the servicers learn while handling it. Identifiers only:
    never a talent id, a key's secret or any content."""

    account_id: str = ""
    api_key_id: str = ""
    project_id: str = ""
    media_id: str = ""
    # The account whose data the call touched, when not the caller's own (a collaborator's
    # call on an owner's project); the entry is then in the owner's access log too.
    owner_account_id: str = ""


# The note of the call this thread is handling (a gRPC handler runs in one thread), or None
# outside a call the access log records.
CURRENT_CALL: ContextVar[CallNote | None] = ContextVar("mixip_gateway_call_note", default=None)


def note(
    *,
    project_id: str | None = None,
    media_id: str | None = None,
    owner_account_id: str | None = None,
) -> None:
    """Adds to the current call's access-log entry what the interceptor cannot see (a streamed
    upload's project, the media it made, the project's owner). Outside such a call: nothing."""
    current = CURRENT_CALL.get()
    if current is None:
        return
    if project_id is not None:
        current.project_id = project_id
    if media_id is not None:
        current.media_id = media_id
    if owner_account_id is not None:
        current.owner_account_id = owner_account_id


def digest(secret: str) -> bytes:
    """The stored verifier of a key's secret part."""
    return hashlib.sha256(secret.encode()).digest()


def new_key() -> tuple[str, str, str]:
    """(key id, secret, the key as shown once)."""
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    return key_id, secret, f"mixip_{key_id}_{secret}"


@dataclass(frozen=True)
class PresentedKey:
    """A well-formed key from a call's metadata, not yet checked against its row."""

    key_id: str
    secret: str


class Authenticator:
    def __init__(self, db: Database) -> None:
        self.db = db

    def caller(self, context: grpc.ServicerContext) -> Caller:
        """The key's owner. The key's row is read on every call, never cached, so a key revoked
        through any replica is refused by every replica from its next call on."""
        key = self.presented(context)
        with step("gateway.authenticate"), self.db.read() as session:
            return self._verified(session, key)

    def account(self, context: grpc.ServicerContext) -> AccountCaller:
        return _account(self.caller(context))

    def account_and(
        self, key: PresentedKey, then: Callable[[Session, AccountCaller], T]
    ) -> tuple[AccountCaller, T]:
        """The caller, as `account`, and what `then` reads for it, in one read transaction (an
        upload's project scope and replay, gateway/uploads.py): `then` runs only once the key
        is verified."""
        with step("gateway.authenticate"), self.db.read() as session:
            caller = _account(self._verified(session, key))
            return caller, then(session, caller)

    def admin(self, context: grpc.ServicerContext) -> Caller:
        caller = self.caller(context)
        if not caller.is_admin:
            raise PermissionDenied("this call needs the admin credential")
        return caller

    def presented(self, context: grpc.ServicerContext) -> PresentedKey:
        """The call's key, refused (Unauthenticated) when missing or malformed; reads nothing."""
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
        return PresentedKey(key_id, secret)

    @staticmethod
    def _verified(session: Session, key: PresentedKey) -> Caller:
        row = session.get(ApiKeyRow, key.key_id)
        if (
            row is None
            or row.revoked_at is not None
            or not hmac.compare_digest(row.secret_hash, digest(key.secret))
        ):
            raise Unauthenticated("unknown or revoked API key")
        current = CURRENT_CALL.get()
        if current is not None:  # the access log's entry names the caller
            current.account_id, current.api_key_id = row.account_id or "", row.key_id
        return Caller(row.key_id, row.account_id, row.is_admin)


def _account(caller: Caller) -> AccountCaller:
    if caller.account_id is None:
        raise PermissionDenied("the admin credential has no account; use an account's key")
    return AccountCaller(caller.key_id, caller.account_id)
