"""The webhook deliverer: sends what gateway/webhooks.py's `emit` owes, at least once.

- Every gateway replica runs one. A pass claims due deliveries with a lease (`FOR UPDATE SKIP
  LOCKED` on PostgreSQL; SQLite serializes the claiming writers), like the audit outbox, so
  replicas do not send the same delivery in the normal case; a replica that dies mid-send
  leaves its lease to expire and another sends again, with the same `webhook-id` (receivers
  deduplicate on it).
- Each attempt is a POST of the stored payload, signed with the `standardwebhooks` package at
  the attempt's time (`webhook-id`, `webhook-timestamp`, `webhook-signature`; during a
  rotation's overlap the signature header holds both secrets' signatures). The host is resolved
  and every address it resolves to checked (`refused_address`), then the connection goes to the
  checked address (TLS still verifies the name): a DNS answer cannot steer a delivery into the
  mesh. No redirects; `timeout` for the whole attempt.
- 2xx: delivered. 410 Gone: the endpoint is disabled and nothing more is sent to it. Anything
  else (another status, a timeout, a refused address, a connection error): retried on the
  Standard Webhooks schedule, `RETRY_DELAYS` after the attempts (immediately, then 5 s, 5 min,
  30 min, 2 h, 5 h, 10 h, 10 h: about 27 hours), then given up (`failed`).
- Finished deliveries are purged `retention` after they finished (`purge`, run by a pass of
  the deliverer every `PURGE_EVERY`).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import urllib3
from sqlalchemy import delete, select, update
from standardwebhooks.webhooks import Webhook as Signer

from gateway.seals import ACCOUNT_SUBJECT, Seals
from gateway.store import WebhookDeliveryRow, WebhookRow, affected
from gateway.webhooks import (
    DELIVERED,
    DISABLED,
    FAILED,
    NOT_PUBLIC,
    PENDING,
    refused_address,
    secret_context,
)
from mixip.runtime import logs
from mixip.runtime.checkpoints import Checkpoint, no_checkpoint
from mixip.runtime.db import Database
from mixip.runtime.times import Clock
from mixip.runtime.worker import Worker

logger = logging.getLogger("mixip.gateway.webhooks")

# The waits after the 1st, 2nd, ... failed attempt (Standard Webhooks' suggested schedule); the
# attempt after the last wait is the last one.
RETRY_DELAYS = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
PURGE_EVERY = timedelta(hours=1)
PURGE_BATCH = 1000


class AddressRefused(Exception):
    """The URL's host resolved to an address outside the rules (gateway/webhooks.py)."""


@dataclass(frozen=True)
class Attempt:
    delivery_id: int
    message_id: str
    webhook_id: str
    account_id: str
    payload: str
    attempts: int  # before this one


