"""Audit use cases, each one unit of work: record, list, verify, shred, purge."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Connection, Row, and_, column, delete, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from mixip.runtime import logs
from mixip.runtime.db import Database, bulk_insert, insert_ignoring_conflicts, rowcount, serialize
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
from services.audit.signer import LogSigner
from services.audit.store import (
    ChainHead,
    Checkpoint,
    EventRow,
    ShredMarkerRow,
    SignedCheckpointRow,
    detached_partitions,
    ensure_month_partition,
    month_of,
    month_partitions,
    next_month,
)
from services.audit.tree import StoredTree
from services.audit.vault import Rotation, SaltVault, VaultStatus
from services.audit.witnesses import Witnessing

logger = logging.getLogger("mixip.audit")
PURGE_LOCK = "mixip.audit.purge"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Dropping expired partitions locks audit_events against appends for a moment: it waits at
# most this long for the lock (appends queue behind a waiting lock), then tries again.
DROP_LOCK_TIMEOUT_MS = 50
DROP_ATTEMPTS = 5
# Per account: the first and last event recorded before :upper, and the chain head and the
# checkpoint, all in one statement (one snapshot). Each probe is one index descent per
# partition below :upper (partitions are pruned on the literal bound).
_EXPIRED_RANGES = text(
    "SELECT h.account_id, h.last_sequence, c.through_sequence, first.sequence, last.sequence,"
    " last.event_hash FROM audit_chain_heads h"
    " LEFT JOIN audit_checkpoints c ON c.account_id = h.account_id"
    " LEFT JOIN LATERAL (SELECT e.sequence FROM audit_events e WHERE e.account_id ="
    " h.account_id AND e.recorded_at < :upper ORDER BY e.sequence LIMIT 1) first ON true"
    " LEFT JOIN LATERAL (SELECT e.sequence, e.event_hash FROM audit_events e WHERE"
    " e.account_id = h.account_id AND e.recorded_at < :upper ORDER BY e.sequence DESC"
    " LIMIT 1) last ON true"
)


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
class _Expired:
    """One account's events in the partitions a purge drops: sequences first..last."""

    account_id: str
    head_sequence: int
    first: int
    last: int
    last_hash: str


