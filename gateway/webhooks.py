"""Webhooks: an account's endpoints, told of its events with Standard Webhooks signatures.

- `Webhooks` holds the use cases (add, list, remove, test, rotate a secret) and `emit`, the
  one call other code makes to announce an event: `webhooks.emit(session, account_id,
  "erasure.completed", {"erasure_id": ...})` in the transaction that did the work, so the
  event is owed exactly when the work committed. One delivery row per subscribed endpoint
  (gateway_webhook_deliveries) is the outbox.
- Payloads are thin: the event's type and time, the account id and the ids the event names
  (`*_id` keys only, a talent id refused; and a job's end state). Receivers fetch details
  through the API.
- Secrets (`whsec_` + base64 of 32 random bytes) are sealed under the account's data key and
  shown once. A rotation keeps the previous secret for `overlap`; meanwhile each delivery
  carries both signatures in `webhook-signature`, so a receiver switches without downtime.
- Receivers are outside the mesh: a URL must be https and its host a public address; the
  deliverer (gateway/webhook_delivery.py) checks every address its name resolves to, then
  connects to the checked one. `allow_private` (MIXIP_GATEWAY_WEBHOOKS_ALLOW_PRIVATE) lifts
  both rules for development.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import and_, delete, event, func, or_, select
from sqlalchemy.orm import Session

from gateway.seals import ACCOUNT_SUBJECT, Seals
from gateway.store import WebhookDeliveryRow, WebhookRow
from mixip.runtime import logs
from mixip.runtime.db import Database, serialize
from mixip.runtime.errors import FailedPrecondition, NotFound
from mixip.runtime.idempotency import require_same
from mixip.runtime.paging import fetch_limit, page_of
from mixip.runtime.times import Clock, iso
from mixip.runtime.validation import Checks

logger = logging.getLogger("mixip.gateway.webhooks")

# What an endpoint may subscribe to; `webhook.test` goes only to the endpoint TestWebhook names.
EVENT_TYPES = ("erasure.completed", "job.completed", "job.failed", "job.cancelled")
# The one key of a payload's data that is not an id, and its values: the state a job ended in.
STATES = frozenset({"done", "failed", "cancelled"})
TEST_EVENT = "webhook.test"
MAX_URL_LENGTH = 2048
MAX_EVENT_TYPES = 8
MAX_WEBHOOKS_PER_ACCOUNT = 16
PENDING, DELIVERED, FAILED, DISABLED = "pending", "delivered", "failed", "disabled"
NOT_PUBLIC = "must be a public address (not private, loopback, link-local or multicast)"


@dataclass(frozen=True)
class Webhook:
    webhook_id: str
    url: str
    event_types: list[str]
    created_at: datetime
    disabled_at: datetime | None
    previous_secret_expires_at: datetime | None


def refused_address(address: str) -> bool:
    """Whether an IP address is not for a receiver outside the mesh: private, loopback,
    link-local, multicast, reserved or unspecified (an IPv4 address mapped into IPv6 too)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone is link-local anyway
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_url(checks: Checks, field_name: str, url: str, *, allow_private: bool) -> None:
    """An endpoint URL: https (http too with `allow_private`), a host that is not a refused
    address or a `localhost` name (names are resolved and checked again at each delivery), no
    user info (it would be a credential kept in clear) and no fragment."""
    if not url:
        checks.fail(field_name, "required")
        return
    if len(url) > MAX_URL_LENGTH:
        checks.fail(field_name, f"at most {MAX_URL_LENGTH} characters")
        return
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        checks.fail(field_name, "must be printable ASCII without spaces (punycode for names)")
        return
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # a bad port raises here
    except ValueError:
        checks.fail(field_name, "not a URL")
        return
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        checks.fail(field_name, "must start with https://")
    elif not host:
        checks.fail(field_name, "must name a host")
    elif parts.username is not None or parts.password is not None:
        checks.fail(field_name, "must not hold user info (it would be stored in clear)")
    elif parts.fragment or url.endswith("#"):
        checks.fail(field_name, "must not have a fragment")
    elif not allow_private and _local_host(host):
        checks.fail(field_name, f"its host {NOT_PUBLIC}")


