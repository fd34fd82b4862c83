"""Audit use cases, each one unit of work: record, list, prove, verify, shred; `AuditLog`
composes them with the purge (purge.py) and the partitions (partitions.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row
from sqlalchemy.orm import Session

from mixip.runtime import logs
from mixip.runtime.db import Database, bulk_insert
from mixip.runtime.errors import FailedPrecondition, Unavailable
from mixip.runtime.idempotency import require_same
from mixip.runtime.paging import fetch_limit, page_of
from mixip.runtime.times import Clock, as_utc
from mixip.runtime.worker import Worker
from mixip.tlog.checkpoint import Checkpoint as TreeCheckpoint
from mixip.tlog.checkpoint import sign_checkpoint
from mixip.tlog.merkle import HashReader, NodeId, range_nodes, root_hash
from mixip.tlog.proof import (
    ProofError,
    consistency_ranges,
    folded,
    inclusion_ranges,
    prove_consistency,
    tilings,
    verify_consistency,
)
from services.audit.domain import (
    GENESIS_HASH,
    KIND_MATCH,
    NO_DECISION,
    ChainedEvent,
    ChainVerdict,
    EventContent,
    StoredLink,
    link_hash,
    talent_hash,
    verify_chain,
)
from services.audit.partitions import Partitions
from services.audit.purge import Purge
from services.audit.signer import LogSigner
from services.audit.store import (
    ChainHead,
    Checkpoint,
    EventRow,
    SignedCheckpointRow,
    add_shred_marker,
    chain_heads,
    event_row,
    events_after,
    events_by_key,
    events_page,
    head_and_size,
    locked_chain_head,
    marked,
    proof_read,
    remove_shred_marker,
    signed_note_of_size,
)
from services.audit.tree import StoredTree
from services.audit.vault import Rotation, SaltVault, VaultStatus
from services.audit.witnesses import Witnessing

logger = logging.getLogger("mixip.audit")


@dataclass(frozen=True)
class NewEvent:
    idempotency_key: str
    project_id: str
    media_id: str
    face_index: int
    label: int
    reason: int
    similarity: float
    talent_id: str  # "" when the face matched no talent
    actor: str
    occurred_at: datetime
    kind: int = KIND_MATCH
    decision: int = NO_DECISION  # review decisions only


@dataclass(frozen=True)
class _Recorded:
    """What a repeated idempotency key must match (similarities compared as stored)."""

    project_id: str
    media_id: str
    face_index: int
    label: int
    reason: int
    similarity: float
    talent_hash: bytes | None
    kind: int
    decision: int


def _recorded(event: NewEvent, salts: dict[str, bytes], shredded: set[str]) -> _Recorded:
    hashed = None
    if event.talent_id and event.talent_id not in shredded:
        salt = salts.get(event.talent_id)
        # no salt: the talent was erased since; nothing stored can match this event
        hashed = talent_hash(salt, event.talent_id) if salt else b"erased"
    return _Recorded(
        event.project_id,
        event.media_id,
        event.face_index,
        event.label,
        event.reason,
        event.similarity,
        hashed,
        event.kind,
        event.decision,
    )


@dataclass(frozen=True)
class EventFilter:
    account_id: str
    talent_id: str = ""
    project_id: str = ""
    since: datetime | None = None


@dataclass(frozen=True)
class LogVerdict:
    ok: bool
    events_checked: int
    chains_checked: int
    first_broken_sequence: int = 0
    broken_account_id: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Inclusion:
    """An event's place in a tree: its leaf index, the inclusion proof (RFC 9162 order), and
    its leaf bytes (empty when the event was purged: its leaf stays in the tree)."""

    leaf_index: int
    hashes: list[bytes]
    leaf: bytes


class TreeNotReached(ProofError):
    """A proof asked of a tree size that the account's tree has not reached."""