# An inclusion proof's read: the chain head's last sequence, the tree's size (one descent of
# the primary key), the hashes of the proof's nodes in the order asked (two array parameters)
# and the event's row. Prepared once per connection: planning it was a third of its time.
_EVENT_COLUMNS = ", ".join(f"e.{c.name}" for c in EventRow.__table__.c)
_PREPARE_PROOF_READ = (
    "PREPARE mixip_audit_proof_read (text, bigint, smallint[], bigint[]) AS"  # noqa: S608
    " SELECT h.last_sequence, s.size, ARRAY(SELECT n.hash FROM unnest($3, $4)"
    " WITH ORDINALITY AS w(level, node_index, place) JOIN audit_tree_nodes n"
    " ON n.account_id = $1 AND n.level = w.level AND n.node_index = w.node_index"
    f" ORDER BY w.place) AS hashes, {_EVENT_COLUMNS}"
    " FROM (SELECT 1) AS one LEFT JOIN audit_chain_heads h ON h.account_id = $1"
    " LEFT JOIN LATERAL (SELECT node_index + 1 AS size FROM audit_tree_nodes"
    " WHERE account_id = $1 AND level = 0 ORDER BY node_index DESC LIMIT 1) s ON true"
    " LEFT JOIN audit_events e ON e.account_id = $1 AND e.sequence = $2"
)
_PROOF_READ = text(
    "EXECUTE mixip_audit_proof_read (:account, :sequence, :levels, :indexes)"
).columns(
    column("last_sequence", BigInteger),
    column("size", BigInteger),
    column("hashes"),
    *EventRow.__table__.c,
)


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
        `step` is called at a purge's step boundaries ("checkpointed": checkpoints committed,
        expired partitions not detached yet; "detached": detached, not dropped yet), so tests
        can interleave there."""
        self.db = db
        self.vault = vault
        self.clock = clock
        self.signer = signer
        self.witnessing = witnessing
        self._leaf_offsets: dict[str, int] = {}  # per account: the event before leaf 0
        self._step = step or (lambda name: None)
        self.partitions_ahead()

    # -- partitions (PostgreSQL) ----------------------------------------------------------------

    def partitions_ahead(self) -> list[str]:
        """Makes the partitions of the current and the next month unless they exist (at start
        and at every purge); returns the ones made. A no-op on SQLite."""
        if self.db.dialect != "postgresql":
            return []
        return self.partitions_for(self.clock())

    def partitions_for(self, at: datetime) -> list[str]:
        """Makes the partitions of the month of `at` and the next one (PostgreSQL)."""
        made = []
        with self.db.write() as session:
            serialize(session, PURGE_LOCK)  # partition changes wait for each other
            connection = session.connection()
            for month in (month_of(at), next_month(month_of(at))):
                if ensure_month_partition(connection, month):
                    made.append(month.strftime("%Y-%m"))
        if made:
            logs.log(logger, "partitions made", months=",".join(made))
        return made

    # -- record -------------------------------------------------------------------------------

    def record(self, account_id: str, events: list[NewEvent]) -> tuple[int, int]:
        """Appends events to the account's chain; returns (recorded, duplicates)."""
        with self.db.write() as session:
            head = self._locked_head(session, account_id)
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
                for row in session.execute(
                    select(
                        EventRow.idempotency_key,
                        EventRow.project_id,
                        EventRow.media_id,
                        EventRow.face_index,
                        EventRow.label,
                        EventRow.reason,
                        EventRow.similarity,
                        EventRow.talent_hash,
                        EventRow.kind,
                        EventRow.decision,
                    ).where(EventRow.account_id == account_id, EventRow.idempotency_key.in_(keys))
                )
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
        marked = session.scalars(
            select(ShredMarkerRow.lookup).where(ShredMarkerRow.lookup.in_(list(lookups)))
        )
        return {lookups[lookup] for lookup in marked}

    def _locked_head(self, session: Session, account_id: str) -> ChainHead:
        """The account's chain head, locked for this transaction (made on the first append)."""
        locked = select(ChainHead).where(ChainHead.account_id == account_id).with_for_update()
        head = session.scalars(locked).one_or_none()
        if head is not None:
            return head
        insert_ignoring_conflicts(
            session,
            ChainHead.__table__,
            [
                {
                    "account_id": account_id,
                    "last_sequence": 0,
                    "last_hash": GENESIS_HASH,
                    "last_recorded_at": _EPOCH,
                }
            ],
            ["account_id"],
        )
        return session.scalars(locked).one()

    # -- list ---------------------------------------------------------------------------------

    def list_events(
        self, where: EventFilter, page_size: int, after_sequence: int
    ) -> tuple[list[ChainedEvent], int | None]:
        """A page of events oldest first, and the sequence to continue after (None at the end).
        A talent filter matches nothing once the talent's salt is gone."""
        with self.db.read() as session:
            conditions = [
                EventRow.account_id == where.account_id,
                EventRow.sequence > after_sequence,
            ]
            if where.talent_id:
                salts = self.vault.salts(session, where.account_id, [where.talent_id], create=False)
                if not salts:
                    return [], None
                conditions.append(
                    EventRow.talent_hash == talent_hash(salts[where.talent_id], where.talent_id)
                )
            if where.project_id:
                conditions.append(EventRow.project_id == where.project_id)
            if where.since is not None:
                conditions.append(EventRow.occurred_at >= where.since)
            rows = list(
                session.scalars(
                    select(EventRow)
                    .where(and_(*conditions))
                    .order_by(EventRow.sequence)
                    .limit(fetch_limit(page_size))
                )
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
                if "mixip_audit_proof_read" not in connection.info:  # the DBAPI connection's
                    connection.exec_driver_sql(_PREPARE_PROOF_READ)
                    connection.info["mixip_audit_proof_read"] = True
                read = connection.execute(
                    _PROOF_READ,
                    {
                        "account": account_id,
                        "sequence": sequence,
                        "levels": [node.level for node in ids],
                        "indexes": [node.index for node in ids],
                    },
                ).one()
            hashes = [bytes(value) for value in read.hashes]  # bytea: views
            row = read if read.sequence is not None else None
            return read.last_sequence or 0, read.size or 0, hashes, row
        with self.db.read() as session:
            tree = StoredTree(session, account_id)
            connection = session.connection()  # Core rows: no ORM entities to build
            found = connection.execute(
                select(ChainHead.last_sequence, tree.size_query().scalar_subquery()).where(
                    ChainHead.account_id == account_id
                )
            ).one_or_none()
            last_sequence, size = (found[0], found[1] or 0) if found else (0, 0)
            row = connection.execute(
                select(EventRow.__table__).where(
                    EventRow.account_id == account_id, EventRow.sequence == sequence
                )
            ).one_or_none()
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
            unchanged = session.scalar(
                select(SignedCheckpointRow.note).where(
                    SignedCheckpointRow.account_id == account_id,
                    SignedCheckpointRow.tree_size == tree.size_query().scalar_subquery(),
                )
            )
            if unchanged is not None:
                return unchanged
        with self.db.write() as session:
            self._locked_head(session, account_id)  # one signer at a time, no append meanwhile
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
                self._locked_head(session, account_id)
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
            accounts = session.scalars(select(ChainHead.account_id)).all()
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
            query = select(ChainHead).order_by(ChainHead.account_id)
            if account_id:
                query = query.where(ChainHead.account_id == account_id)
            heads = session.scalars(query).all()
            for head in heads:
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
        rows = session.execute(
            select(EventRow)
            # events at or before the checkpoint are being purged (partitions not dropped yet)
            .where(EventRow.account_id == head.account_id, EventRow.sequence > start)
            .order_by(EventRow.sequence)
            .execution_options(yield_per=2000)
        ).scalars()
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
            self._locked_head(session, account_id)
            destroyed = self.vault.shred(session, account_id, talent_id)
            insert_ignoring_conflicts(
                session,
                ShredMarkerRow.__table__,
                [
                    {
                        "lookup": self.vault.lookup(account_id, talent_id),
                        "account_id": account_id,
                        "shredded_at": now,
                    }
                ],
                ["lookup"],
            )
        logs.log(logger, "salt shredded", account=account_id, destroyed=destroyed)
        return destroyed, now

    def lift_marker(self, account_id: str, talent_id: str) -> bool:
        """Lifts the talent's shred marker (a biometric consent was recorded after the
        erasure): its next events get a new salt, unlinked to anything before. True when
        there was a marker. An append racing the lift is recorded unlinkable or with the new
        salt, either being right for an event recorded as the new life begins."""
        with self.db.write() as session:
            lifted = rowcount(
                session.execute(
                    delete(ShredMarkerRow).where(
                        ShredMarkerRow.lookup == self.vault.lookup(account_id, talent_id)
                    )
                )
            )
        logs.log(logger, "shred marker lifted", account=account_id, lifted=bool(lifted))
        return lifted > 0

    # -- vault --------------------------------------------------------------------------------

    def rotate_vault(self) -> Rotation:
        return self.vault.rotate()

    def vault_status(self) -> VaultStatus:
        return self.vault.status()

    # -- purge --------------------------------------------------------------------------------

    def purge(self, cutoff: datetime, batch_size: int) -> tuple[int, bool, int, int]:
        """Purges events recorded before `cutoff`; returns (purged, done, checkpoints, salts
        deleted). Each account's expired events are a prefix of its chain (`recorded_at` never
        decreases along a chain), so a purge moves the chain's checkpoint to the last purged
        event and the rest still verifies. Checkpoints only move forward: purges wait for each
        other (a manual run may overlap a scheduled one).

        On PostgreSQL, whole expired months go first (`_drop_expired_months`): checkpoints
        committed, then the months' partitions detached and dropped, whatever their size. Then,
        as on SQLite, up to `batch_size` of the oldest events still expired (the boundary
        month's, the default partition's) are deleted row by row, in the order of the expiry
        index (recorded_at, account, sequence): finding them reads `batch_size` index entries,
        so a batch costs the same at the start and at the end of a long purge, and concurrent
        appends (which touch other rows: the chain head and new events) never wait for it on
        PostgreSQL. Once no expired event is left, up to `batch_size` salts whose talent's last
        event was among them are deleted."""
        purged = checkpoints = 0
        if self.db.dialect == "postgresql":
            self.partitions_ahead()
            purged, checkpoints = self._drop_expired_months(cutoff)
        salts_done = True
        with self.db.write() as session:
            serialize(session, PURGE_LOCK)
            oldest = session.execute(
                select(EventRow.account_id, EventRow.sequence)
                .where(EventRow.recorded_at < cutoff)
                .order_by(EventRow.recorded_at, EventRow.account_id, EventRow.sequence)
                .limit(batch_size)
            ).all()
            through_of: dict[str, int] = {}
            for account_id, sequence in oldest:
                through_of[account_id] = max(sequence, through_of.get(account_id, 0))
            for account_id, through in sorted(through_of.items()):
                through_hash = session.get_one(EventRow, (account_id, through)).event_hash
                deleted = rowcount(
                    session.execute(
                        delete(EventRow).where(
                            EventRow.account_id == account_id, EventRow.sequence <= through
                        )
                    )
                )
                self._move_checkpoint(session, account_id, through, through_hash, deleted)
                purged += deleted
                checkpoints += 1
            left = session.scalar(
                select(EventRow.sequence).where(EventRow.recorded_at < cutoff).limit(1)
            )
        if self.db.dialect != "postgresql":
            self._step("checkpointed")  # checkpoints and deletes in one transaction
        salts = 0
        if left is None:  # every expired event is gone: so are the salts only they used
            with self.db.write() as session:
                salts, salts_done = self.vault.purge_idle(session, cutoff, batch_size)
        done = left is None and salts_done
        logs.log(
            logger,
            "events purged",
            purged=purged,
            checkpoints=checkpoints,
            salts_deleted=salts,
            done=done,
        )
        return purged, done, checkpoints, salts

    def _drop_expired_months(self, cutoff: datetime) -> tuple[int, int]:
        """Drops the partitions of months that ended by `cutoff` (PostgreSQL); returns (events
        purged, checkpoints moved).

        1. In one transaction, without blocking appends: per account, the first and last event
           recorded before the end of the last expired month (one statement, so one snapshot,
           with the chain heads), and each checkpoint moved forward to that last event.
        2. `step("checkpointed")`. A chain verifies meanwhile: verification starts after
           the checkpoint, and the events at or before it are the ones about to go.
        3. In another transaction, holding audit_events exclusively (appends wait: each drop is
           a catalog change of a few milliseconds; the lock is waited for at most
           DROP_LOCK_TIMEOUT_MS at a time, so appends never queue behind a long reader): check
           that no event before that end was appended since step 1 (accounts whose head moved
           are probed again), delete the default partition's events before it, and DETACH each
           expired partition. DETACH ... CONCURRENTLY would not block appends, but PostgreSQL
           refuses it on a table with a default partition.
        4. DROP the detached tables, in a transaction that does not lock audit_events: freeing
           their files at commit is most of a purge's time. A purge that stops before this step
           leaves them detached (their events no longer in audit_events); the next one drops
           them.
        If step 3 cannot run (the lock stayed busy, an event was appended before the end, another
        purge ran in between), nothing is dropped and the caller's row-by-row batches carry on,
        which is always correct; the next purge drops the partitions."""
        self._drop_detached()  # left by a purge that stopped after its detach
        with self.db.write() as session:
            serialize(session, PURGE_LOCK)
            connection = session.connection()
            months = month_partitions(connection)
            expired = sorted(month for month in months if next_month(month) <= cutoff)
            if not expired:
                return 0, 0
            upper = next_month(expired[-1])
            ranges, heads = self._expired_ranges(connection, upper)
            for span in ranges:
                self._move_checkpoint(session, span.account_id, span.last, span.last_hash, 0)
            session.flush()
            generation = self._purge_generation(connection)
        self._step("checkpointed")
        for _ in range(DROP_ATTEMPTS):
            try:
                with self.db.write() as session:
                    serialize(session, PURGE_LOCK)
                    connection = session.connection()
                    connection.execute(text(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT_MS}ms'"))
                    connection.execute(text("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE"))
                    present = month_partitions(connection)
                    names = [present[month] for month in expired if month in present]
                    if not names or self._purge_generation(connection) != generation:
                        reason = "already dropped" if not names else "another purge ran"
                        logs.log(logger, "partition drop skipped", reason=reason)
                        return 0, 0
                    if not self._covered(connection, session, upper, heads):
                        logs.log(logger, "partition drop postponed", reason="late append")
                        return 0, 0
                    connection.execute(
                        text("DELETE FROM audit_events_default WHERE recorded_at < :upper"),
                        {"upper": upper},
                    )
                    for name in names:
                        connection.execute(
                            text(f"ALTER TABLE audit_events DETACH PARTITION {name}")
                        )
                    for span in ranges:
                        checkpoint = session.get(Checkpoint, span.account_id)
                        assert checkpoint is not None  # written by the first step
                        checkpoint.purged_total += span.last - span.first + 1
                self._step("detached")
                self._drop_detached()
                purged = sum(span.last - span.first + 1 for span in ranges)
                logs.log(
                    logger,
                    "partitions dropped",
                    months=",".join(month.strftime("%Y-%m") for month in expired),
                    purged=purged,
                )
                return purged, len(ranges)
            except OperationalError as exc:
                if getattr(exc.orig, "pgcode", None) != "55P03":  # lock_not_available
                    raise
        logs.log(logger, "partition drop postponed", reason="audit_events busy")
        return 0, 0

    def _expired_ranges(
        self, connection: Connection, upper: datetime
    ) -> tuple[list[_Expired], dict[str, int]]:
        """Each account's events before `upper` (first and last sequence, last hash), and every
        chain head's sequence, read in one snapshot."""
        ranges, heads = [], {}
        for account_id, head, _, first, last, last_hash in connection.execute(
            _EXPIRED_RANGES, {"upper": upper}
        ):
            heads[account_id] = head
            if last is not None:
                ranges.append(_Expired(account_id, head, first, last, last_hash))
        return ranges, heads

    def _covered(
        self, connection: Connection, session: Session, upper: datetime, heads: dict[str, int]
    ) -> bool:
        """Whether every event before `upper` is at or before its chain's checkpoint, for the
        chains appended to since `heads` were read (the others did not change)."""
        now = connection.execute(select(ChainHead.account_id, ChainHead.last_sequence)).all()
        for account_id, sequence in now:
            if heads.get(account_id) == sequence:
                continue
            last = connection.scalar(
                select(EventRow.sequence)
                .where(EventRow.account_id == account_id, EventRow.recorded_at < upper)
                .order_by(EventRow.sequence.desc())
                .limit(1)
            )
            checkpoint = session.get(Checkpoint, account_id)
            if last is not None and (checkpoint is None or last > checkpoint.through_sequence):
                return False
        return True

    def _drop_detached(self) -> None:
        """Drops the month tables a purge detached. Outside the detach's transaction: freeing a
        large table's files at commit takes a while, and audit_events is not locked meanwhile
        (nothing else uses a detached table)."""
        with self.db.write() as session:
            serialize(session, PURGE_LOCK)
            connection = session.connection()
            for name in detached_partitions(connection):
                connection.execute(text(f"DROP TABLE IF EXISTS {name}"))

    @staticmethod
    def _purge_generation(connection: Connection) -> tuple[int, int]:
        """Changes whenever a purge deletes events (another purge between two steps of one)."""
        count, total = connection.execute(
            text("SELECT count(*), coalesce(sum(purged_total), 0) FROM audit_checkpoints")
        ).one()
        return int(count), int(total)

    def _move_checkpoint(
        self, session: Session, account_id: str, sequence: int, digest: str, deleted: int
    ) -> None:
        """Moves the account's checkpoint forward to `sequence` (never back: a purge may delete
        events a dropped partition's checkpoint already passed) and counts `deleted`."""
        checkpoint = session.get(Checkpoint, account_id)
        if checkpoint is None:
            session.add(
                Checkpoint(
                    account_id=account_id,
                    through_sequence=sequence,
                    through_hash=digest,
                    purged_total=deleted,
                    updated_at=self.clock(),
                )
            )
        else:
            if sequence > checkpoint.through_sequence:
                checkpoint.through_sequence, checkpoint.through_hash = sequence, digest
            checkpoint.purged_total += deleted
            checkpoint.updated_at = self.clock()


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
