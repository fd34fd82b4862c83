"""Each account's Merkle tree over its audit events, stored as mixip.tlog's (level, index) nodes
in `audit_tree_nodes` and appended in the events' own transaction (docs/audit-log.md)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, select, text, tuple_
from sqlalchemy.orm import Session

from mixip.runtime.db import bulk_insert
from mixip.tlog.merkle import NodeId, appended, leaf_hash
from services.audit.store import TreeNodeRow

_NODES = text(
    "SELECT n.level, n.node_index, n.hash"
    " FROM unnest(CAST(:levels AS smallint[]), CAST(:indexes AS bigint[])) AS w(level, node_index)"
    " JOIN audit_tree_nodes n ON n.account_id = :account AND n.level = w.level"
    " AND n.node_index = w.node_index"
)


class StoredTree:
    """One account's tree nodes, read in one query per proof (a mixip.tlog HashReader)."""

    def __init__(self, session: Session, account_id: str) -> None:
        self.session = session
        self.account_id = account_id

    def read_hashes(self, ids: Sequence[NodeId]) -> list[bytes]:
        if not ids:
            return []
        connection = self.session.connection()
        if connection.dialect.name == "postgresql":
            # two array parameters: the same statement text (and plan) for every proof, where
            # a tuple IN renders one pair of parameters per node on every call
            rows = connection.execute(
                _NODES,
                {
                    "account": self.account_id,
                    "levels": [node.level for node in ids],
                    "indexes": [node.index for node in ids],
                },
            )
        else:
            wanted = [(node.level, node.index) for node in ids]
            rows = connection.execute(
                select(TreeNodeRow.level, TreeNodeRow.node_index, TreeNodeRow.hash).where(
                    TreeNodeRow.account_id == self.account_id,
                    tuple_(TreeNodeRow.level, TreeNodeRow.node_index).in_(wanted),
                )
            )
        found = {(level, index): bytes(value) for level, index, value in rows}  # bytea: a view
        return [found[node.level, node.index] for node in ids]  # KeyError: never stored

    def size(self) -> int:
        """The number of leaves: the last leaf's index + 1, one descent of the primary key
        (`max()` would read every leaf's entry when the planner has no statistics yet)."""
        return self.session.scalar(self.size_query()) or 0

    def size_query(self) -> Select[Any]:
        """The statement `size` runs (None before the first leaf), to put inside another."""
        return (
            select(TreeNodeRow.node_index + 1)
            .where(TreeNodeRow.account_id == self.account_id, TreeNodeRow.level == 0)
            .order_by(TreeNodeRow.node_index.desc())
            .limit(1)
        )

    def append(self, leaves: Sequence[bytes]) -> None:
        """Stores the nodes that appending `leaves` (exact bytes) to the tree makes: computed in
        memory from the tree's frontier (one read of O(log n) nodes), written in one COPY on
        PostgreSQL (one multi-row INSERT elsewhere)."""
        made = appended(self, self.size(), [leaf_hash(leaf) for leaf in leaves])
        connection = self.session.connection()
        if connection.dialect.name != "postgresql":
            rows = [
                {"account_id": self.account_id, "level": level, "node_index": index, "hash": h}
                for level, index, h in made
            ]
            bulk_insert(self.session, TreeNodeRow.__table__, rows)
            return
        # bulk_insert's COPY, formatted here: two rows per leaf, and the generic formatting
        # of each value was most of the tree's cost of an append.
        prefix = self.account_id.translate(_COPY_ESCAPES) + "\t"
        text = "".join(f"{prefix}{level}\t{index}\t\\\\x{h.hex()}\n" for level, index, h in made)
        dbapi_connection = connection.connection.dbapi_connection
        assert dbapi_connection is not None  # a checked-out connection
        cursor = dbapi_connection.cursor()
        try:
            cursor.copy_expert(
                "COPY audit_tree_nodes (account_id, level, node_index, hash) FROM STDIN",
                io.StringIO(text),
            )
        finally:
            cursor.close()


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