class AuditLog:
    def __init__(
        self,
        db: Database,
        vault: SaltVault,
        clock: Clock,
        *,
        signer: LogSigner | None = None,
        witnessing: Witnessing | None = None,
        step: Callable[[str], None] | None = None,
    ) -> None:
        """`signer` signs checkpoints (None: the log signs none, FAILED_PRECONDITION);
        `witnessing`: the witnesses whose cosignatures a checkpoint needs before it is
        published (None: published on the log's signature alone).
        `step`: the purge's step hook (purge.py). Makes the partitions ahead (PostgreSQL)."""
        self.db = db
        self.vault = vault
        self.clock = clock
        self.signer = signer
        self.witnessing = witnessing
        self._leaf_offsets: dict[str, int] = {}  # per account: the event before leaf 0
        self.partitions = Partitions(db, clock)
        self.expiry = Purge(db, vault, clock, self.partitions, step)
        self.partitions.ahead()

    # -- record -------------------------------------------------------------------------------

    def record(self, account_id: str, events: list[NewEvent]) -> tuple[int, int]:
        """Appends events to the account's chain; returns (recorded, duplicates)."""
        with self.db.write() as session:
            head = locked_chain_head(session, account_id)
            keys = [e.idempotency_key for e in events]
            stored: dict[str, _Recorded | None] = {
                row.idempotency_key: _Recorded(
                    row.project_id,
                    row.media_id,
                    row.face_index,
                    row.label,
                    row.reason,
                    row.similarity,
                    row.talent_hash,
                    row.kind,
                    row.decision,
                )
                for row in events_by_key(session, account_id, keys)
            }
            fresh: list[NewEvent] = []
            repeated: list[NewEvent] = []
            for event in events:
                if event.idempotency_key in stored:
                    repeated.append(event)
                else:
                    stored[event.idempotency_key] = None  # recorded below
                    fresh.append(event)
            talents = {e.talent_id for e in events if e.talent_id}
            # An erased talent (shred marker) gets no salt and no hash: its events are recorded
            # unlinkable. The chain head locked above serializes this with ShredTalentSalt.
            shredded = self._shredded(session, account_id, talents)
            # Most talents were seen before: read their salts, create only the missing ones
            # (and only for events about to be recorded).
            salts = self.vault.salts(session, account_id, talents - shredded, create=False)
            missing = {e.talent_id for e in fresh if e.talent_id} - set(salts) - shredded
            if missing:
                salts |= self.vault.salts(session, account_id, missing, create=True)
            first_of = {e.idempotency_key: e for e in fresh}
            for event in repeated:
                self._check_repeat(event, stored[event.idempotency_key], first_of, salts, shredded)
            recorded_at = max(self.clock(), as_utc(head.last_recorded_at))
            sequence, prev = head.last_sequence, head.last_hash
            rows, leaves = [], []
            for event in fresh:
                sequence += 1
                content = EventContent(
                    account_id=account_id,
                    sequence=sequence,
                    idempotency_key=event.idempotency_key,
                    project_id=event.project_id,
                    media_id=event.media_id,
                    face_index=event.face_index,
                    label=event.label,
                    reason=event.reason,
                    similarity=event.similarity,
                    talent_hash=(
                        talent_hash(salts[event.talent_id], event.talent_id)
                        if event.talent_id and event.talent_id not in shredded
                        else None
                    ),
                    actor=event.actor,
                    occurred_at=event.occurred_at,
                    recorded_at=recorded_at,
                    kind=event.kind,
                    decision=event.decision,
                )
                leaf = content.canonical()
                digest = link_hash(prev, leaf)
                rows.append(_row(content, prev, digest))
                leaves.append(leaf)
                prev = digest
            bulk_insert(session, EventRow.__table__, rows)  # COPY on PostgreSQL
            StoredTree(session, account_id).append(leaves)
            linked = {e.talent_id for e in fresh if e.talent_id} - shredded
            if linked:  # an erased talent's events leave no trace keyed by the talent
                self.vault.touch(session, account_id, linked, recorded_at)
            head.last_sequence, head.last_hash = sequence, prev
            head.last_recorded_at = recorded_at
        duplicates = len(events) - len(fresh)
        logs.log(
            logger,
            "events recorded",
            account=account_id,
            recorded=len(fresh),
            duplicates=duplicates,
        )
        return len(fresh), duplicates

    def _check_repeat(
        self,
        event: NewEvent,
        recorded: _Recorded | None,
        first_of: dict[str, NewEvent],
        salts: dict[str, bytes],
        shredded: set[str],
    ) -> None:
        """A retry must say what the first call said: a reused key with other content (labels
        that changed between attempts, a talent erased meanwhile) is refused, so no caller can
        act on results whose events differ from the ones recorded."""
        if recorded is None:  # the same key twice in this batch
            recorded = _recorded(first_of[event.idempotency_key], salts, shredded)
        require_same(
            recorded, _recorded(event, salts, shredded), "idempotency_key", event.idempotency_key
        )

    def _shredded(self, session: Session, account_id: str, talents: set[str]) -> set[str]:
        """The talents among `talents` that carry a shred marker."""
        lookups = {self.vault.lookup(account_id, t): t for t in talents}
        if not lookups:
            return set()
        return {lookups[lookup] for lookup in marked(session, list(lookups))}

    # -- list ---------------------------------------------------------------------------------

    def list_events(
        self, where: EventFilter, page_size: int, after_sequence: int
    ) -> tuple[list[ChainedEvent], int | None]:
        """A page of events oldest first, and the sequence to continue after (None at the end).
        A talent filter matches nothing once the talent's salt is gone."""
        with self.db.read() as session:
            hashed = None
            if where.talent_id:
                salts = self.vault.salts(session, where.account_id, [where.talent_id], create=False)
                if not salts:
                    return [], None
                hashed = talent_hash(salts[where.talent_id], where.talent_id)
            rows = events_page(
                session,
                where.account_id,
                after_sequence,
                fetch_limit(page_size),
                talent_hash=hashed,
                project_id=where.project_id,
                since=where.since,
            )
        page, position = page_of(rows, page_size, lambda event: event.sequence)
        return [
            ChainedEvent(_content(row), row.prev_hash, row.event_hash) for row in page
        ], position

    # -- tree (docs/audit-log.md) --------------------------------------------------------------

    def tree_head(self, account_id: str) -> tuple[int, bytes]:
        """The size and RFC 9162 root hash of the account's tree (0 and the empty root before
        its first event)."""
        with self.db.read(snapshot=True) as session:
            tree = StoredTree(session, account_id)
            size = tree.size()
            return size, root_hash(tree, size)

    def inclusion_proof(self, account_id: str, sequence: int, tree_size: int) -> Inclusion:
        """Event `sequence`'s leaf index, its inclusion proof in the tree of `tree_size`
        leaves, and its leaf bytes (empty once purged); TreeNotReached if the tree has not
        reached that size, ProofError if that tree does not hold the event."""
        # Leaf i is event `offset + 1 + i`, offset = last_sequence - size: fixed per account
        # (an append adds a leaf per event), so the proof's nodes are read in the same
        # statement as the head and size that confirm the offset guessed from the last proof.
        guess = self._leaf_offsets.get(account_id, 0)
        while True:
            index = sequence - 1 - guess
            held = 0 <= index < tree_size
            nodes = tilings(inclusion_ranges(index, tree_size)) if held else []
            last_sequence, size, hashes, row = self._proof_read(
                account_id, sequence, [node for tiling in nodes for node in tiling]
            )
            if tree_size > size:
                raise TreeNotReached(f"the tree has not reached {tree_size} leaves")
            if last_sequence - size == guess:
                break
            guess = self._leaf_offsets[account_id] = last_sequence - size
        if not held:
            raise ProofError(f"leaf index {index} is not in a tree of {tree_size} leaves")
        if len(hashes) != sum(map(len, nodes)):
            raise KeyError(f"a node of the proof of leaf {index} is not stored")
        return Inclusion(index, folded(nodes, hashes), _content(row).canonical() if row else b"")

    def _proof_read(
        self, account_id: str, sequence: int, ids: list[NodeId]
    ) -> tuple[int, int, list[bytes], Row[Any] | None]:
        """The account's last sequence, its tree's size, the hashes of `ids` (when stored) and
        event `sequence`'s row: one statement, no transaction around it, on PostgreSQL."""
        if self.db.dialect == "postgresql":
            with self.db.autocommit() as connection:
                return proof_read(connection, account_id, sequence, ids)
        with self.db.read() as session:
            tree = StoredTree(session, account_id)
            connection = session.connection()  # Core rows: no ORM entities to build
            last_sequence, size = head_and_size(connection, account_id, tree.size_query())
            row = event_row(connection, account_id, sequence)
            try:
                hashes = tree.read_hashes(ids)
            except KeyError:  # past the tree (a size it has not reached, or a wrong guess)
                hashes = []
            return last_sequence, size, hashes, row

    def consistency_proof(self, account_id: str, old_size: int, new_size: int) -> list[bytes]:
        """The proof that the account's tree of `new_size` leaves extends the one of
        `old_size`; TreeNotReached if the tree has not reached `new_size`, ProofError for sizes
        out of order."""
        with self.db.read(snapshot=True) as session:
            tree = StoredTree(session, account_id)
            if new_size > tree.size():
                raise TreeNotReached(f"the tree has not reached {new_size} leaves")
            return prove_consistency(tree, old_size, new_size)

    def _signer(self) -> LogSigner:
        if self.signer is None:
            raise FailedPrecondition("this audit log has no signing key", reason="NO_LOG_KEY")
        return self.signer

    def public_key(self, account_id: str) -> str:
        """The note verifier key of the account's checkpoints."""
        return self._signer().vkey(account_id)

    def checkpoint(self, account_id: str) -> str:
        """The signed checkpoint (C2SP note) of the account's current tree: the one signed last
        if the tree has not grown since, else a new one, signed only if the tree extends the
        one signed last (FailedPrecondition INCONSISTENT_TREE, logged, otherwise)."""
        signer = self._signer()
        with self.db.read() as session:  # one statement: one snapshot
            tree = StoredTree(session, account_id)
            unchanged = signed_note_of_size(session, account_id, tree.size_query())
            if unchanged is not None:
                return unchanged
        with self.db.write() as session:
            locked_chain_head(session, account_id)  # one signer at a time, no append meanwhile
            tree = StoredTree(session, account_id)
            size = tree.size()
            kept = session.get(SignedCheckpointRow, account_id)
            # every node the root and the consistency proof need, in one read
            nodes = _Prefetched(tree, size, kept.tree_size if kept is not None else 0)
            root = root_hash(nodes, size)
            if kept is not None:
                if kept.tree_size == size and kept.root_hash == root:
                    return kept.note
                self._check_extends(nodes, account_id, kept, size, root)
            note = sign_checkpoint(
                TreeCheckpoint(signer.origin(account_id), size, root),
                signer.for_account(account_id),
            )
            if self.witnessing is None:
                self._publish(session, account_id, size, root, note)
        if self.witnessing is not None:
            kept_size = kept.tree_size if kept is not None else 0
            note = self._witnessed(account_id, note, kept_size, size)
            with self.db.write() as session:
                locked_chain_head(session, account_id)
                self._publish(session, account_id, size, root, note)
        logs.log(logger, "checkpoint signed", account=account_id, tree_size=size)
        return note

    def _witnessed(self, account_id: str, note: str, kept_size: int, size: int) -> str:
        """`note` with the cosignatures of the witnesses that cosigned it, asked outside any
        transaction (appends go on meanwhile); Unavailable WITNESS_QUORUM, logged, when fewer
        than the quorum did: the checkpoint is not published."""
        assert self.witnessing is not None and self.signer is not None

        def prove(old: int) -> list[bytes]:
            if not 0 < old < size:
                return []
            with self.db.read(snapshot=True) as session:
                return prove_consistency(StoredTree(session, account_id), old, size)

        verifier = self.signer.for_account(account_id).verifier()
        lines, refusals = self.witnessing.cosign(note, verifier, kept_size, prove)
        if len(lines) < self.witnessing.quorum:
            logs.log(
                logger,
                "checkpoint not published: too few witness cosignatures",
                level=logging.ERROR,
                account=account_id,
                tree_size=size,
                cosigned=len(lines),
                quorum=self.witnessing.quorum,
                refusals="; ".join(refusals),
            )
            raise Unavailable(
                f"{len(lines)} of {self.witnessing.quorum} witness cosignatures needed to "
                f"publish the checkpoint of {size} leaves",
                reason="WITNESS_QUORUM",
            )
        return note + "".join(lines)

    def _publish(
        self, session: Session, account_id: str, size: int, root: bytes, note: str
    ) -> None:
        """Keeps `note` as the account's published checkpoint, unless one at least as large was
        published meanwhile (another replica)."""
        kept = session.get(SignedCheckpointRow, account_id)
        if kept is None:
            kept = SignedCheckpointRow(account_id=account_id)
            session.add(kept)
        elif kept.tree_size > size:
            return
        kept.tree_size, kept.root_hash, kept.note = size, root, note
        kept.signed_at = self.clock()

    def sign_grown(self) -> None:
        """Signs the checkpoint of every account whose tree grew since its last one (a refused
        one is logged by `checkpoint` and skipped)."""
        with self.db.read() as session:
            accounts = [head.account_id for head in chain_heads(session)]
        for account_id in accounts:
            try:
                self.checkpoint(account_id)
            except (FailedPrecondition, Unavailable):  # logged; tried again at the next pass
                continue

    def _check_extends(
        self,
        tree: HashReader,
        account_id: str,
        kept: SignedCheckpointRow,
        size: int,
        root: bytes,
    ) -> None:
        try:
            if size < kept.tree_size:
                raise ProofError(f"the tree shrank from {kept.tree_size} to {size} leaves")
            proof = prove_consistency(tree, kept.tree_size, size)
            verify_consistency(kept.tree_size, size, kept.root_hash, root, proof)
        except (ProofError, KeyError) as exc:
            detail = str(exc) if isinstance(exc, ProofError) else "a tree node is missing"
            logs.log(
                logger,
                "checkpoint refused: the tree does not extend the last signed one",
                level=logging.ERROR,
                account=account_id,
                signed_size=kept.tree_size,
                tree_size=size,
                detail=detail,
            )
            raise FailedPrecondition(
                f"refusing to sign: the tree of {size} leaves does not extend the checkpoint "
                f"signed at {kept.tree_size} leaves ({detail})",
                reason="INCONSISTENT_TREE",
            ) from None

    # -- verify -------------------------------------------------------------------------------

    def verify(self, account_id: str = "") -> LogVerdict:
        """Recomputes every link of one account's chain (or of all) in one consistent snapshot."""
        checked = chains = 0
        with self.db.read(snapshot=True) as session:
            for head in chain_heads(session, account_id):
                verdict = self._verify_one(session, head)
                checked += verdict.checked
                chains += 1
                if not verdict.ok:
                    return LogVerdict(
                        False,
                        checked,
                        chains,
                        verdict.first_broken_sequence,
                        head.account_id,
                        verdict.detail,
                    )
        return LogVerdict(True, checked, chains, detail=f"{chains} chain(s) intact")

    def _verify_one(self, session: Session, head: ChainHead) -> ChainVerdict:
        checkpoint = session.get(Checkpoint, head.account_id)
        start = checkpoint.through_sequence if checkpoint else 0
        # events at or before the checkpoint are being purged (partitions not dropped yet)
        rows = events_after(session, head.account_id, start)
        links = (StoredLink(_content(row), row.prev_hash, row.event_hash) for row in rows)
        return verify_chain(
            links,
            start_sequence=start,
            start_hash=checkpoint.through_hash if checkpoint else GENESIS_HASH,
            head_sequence=head.last_sequence,
            head_hash=head.last_hash,
        )

    # -- shred --------------------------------------------------------------------------------

    def shred(self, account_id: str, talent_id: str) -> tuple[bool, datetime]:
        """Destroys the salt and leaves a shred marker, in one transaction that holds the
        account's chain head: a concurrent append either ran before (its events lose their
        link with the salt) or runs after and sees the marker (no salt is made again)."""
        now = self.clock()
        with self.db.write() as session:
            locked_chain_head(session, account_id)
            destroyed = self.vault.shred(session, account_id, talent_id)
            add_shred_marker(session, self.vault.lookup(account_id, talent_id), account_id, now)
        logs.log(logger, "salt shredded", account=account_id, destroyed=destroyed)
        return destroyed, now

    def lift_marker(self, account_id: str, talent_id: str) -> bool:
        """Lifts the talent's shred marker (a biometric consent was recorded after the
        erasure): its next events get a new salt, unlinked to anything before. True when
        there was a marker. An append racing the lift is recorded unlinkable or with the new
        salt, either being right for an event recorded as the new life begins."""
        with self.db.write() as session:
            lifted = remove_shred_marker(session, self.vault.lookup(account_id, talent_id))
        logs.log(logger, "shred marker lifted", account=account_id, lifted=lifted)
        return lifted

    # -- vault --------------------------------------------------------------------------------

    def rotate_vault(self) -> Rotation:
        return self.vault.rotate()

    def vault_status(self) -> VaultStatus:
        return self.vault.status()

    # -- purge (purge.py) ---------------------------------------------------------------------

    def purge(self, cutoff: datetime, batch_size: int) -> tuple[int, bool, int, int]:
        """Purges events recorded before `cutoff`: `Purge.purge`."""
        return self.expiry.purge(cutoff, batch_size)