def _local_host(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return refused_address(host)
    except ValueError:  # a name: checked once resolved, at each delivery
        return False


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def secret_context(webhook_id: str, which: str) -> bytes:
    """What a sealed secret is bound to: its endpoint and column (current or previous)."""
    return f"gateway_webhooks/{webhook_id}/{which}".encode()


class Webhooks:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        seals: Seals,
        wake: Callable[[], None],
        *,
        allow_private: bool = False,
        overlap: timedelta = timedelta(hours=24),
    ) -> None:
        self.db = db
        self.clock = clock
        self.seals = seals
        self.wake = wake  # the deliverer's: called after a commit that owes deliveries
        self.allow_private = allow_private
        self.overlap = overlap

    # -- events --------------------------------------------------------------------------------

    def emit(self, session: Session, account_id: str, event_type: str, data: dict[str, str]) -> str:
        """Owes the event to every live endpoint of the account subscribed to it, in the
        caller's transaction; the message id (the `webhook-id` of every attempt). `data` holds
        ids only (`*_id` keys, never a talent's) and, for a job, the state it ended in."""
        return self._emit(session, account_id, event_type, data, webhook_id=None)

    def _emit(
        self,
        session: Session,
        account_id: str,
        event_type: str,
        data: dict[str, str],
        *,
        webhook_id: str | None,
    ) -> str:
        if event_type not in (*EVENT_TYPES, TEST_EVENT):
            raise ValueError(f"unknown webhook event type {event_type!r}")
        if any(k == "talent_id" or not k.endswith("_id") for k in data if k != "state"):
            raise ValueError("webhook payloads hold ids only, never a talent's")
        if data.get("state", "done") not in STATES:
            raise ValueError(f"a webhook payload's state is one of {sorted(STATES)}")
        now = self.clock()
        message_id = f"msg_{secrets.token_hex(12)}"
        payload = json.dumps(
            {
                "type": event_type,
                "timestamp": iso(now),
                "data": {"account_id": account_id, **data},
            },
            separators=(",", ":"),
            sort_keys=True,
        )
        query = select(WebhookRow).where(
            WebhookRow.account_id == account_id, WebhookRow.disabled_at.is_(None)
        )
        if webhook_id is not None:
            query = query.where(WebhookRow.webhook_id == webhook_id)
        owed = [
            WebhookDeliveryRow(
                message_id=message_id,
                webhook_id=endpoint.webhook_id,
                account_id=account_id,
                event_type=event_type,
                payload=payload,
                created_at=now,
                state=PENDING,
                attempts=0,
                due_at=now,
            )
            for endpoint in session.scalars(query)
            if webhook_id is not None
            or not endpoint.event_types
            or event_type in endpoint.event_types.split(",")
        ]
        if owed:
            session.add_all(owed)
            event.listen(session, "after_commit", lambda _: self.wake(), once=True)
        return message_id

    # -- endpoints -----------------------------------------------------------------------------

    def add(
        self, account_id: str, url: str, event_types: Sequence[str], request_id: str
    ) -> tuple[Webhook, str]:
        """A new endpoint and its secret; a retry with the same request id returns the same."""
        types = ",".join(sorted(set(event_types)))
        with self.db.write() as session:
            serialize(session, f"mixip.gateway.webhooks:{account_id}")
            key = self.seals.keys(session, account_id, [ACCOUNT_SUBJECT], create=True)[
                ACCOUNT_SUBJECT
            ]
            if request_id:
                earlier = session.scalars(
                    select(WebhookRow).where(
                        WebhookRow.account_id == account_id, WebhookRow.request_id == request_id
                    )
                ).one_or_none()
                if earlier is not None:
                    require_same((earlier.url, earlier.event_types), (url, types))
                    secret = key.open_text(
                        earlier.sealed_secret, secret_context(earlier.webhook_id, "current")
                    )
                    return _webhook(earlier), secret
            count = session.scalar(select(func.count()).where(WebhookRow.account_id == account_id))
            if (count or 0) >= MAX_WEBHOOKS_PER_ACCOUNT:
                raise FailedPrecondition(
                    f"an account has at most {MAX_WEBHOOKS_PER_ACCOUNT} webhooks; remove one",
                    reason="WEBHOOK_LIMIT_REACHED",
                )
            webhook_id, secret = f"wh_{secrets.token_hex(12)}", new_secret()
            row = WebhookRow(
                webhook_id=webhook_id,
                account_id=account_id,
                url=url,
                event_types=types,
                sealed_secret=key.seal_text(secret, secret_context(webhook_id, "current")),
                created_at=self.clock(),
                request_id=request_id or None,
            )
            session.add(row)
        logs.log(logger, "webhook added", account=account_id, webhook=webhook_id, events=types)
        return _webhook(row), secret

    def list(
        self, account_id: str, page_size: int, after: tuple[datetime, str] | None
    ) -> tuple[list[Webhook], tuple[datetime, str] | None]:
        """The account's endpoints, oldest first, after the position (created_at, id)."""
        query = select(WebhookRow).where(WebhookRow.account_id == account_id)
        if after is not None:
            moment, last_id = after
            query = query.where(
                or_(
                    WebhookRow.created_at > moment,
                    and_(WebhookRow.created_at == moment, WebhookRow.webhook_id > last_id),
                )
            )
        with self.db.read() as session:
            rows = session.scalars(
                query.order_by(WebhookRow.created_at, WebhookRow.webhook_id).limit(
                    fetch_limit(page_size)
                )
            ).all()
        page, last = page_of(rows, page_size, lambda r: (r.created_at, r.webhook_id))
        return [_webhook(r) for r in page], last

    def remove(self, account_id: str, webhook_id: str) -> Webhook:
        """Removes the endpoint with every delivery to it (made or owed)."""
        with self.db.write() as session:
            row = _own(session, account_id, webhook_id)
            session.execute(
                delete(WebhookDeliveryRow).where(WebhookDeliveryRow.webhook_id == webhook_id)
            )
            session.delete(row)
        logs.log(logger, "webhook removed", account=account_id, webhook=webhook_id)
        return _webhook(row)

    def test(self, account_id: str, webhook_id: str) -> str:
        """Owes a `webhook.test` event to the endpoint; its message id."""
        with self.db.write() as session:
            row = _own(session, account_id, webhook_id)
            if row.disabled_at is not None:
                raise FailedPrecondition(
                    "this webhook was disabled (it answered 410 Gone); remove it and add it again",
                    reason="WEBHOOK_DISABLED",
                )
            return self._emit(
                session, account_id, TEST_EVENT, {"webhook_id": webhook_id}, webhook_id=webhook_id
            )

    def rotate(self, account_id: str, webhook_id: str, request_id: str) -> tuple[Webhook, str]:
        """A new secret; the previous one keeps signing for `overlap`. A retry with the same
        request id returns the same new secret (a second rotation would retire the secret the
        receivers still hold before they saw the new one)."""
        now = self.clock()
        with self.db.write() as session:
            serialize(session, f"mixip.gateway.webhooks:{account_id}")
            row = _own(session, account_id, webhook_id)
            key = self.seals.keys(session, account_id, [ACCOUNT_SUBJECT], create=True)[
                ACCOUNT_SUBJECT
            ]
            current = key.open_text(row.sealed_secret, secret_context(webhook_id, "current"))
            if request_id and row.rotation_request_id == request_id:
                return _webhook(row), current
            secret = new_secret()
            row.sealed_secret = key.seal_text(secret, secret_context(webhook_id, "current"))
            row.sealed_previous_secret, row.previous_expires_at = None, None
            if self.overlap > timedelta(0):
                previous = secret_context(webhook_id, "previous")
                row.sealed_previous_secret = key.seal_text(current, previous)
                row.previous_expires_at = now + self.overlap
            row.rotation_request_id = request_id or None
        logs.log(logger, "webhook secret rotated", account=account_id, webhook=webhook_id)
        return _webhook(row), secret


def _own(session: Session, account_id: str, webhook_id: str) -> WebhookRow:
    """The account's endpoint; another account's is NOT_FOUND, like an unknown one."""
    row = session.get(WebhookRow, webhook_id)
    if row is None or row.account_id != account_id:
        raise NotFound("no such webhook")
    return row


def _webhook(row: WebhookRow) -> Webhook:
    return Webhook(
        webhook_id=row.webhook_id,
        url=row.url,
        event_types=row.event_types.split(",") if row.event_types else [],
        created_at=row.created_at,
        disabled_at=row.disabled_at,
        previous_secret_expires_at=row.previous_expires_at,
    )
