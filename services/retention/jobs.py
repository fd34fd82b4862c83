"""What the jobs do, through the peers' ports (services/retention/peers.py): purge asks audit to
delete expired events and the gateway to delete expired stored media (results and objects)
and access-log entries,
reconcile asks the matcher what is enrolled and consent whether it may stay.

Both are idempotent (a repeated purge finds nothing older than the cutoff; a repeated deletion
deletes nothing), which is why manual runs need no lock. rotate-vault is not idempotent but
harmless to repeat (one more key version), and audit runs rotations one at a time. Talent ids
pass through memory only: they are never logged, and a failure names the call and its status
code, never a message.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from mixip.runtime.limits import DEFAULT_ROW_PURGE_BATCH, MAX_BATCH
from services.retention.domain import Tally
from services.retention.peers import AuditPort, GatewayPort, PeerFailure, Peers

# Stored media deleted per PurgeExpiredMedia call: each deletes an object, so a call stays short.
MEDIA_BATCH = 100
# Access-log entries deleted per PurgeAccessLog call (rows only): the gateway's default batch.
ACCESS_LOG_BATCH = DEFAULT_ROW_PURGE_BATCH


class PurgeStalled(Exception):
    """Audit reported neither progress nor completion; stop rather than loop on it."""


def one_line(error: Exception) -> str:
    """The run's error as stored and returned: the failed call and code, or the exception type
    (never a foreign exception's message: driver errors quote SQL parameters)."""
    return str(error) if isinstance(error, PeerFailure) else type(error).__name__


def purge(audit: AuditPort, cutoff: datetime, batch: int, tally: Tally) -> None:
    """Purges events recorded before `cutoff`, `batch` at a time (each call is one audit
    transaction), until audit says none is left."""
    while True:
        purged, salts, done = audit.purge_expired(cutoff, batch)
        tally.events_purged += purged
        if done:
            return
        if not (purged or salts):  # the last calls may delete idle salts only
            raise PurgeStalled


def purge_media(gateway: GatewayPort, as_of: datetime, tally: Tally) -> None:
    """Asks the gateway to delete stored media past their account's retention period at
    `as_of` (rows, results, objects), then orphaned objects, a batch per call, until done."""
    while True:
        batch = gateway.purge_expired_media(as_of, MEDIA_BATCH)
        tally.media_purged += batch.media_deleted
        tally.media_objects_deleted += batch.objects_deleted
        if batch.done:
            return
        if not (batch.media_deleted or batch.objects_deleted):
            raise PurgeStalled


def purge_access_log(gateway: GatewayPort, as_of: datetime, tally: Tally) -> None:
    """Asks the gateway to delete access-log entries past its retention period at `as_of`,
    oldest first, a batch per call, until none is left."""
    while True:
        deleted, done = gateway.purge_access_log(as_of, ACCESS_LOG_BATCH)
        tally.access_log_purged += deleted
        if done:
            return
        if not deleted:
            raise PurgeStalled


def reconcile(peers: Peers, tally: Tally, started_at: datetime) -> None:
    """Deletes the face vectors of every enrolled talent whose biometric consent is not ACTIVE
    (revoked, or absent because the talent was erased), enrolled before the run started (a
    face enrolled during the run came with consent granted after this run read it).

    The whole listing is read before anything is deleted, so deletions cannot shift the pages
    still to be read, whatever the matcher's page tokens are made of."""
    for account_id, talents in peers.matcher.enrolled_talents().items():
        for batch in _chunks(talents, MAX_BATCH):
            lacking = peers.consent.without_biometric_consent(account_id, batch)
            tally.talents_checked += len(batch)
            for talent_id in lacking:
                tally.vectors_deleted += peers.matcher.delete_faces(
                    account_id, talent_id, started_at
                )


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