class _Prefetched:
    """The nodes of a tree of `size` leaves that its root hash and the consistency proof from
    `old_size` read, fetched in one query (a HashReader; KeyError for any other node)."""

    def __init__(self, tree: StoredTree, size: int, old_size: int) -> None:
        wanted = set(range_nodes(0, size))
        if 0 <= old_size <= size:
            for start, end in consistency_ranges(old_size, size):
                wanted.update(range_nodes(start, end))
        ids = list(wanted)
        self.tree: StoredTree | None = None
        try:
            self.nodes = dict(zip(ids, tree.read_hashes(ids), strict=True))
        except KeyError:  # a node is missing: the tree's own reads say where it matters
            self.nodes, self.tree = {}, tree

    def read_hashes(self, ids: Sequence[NodeId]) -> list[bytes]:
        if self.tree is not None:
            return self.tree.read_hashes(ids)
        return [self.nodes[node] for node in ids]


class CheckpointKeeper(Worker):
    """Signs grown trees' checkpoints every `seconds` on a background worker (started here; a
    failure is logged and tried again at the next tick). `stop()` ends it."""

    def __init__(self, log: AuditLog, seconds: float) -> None:
        super().__init__(
            "audit-checkpoints",
            self._sign,
            poll_seconds=seconds,
            wait_first=True,
            on_error=self._failed,
        )
        self.log = log
        self.start()

    def _sign(self) -> bool:
        self.log.sign_grown()
        return False

    def _failed(self, exc: Exception) -> None:
        """The next tick tries again."""
        logs.log(logger, "checkpoint signing failed", error=type(exc).__name__)


def _content(row: EventRow | Row[Any]) -> EventContent:
    return EventContent(
        account_id=row.account_id,
        sequence=row.sequence,
        idempotency_key=row.idempotency_key,
        project_id=row.project_id,
        media_id=row.media_id,
        face_index=row.face_index,
        label=row.label,
        reason=row.reason,
        similarity=row.similarity,
        talent_hash=row.talent_hash,
        actor=row.actor,
        occurred_at=row.occurred_at,
        recorded_at=row.recorded_at,
        kind=row.kind,
        decision=row.decision,
    )


def _row(content: EventContent, prev_hash: str, event_hash: str) -> dict[str, Any]:
    return {
        "account_id": content.account_id,
        "sequence": content.sequence,
        "idempotency_key": content.idempotency_key,
        "project_id": content.project_id,
        "media_id": content.media_id,
        "face_index": content.face_index,
        "label": content.label,
        "reason": content.reason,
        "similarity": content.similarity,
        "talent_hash": content.talent_hash,
        "actor": content.actor,
        "occurred_at": content.occurred_at,
        "recorded_at": content.recorded_at,
        "prev_hash": prev_hash,
        "event_hash": event_hash,
        "kind": content.kind,
        "decision": content.decision,
    }
