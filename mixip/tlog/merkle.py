"""RFC 9162 (section 2.1) Merkle tree hashing over SHA-256, and the stored nodes proofs read.

A node is named by `(level, index)` as Tessera's tiles name them: level 0 holds the leaf hashes,
and node `(level, index)` is the hash of the perfect subtree over leaves
`[index * 2**level, (index + 1) * 2**level)`. Only perfect subtrees are stored, each once, when
its last leaf is appended; the hash of any range the RFC's recursion visits is the fold of the
O(log n) perfect subtrees that tile it, so the tree hash and every proof are O(log n) reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}): the hash of the empty tree."""


def leaf_hash(leaf: bytes) -> bytes:
    """SHA-256(0x00 || leaf)."""
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def split(n: int) -> int:
    """The largest power of two smaller than `n` (n > 1): where the RFC splits n leaves."""
    return 1 << ((n - 1).bit_length() - 1)


def tree_hash(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) straight from the RFC's recursive definition (the reference the stored form
    must agree with; O(n), for small trees and tests)."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = split(len(leaves))
    return node_hash(tree_hash(leaves[:k]), tree_hash(leaves[k:]))


@dataclass(frozen=True, slots=True)
class NodeId:
    """A perfect subtree: the hash of leaves [index * 2**level, (index + 1) * 2**level)."""

    level: int
    index: int


class HashReader(Protocol):
    """Where the stored node hashes live (a table, tiles, memory)."""

    def read_hashes(self, ids: Sequence[NodeId]) -> Sequence[bytes]:
        """The hashes of `ids`, in that order; raises KeyError for a node never stored."""
        ...


def range_nodes(start: int, end: int) -> list[NodeId]:
    """The perfect subtrees tiling leaves [start, end), left to right, largest first.

    `start` must be a multiple of the largest power of two not above `end - start`, which holds
    for every range the RFC's recursion visits."""
    nodes = []
    while start < end:
        level = (end - start).bit_length() - 1
        assert start % (1 << level) == 0, (start, end)
        nodes.append(NodeId(level, start >> level))
        start += 1 << level
    return nodes


def fold(hashes: Sequence[bytes]) -> bytes:
    """MTH of a range from the hashes of its `range_nodes`: right to left, as the RFC's trees
    lean left."""
    if not hashes:
        return EMPTY_ROOT
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = node_hash(left, result)
    return result


def root_hash(reader: HashReader, size: int) -> bytes:
    """MTH of the first `size` leaves, from at most log2(size) + 1 stored nodes."""
    return fold(reader.read_hashes(range_nodes(0, size)))


def appended(
    reader: HashReader, size: int, leaf_hashes: Iterable[bytes]
) -> list[tuple[int, int, bytes]]:
    """The nodes to store when the leaves with `leaf_hashes` are appended to a tree of `size`
    leaves, as (level, index, hash): each leaf, and each perfect subtree the new leaves
    complete. Reads only the O(log n) perfect subtrees on the tree's right edge (its
    frontier), once."""
    edge = range_nodes(0, size)
    # The frontier, largest subtree first: (level, hash) of each perfect subtree on the edge.
    stored = reader.read_hashes(edge)
    frontier = [(node.level, value) for node, value in zip(edge, stored, strict=True)]
    made = []
    index = size
    for value in leaf_hashes:
        level, at = 0, index
        made.append((0, at, value))
        while at & 1:  # a right child: its left sibling is the frontier's last subtree
            sibling_level, left = frontier.pop()
            assert sibling_level == level, (sibling_level, level)
            value = node_hash(left, value)
            level, at = level + 1, at >> 1
            made.append((level, at, value))
        frontier.append((level, value))
        index += 1
    return made


def appended_nodes(
    reader: HashReader, size: int, leaf_hashes: Iterable[bytes]
) -> dict[NodeId, bytes]:
    """`appended`'s nodes by name."""
    return {
        NodeId(level, index): value for level, index, value in appended(reader, size, leaf_hashes)
    }


class MemoryHashes:
    """A HashReader in a dict, with the leaves appended so far (tests, and an auditor replaying
    a log it downloaded)."""

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self.nodes: dict[NodeId, bytes] = {}
        self.size = 0
        self.append(leaves)

    def append(self, leaves: Iterable[bytes]) -> None:
        hashes = [leaf_hash(leaf) for leaf in leaves]
        self.nodes.update(appended_nodes(self, self.size, hashes))
        self.size += len(hashes)

    def read_hashes(self, ids: Sequence[NodeId]) -> list[bytes]:
        return [self.nodes[node] for node in ids]

    def root(self, size: int | None = None) -> bytes:
        return root_hash(self, self.size if size is None else size)


def check_hash(value: bytes, what: str = "hash") -> bytes:
    """`value` if it is a SHA-256 hash; ValueError otherwise."""
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ValueError(f"{what} is not a {HASH_SIZE}-byte SHA-256 hash")
    return value
