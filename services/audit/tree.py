"""Each account's Merkle tree over its audit events, stored as mixip.tlog's (level, index) nodes
in `audit_tree_nodes` and appended in the events' own transaction (docs/audit-log.md)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from mixip.runtime.db import bulk_insert
from mixip.tlog.merkle import NodeId, appended_nodes, leaf_hash
from services.audit.store import TreeNodeRow


class StoredTree:
    """One account's tree nodes, read in one query per proof (a mixip.tlog HashReader)."""

    def __init__(self, session: Session, account_id: str) -> None:
        self.session = session
        self.account_id = account_id

    def read_hashes(self, ids: Sequence[NodeId]) -> list[bytes]:
        if not ids:
            return []
        wanted = [(node.level, node.index) for node in ids]
        rows = self.session.execute(
            select(TreeNodeRow.level, TreeNodeRow.node_index, TreeNodeRow.hash).where(
                TreeNodeRow.account_id == self.account_id,
                tuple_(TreeNodeRow.level, TreeNodeRow.node_index).in_(wanted),
            )
        )
        found = {NodeId(level, index): value for level, index, value in rows}
        return [found[node] for node in ids]  # KeyError: a node never stored

    def size(self) -> int:
        """The number of leaves (one primary-key lookup: the last leaf's index)."""
        last = self.session.scalar(
            select(func.max(TreeNodeRow.node_index)).where(
                TreeNodeRow.account_id == self.account_id, TreeNodeRow.level == 0
            )
        )
        return 0 if last is None else last + 1

    def append(self, leaves: Sequence[bytes]) -> None:
        """Stores the nodes that appending `leaves` (exact bytes) to the tree makes."""
        nodes = appended_nodes(self, self.size(), [leaf_hash(leaf) for leaf in leaves])
        rows = [
            {"account_id": self.account_id, "level": n.level, "node_index": n.index, "hash": h}
            for n, h in nodes.items()
        ]
        bulk_insert(self.session, TreeNodeRow.__table__, rows)