class WebhookDeliverer:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        seals: Seals,
        *,
        timeout_seconds: float = 10.0,
        retention: timedelta = timedelta(days=30),
        allow_private: bool = False,
        poll_seconds: float = 1.0,
        lease_seconds: float = 60.0,
        batch_size: int = 50,
    ) -> None:
        self.db = db
        self.clock = clock
        self.seals = seals
        self.timeout = urllib3.Timeout(total=timeout_seconds)
        self.retention = retention
        self.allow_private = allow_private
        self.lease = max(timedelta(seconds=lease_seconds), timedelta(seconds=timeout_seconds * 2))
        self.batch_size = batch_size
        # Tests pause a pass between its claim and its sends through this hook.
        self.checkpoint: Checkpoint = no_checkpoint
        self._purged_at: datetime | None = None
        # After a pass that found less than a full batch (or failed), it waits `poll_seconds` or
        # until a commit owes deliveries (`wake`, called by gateway/webhooks.py).
        self.worker = Worker("gateway-webhooks", self._pass, poll_seconds=poll_seconds)

    # -- lifecycle (mixip/runtime/worker.py) ----------------------------------------------------

    def start(self) -> None:
        self.worker.start()

    def wake(self) -> None:
        self.worker.wake()

    def stop(self) -> None:
        self.worker.stop()

    def _pass(self) -> bool:
        """One pass of the deliverer: a batch, then the purge when `PURGE_EVERY` has passed
        since the last; whether the batch was full (more may be due)."""
        sent = self.run_once()
        now = self.clock()
        if self._purged_at is None or now - self._purged_at >= PURGE_EVERY:
            self.purge(now)
            self._purged_at = now
        return sent >= self.batch_size

    # -- delivery ------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Claims the due deliveries (one batch) and makes one attempt of each; how many."""
        claimed = self._claim()
        if claimed:
            self.checkpoint("webhooks.claimed")
        for attempt in claimed:
            self._attempt(attempt)
        return len(claimed)

    def _claim(self) -> list[Attempt]:
        now = self.clock()
        with self.db.write() as session:
            rows = session.execute(
                select(
                    WebhookDeliveryRow.id,
                    WebhookDeliveryRow.message_id,
                    WebhookDeliveryRow.webhook_id,
                    WebhookDeliveryRow.account_id,
                    WebhookDeliveryRow.payload,
                    WebhookDeliveryRow.attempts,
                )
                .where(WebhookDeliveryRow.state == PENDING, WebhookDeliveryRow.due_at <= now)
                .order_by(WebhookDeliveryRow.due_at, WebhookDeliveryRow.id)
                .limit(self.batch_size)
                .with_for_update(skip_locked=True)  # PostgreSQL; SQLite's writers are serial
            ).all()
            if rows:
                session.execute(
                    update(WebhookDeliveryRow)
                    .where(WebhookDeliveryRow.id.in_([r.id for r in rows]))
                    .values(due_at=now + self.lease)
                )
        return [Attempt(*row) for row in rows]

    def _attempt(self, attempt: Attempt) -> None:
        with self.db.read() as session:
            endpoint = session.get(WebhookRow, attempt.webhook_id)
            if endpoint is None:  # removed meanwhile: its deliveries went with it
                return
            key = self.seals.keys(session, attempt.account_id, [ACCOUNT_SUBJECT], create=False)
        account_key = key.get(ACCOUNT_SUBJECT)
        if endpoint.disabled_at is not None or account_key is None:
            self._finish(attempt, DISABLED, "endpoint disabled")
            return
        now = self.clock()
        webhook_id = endpoint.webhook_id
        secrets = [
            account_key.open_text(endpoint.sealed_secret, secret_context(webhook_id, "current"))
        ]
        previous, until = endpoint.sealed_previous_secret, endpoint.previous_expires_at
        if previous is not None and until is not None and now < until:
            secrets.append(account_key.open_text(previous, secret_context(webhook_id, "previous")))
        headers = {
            "content-type": "application/json",
            "user-agent": "mixip-webhooks/1",
            "webhook-id": attempt.message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": " ".join(
                Signer(secret).sign(attempt.message_id, now, attempt.payload) for secret in secrets
            ),
        }
        try:
            status = self._post(endpoint.url, attempt.payload.encode(), headers)
        except AddressRefused:
            outcome = "address refused"
        except urllib3.exceptions.NewConnectionError:  # before TimeoutError, its base class
            outcome = "connection failed"
        except urllib3.exceptions.TimeoutError:
            outcome = "timeout"
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            outcome = f"error {type(exc).__name__}"
        else:
            if 200 <= status < 300:
                self._finish(attempt, DELIVERED, f"HTTP {status}")
                return
            if status == 410:
                self._disable(attempt)
                return
            outcome = f"HTTP {status}"
        self._retry_later(attempt, outcome)

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """One POST to the address the URL's host resolves to, once checked; its status."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = self._resolve(host, port)
        pool: urllib3.HTTPConnectionPool
        if parts.scheme == "https":
            pool = urllib3.HTTPSConnectionPool(
                address,
                port,
                timeout=self.timeout,
                retries=False,
                server_hostname=host,
                assert_hostname=host,
                cert_reqs="CERT_REQUIRED",
            )
        else:
            pool = urllib3.HTTPConnectionPool(address, port, timeout=self.timeout, retries=False)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        with pool:
            response = pool.urlopen(
                "POST",
                target,
                body=body,
                headers={**headers, "host": parts.netloc},
                redirect=False,
                retries=False,
                assert_same_host=False,
                preload_content=False,  # the answer's body is not read
            )
            response.close()
            return response.status

    def _resolve(self, host: str, port: int) -> str:
        """The address to connect to: the first the host resolves to, unless any of them is
        refused (a name that points into the mesh once is not trusted at all)."""
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [str(info[4][0]) for info in found]
        if not addresses:
            raise OSError(f"{host} resolved to no address")
        if not self.allow_private and any(refused_address(a) for a in addresses):
            raise AddressRefused(f"the host {NOT_PUBLIC}")
        return addresses[0]

    # -- outcomes ------------------------------------------------------------------------------

    def _finish(self, attempt: Attempt, state: str, outcome: str) -> None:
        now = self.clock()
        with self.db.write() as session:
            session.execute(
                update(WebhookDeliveryRow)
                .where(WebhookDeliveryRow.id == attempt.delivery_id)
                .values(
                    state=state,
                    attempts=attempt.attempts + 1 if state == DELIVERED else attempt.attempts,
                    due_at=None,
                    finished_at=now,
                    last_outcome=outcome,
                )
            )

    def _disable(self, attempt: Attempt) -> None:
        """410 Gone: the endpoint is disabled with every delivery still owed to it."""
        now = self.clock()
        with self.db.write() as session:
            session.execute(
                update(WebhookRow)
                .where(WebhookRow.webhook_id == attempt.webhook_id)
                .values(disabled_at=now)
            )
            session.execute(
                update(WebhookDeliveryRow)
                .where(
                    WebhookDeliveryRow.webhook_id == attempt.webhook_id,
                    WebhookDeliveryRow.state == PENDING,
                )
                .values(state=DISABLED, due_at=None, finished_at=now, last_outcome="HTTP 410")
            )
        logs.log(
            logger,
            "webhook disabled: the endpoint answered 410 Gone",
            level=logging.WARNING,
            account=attempt.account_id,
            webhook=attempt.webhook_id,
        )

    def _retry_later(self, attempt: Attempt, outcome: str) -> None:
        attempts = attempt.attempts + 1
        now = self.clock()
        last = attempts > len(RETRY_DELAYS)
        with self.db.write() as session:
            session.execute(
                update(WebhookDeliveryRow)
                .where(
                    WebhookDeliveryRow.id == attempt.delivery_id,
                    WebhookDeliveryRow.state == PENDING,
                )
                .values(
                    attempts=attempts,
                    state=FAILED if last else PENDING,
                    due_at=None if last else now + RETRY_DELAYS[attempts - 1],
                    finished_at=now if last else None,
                    last_outcome=outcome[:64],
                )
            )
        logs.log(
            logger,
            "webhook delivery failed; given up" if last else "webhook delivery failed; will retry",
            level=logging.WARNING,
            account=attempt.account_id,
            webhook=attempt.webhook_id,
            message=attempt.message_id,
            attempts=attempts,
            outcome=outcome,
        )

    # -- retention -----------------------------------------------------------------------------

    def purge(self, now: datetime) -> int:
        """Deletes finished deliveries older than the retention period, a bounded batch at a
        time until none is left; how many."""
        cutoff = now - self.retention
        deleted = 0
        while True:
            with self.db.write() as session:
                ids = session.scalars(
                    select(WebhookDeliveryRow.id)
                    .where(WebhookDeliveryRow.finished_at < cutoff)
                    .order_by(WebhookDeliveryRow.id)
                    .limit(PURGE_BATCH)
                ).all()
                if ids:
                    deleted += affected(
                        session,
                        delete(WebhookDeliveryRow).where(WebhookDeliveryRow.id.in_(ids)),
                    )
            if len(ids) < PURGE_BATCH:
                break
        if deleted:
            logs.log(logger, "finished webhook deliveries purged", deliveries=deleted)
        return deleted
