"""RFC 9162 inclusion proofs (2.1.3) and consistency proofs (2.1.4): made from stored node hashes
in one batch read, and verified by the RFC's own algorithms (2.1.3.2, 2.1.4.2), step by step.

Proofs are lists of 32-byte hashes in the RFC's order (the leaf's sibling, or the deepest node,
first), the same order sumdb/tlog and the C2SP tlog-proof format use.
"""

from __future__ import annotations

from collections.abc import Sequence

from mixip.tlog.merkle import (
    EMPTY_ROOT,
    HashReader,
    NodeId,
    check_hash,
    fold,
    node_hash,
    range_nodes,
    split,
)


class ProofError(ValueError):
    """A proof that does not prove what it claims (or inputs no proof could)."""


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose hashes make PATH(index, D[size]), in proof order."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of {size} leaves")
    lo, hi = 0, size
    siblings = []
    while hi - lo > 1:
        k = split(hi - lo)
        if index < lo + k:
            siblings.append((lo + k, hi))
            hi = lo + k
        else:
            siblings.append((lo, lo + k))
            lo += k
    return siblings[::-1]


def consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose hashes make PROOF(old_size, D[new_size]), in proof order; empty
    when old_size is 0 or new_size (nothing to prove)."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return []
    lo, hi, m, whole = 0, new_size, old_size, True
    ranges = []
    while m < hi - lo:
        k = split(hi - lo)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    if not whole:
        ranges.append((lo, hi))
    return ranges[::-1]


def tilings(ranges: Sequence[tuple[int, int]]) -> list[list[NodeId]]:
    """The stored nodes whose hashes make the MTH of each range (range_nodes of each)."""
    return [range_nodes(start, end) for start, end in ranges]


def folded(tilings: Sequence[Sequence[NodeId]], hashes: Sequence[bytes]) -> list[bytes]:
    """The MTH of each tiling, from the hashes of all their nodes in order."""
    stored = iter(hashes)
    return [fold([next(stored) for _ in tiling]) for tiling in tilings]


def _hashes(reader: HashReader, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """The MTH of each range, from one read of the stored nodes tiling them all."""
    nodes = tilings(ranges)
    return folded(nodes, reader.read_hashes([node for tiling in nodes for node in tiling]))


def prove_inclusion(reader: HashReader, index: int, size: int) -> list[bytes]:
    """The inclusion proof of leaf `index` in the tree of the first `size` leaves."""
    return _hashes(reader, inclusion_ranges(index, size))


def prove_consistency(reader: HashReader, old_size: int, new_size: int) -> list[bytes]:
    """The consistency proof from the tree of `old_size` leaves to the tree of `new_size`."""
    return _hashes(reader, consistency_ranges(old_size, new_size))


def _shift_to_set_bit(fn: int, sn: int) -> tuple[int, int]:
    """Right-shift both until LSB(fn) is set or fn is 0."""
    while fn & 1 == 0 and fn != 0:
        fn, sn = fn >> 1, sn >> 1
    return fn, sn


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 2.1.3.2: that the leaf with hash `leaf` is at `index` in the tree of `size`
    leaves whose root is `root`. Returns None, or raises ProofError."""
    for value in (leaf, root, *proof):
        check_hash(value)
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of {size} leaves")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("the inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if fn & 1 == 0:
                fn, sn = _shift_to_set_bit(fn, sn)
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the inclusion proof is too short")
    if r != root:
        raise ProofError(f"leaf {index} is not in the tree of {size} leaves with that root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 2.1.4.2: that the tree of `old_size` leaves with root `old_root` is a prefix of
    the tree of `new_size` leaves with root `new_root`. Returns None, or raises ProofError.

    The RFC defines proofs for 0 < old_size < new_size; at the edges the proof must be empty,
    and equal sizes must have equal roots, the empty tree the empty root."""
    for value in (old_root, new_root, *proof):
        check_hash(value)
    if not 0 <= old_size <= new_size:
        raise ProofError(f"a tree of {new_size} leaves cannot extend one of {old_size}")
    if old_size in (0, new_size):
        if proof:
            raise ProofError("the consistency proof should be empty")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError("the old root is not the empty tree's")
        if old_size == new_size and old_root != new_root:
            raise ProofError(f"two different trees of {old_size} leaves")
        return
    # 1. An empty path proves nothing.
    if not proof:
        raise ProofError("the consistency proof is empty")
    # 2. A perfect old tree is its own first node.
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    # 3, 4.
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    # 5.
    fr = sr = path[0]
    # 6.
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if fn & 1 == 0:
                fn, sn = _shift_to_set_bit(fn, sn)
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    # 7.
    if sn != 0:
        raise ProofError("the consistency proof is too short")
    if fr != old_root:
        raise ProofError(f"the proof does not lead to the old root of size {old_size}")
    if sr != new_root:
        raise ProofError(
            f"the tree of {new_size} leaves with that root does not extend the old one"
        )
