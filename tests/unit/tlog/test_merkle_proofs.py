"""RFC 9162 trees and proofs on hand-checkable small trees: the RFC 6962 test vectors every CT
implementation shares, every inclusion and consistency pair of sizes 1..20 made and verified,
and every flipped bit of a proof, a root or a size refused."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixip.tlog.merkle import (
    EMPTY_ROOT,
    MemoryHashes,
    NodeId,
    leaf_hash,
    node_hash,
    range_nodes,
    tree_hash,
)
from mixip.tlog.proof import (
    ProofError,
    consistency_ranges,
    inclusion_ranges,
    prove_consistency,
    prove_inclusion,
    verify_consistency,
    verify_inclusion,
)

# The eight leaves of RFC 6962's test data (certificate-transparency's merkle tests).
VECTOR_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
VECTOR_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
VECTOR_INCLUSION = {  # (index, size) -> proof
    (0, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (0, 1): [],
}
VECTOR_CONSISTENCY = {  # (old, new) -> proof
    (1, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}
SIZES = range(1, 21)


def leaves(n: int) -> list[bytes]:
    return [f"event {i}".encode() for i in range(n)]


@pytest.fixture(scope="module")
def tree() -> MemoryHashes:
    return MemoryHashes(leaves(max(SIZES)))


class CountingReader:
    """A HashReader that counts its reads and the nodes it was asked for."""

    def __init__(self, inner: MemoryHashes) -> None:
        self.inner, self.reads, self.nodes = inner, 0, 0

    def read_hashes(self, ids):
        self.reads += 1
        self.nodes += len(ids)
        return self.inner.read_hashes(ids)


def flips(value: bytes):
    """`value` with each bit flipped in turn."""
    for i in range(len(value) * 8):
        changed = bytearray(value)
        changed[i // 8] ^= 1 << (i % 8)
        yield bytes(changed)


def test_hashes_are_domain_separated_sha256():
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    left, right = b"a" * 32, b"b" * 32
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert tree_hash([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()


def test_the_rfc_6962_test_vectors_come_out_of_the_stored_tree():
    stored = MemoryHashes(VECTOR_LEAVES)
    for size, root in enumerate(VECTOR_ROOTS):
        assert stored.root(size).hex() == root
        assert tree_hash(VECTOR_LEAVES[:size]).hex() == root
    for (index, size), proof in VECTOR_INCLUSION.items():
        assert [h.hex() for h in prove_inclusion(stored, index, size)] == proof
    for (old, new), proof in VECTOR_CONSISTENCY.items():
        assert [h.hex() for h in prove_consistency(stored, old, new)] == proof


def test_each_appended_leaf_stores_itself_and_the_perfect_subtrees_it_completes():
    stored = MemoryHashes(leaves(6))
    assert set(stored.nodes) == {
        *(NodeId(0, i) for i in range(6)),
        *(NodeId(1, i) for i in range(3)),
        NodeId(2, 0),
    }
    data = leaves(6)
    assert stored.nodes[NodeId(2, 0)] == tree_hash(data[:4])
    assert stored.nodes[NodeId(1, 2)] == tree_hash(data[4:6])


def test_appending_in_batches_stores_the_same_nodes_as_one_by_one():
    one_by_one = MemoryHashes()
    for leaf in leaves(13):
        one_by_one.append([leaf])
    batched = MemoryHashes(leaves(5))
    batched.append(leaves(13)[5:])
    assert batched.nodes == one_by_one.nodes == MemoryHashes(leaves(13)).nodes


@pytest.mark.parametrize("size", SIZES)
def test_the_stored_root_is_the_rfc_tree_hash_at_every_size(tree, size):
    assert tree.root(size) == tree_hash(leaves(size))


@pytest.mark.parametrize("size", SIZES)
def test_every_leaf_has_an_inclusion_proof_that_verifies(tree, size):
    root = tree.root(size)
    for index in range(size):
        proof = prove_inclusion(tree, index, size)
        verify_inclusion(leaf_hash(leaves(size)[index]), index, size, proof, root)


@pytest.mark.parametrize("size", SIZES)
def test_every_older_size_has_a_consistency_proof_that_verifies(tree, size):
    for old in range(size + 1):
        proof = prove_consistency(tree, old, size)
        verify_consistency(old, size, tree.root(old), tree.root(size), proof)


@pytest.mark.parametrize("size", SIZES)
def test_a_flipped_bit_anywhere_in_an_inclusion_proof_or_root_is_caught(tree, size):
    root = tree.root(size)
    for index in range(size):
        leaf = leaf_hash(leaves(size)[index])
        proof = prove_inclusion(tree, index, size)
        for position, value in enumerate(proof):
            for bad in flips(value):
                tampered = [*proof[:position], bad, *proof[position + 1 :]]
                with pytest.raises(ProofError):
                    verify_inclusion(leaf, index, size, tampered, root)
        for bad in flips(root):
            with pytest.raises(ProofError):
                verify_inclusion(leaf, index, size, proof, bad)
        for bad in flips(leaf):
            with pytest.raises(ProofError):
                verify_inclusion(bad, index, size, proof, root)


@pytest.mark.parametrize("size", SIZES)
def test_a_flipped_bit_anywhere_in_a_consistency_proof_or_root_is_caught(tree, size):
    new_root = tree.root(size)
    for old in range(1, size):
        old_root = tree.root(old)
        proof = prove_consistency(tree, old, size)
        for position, value in enumerate(proof):
            for bad in flips(value):
                tampered = [*proof[:position], bad, *proof[position + 1 :]]
                with pytest.raises(ProofError):
                    verify_consistency(old, size, old_root, new_root, tampered)
        for bad in flips(old_root):
            with pytest.raises(ProofError):
                verify_consistency(old, size, bad, new_root, proof)
        for bad in flips(new_root):
            with pytest.raises(ProofError):
                verify_consistency(old, size, old_root, bad, proof)


@pytest.mark.parametrize("size", SIZES)
def test_a_proof_is_refused_for_any_other_index_or_size(tree, size):
    for index in range(size):
        leaf = leaf_hash(leaves(size)[index])
        proof = prove_inclusion(tree, index, size)
        for other_size in SIZES:
            for other in range(other_size):
                if (other, other_size) != (index, size):
                    with pytest.raises(ProofError):
                        verify_inclusion(leaf, other, other_size, proof, tree.root(other_size))
    for old in range(1, size):
        proof = prove_consistency(tree, old, size)
        for other in range(1, size):
            if other != old:
                with pytest.raises(ProofError):
                    verify_consistency(other, size, tree.root(other), tree.root(size), proof)


def test_proofs_with_a_hash_added_or_dropped_are_refused(tree):
    root = tree.root(13)
    proof = prove_inclusion(tree, 5, 13)
    leaf = leaf_hash(leaves(13)[5])
    for tampered in (proof[:-1], [*proof, proof[-1]], [*proof, EMPTY_ROOT], []):
        with pytest.raises(ProofError, match=r"too (short|long)|not in the tree"):
            verify_inclusion(leaf, 5, 13, tampered, root)
    proof = prove_consistency(tree, 5, 13)
    for tampered in (proof[:-1], [*proof, proof[-1]], []):
        with pytest.raises(ProofError):
            verify_consistency(5, 13, tree.root(5), root, tampered)


def test_the_edges_of_consistency_are_explicit(tree):
    root = tree.root(7)
    verify_consistency(0, 7, EMPTY_ROOT, root, [])
    verify_consistency(7, 7, root, root, [])
    with pytest.raises(ProofError, match="two different trees"):
        verify_consistency(7, 7, root, tree.root(6), [])
    with pytest.raises(ProofError, match="should be empty"):
        verify_consistency(7, 7, root, root, [root])
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(0, 7, root, root, [])
    with pytest.raises(ProofError, match="cannot extend"):
        verify_consistency(8, 7, tree.root(8), root, prove_consistency(tree, 7, 8))
    with pytest.raises(ProofError):
        verify_inclusion(leaf_hash(b"x"), 0, 0, [], EMPTY_ROOT)
    with pytest.raises(ProofError):
        prove_inclusion(tree, 7, 7)
    with pytest.raises(ValueError, match="32-byte"):
        verify_inclusion(b"short", 0, 1, [], root)


def test_proofs_read_the_store_once_and_only_a_logarithmic_number_of_nodes():
    stored = MemoryHashes(leaves(1000))
    for index, size in ((0, 1000), (511, 1000), (999, 1000), (600, 777)):
        reader = CountingReader(stored)
        prove_inclusion(reader, index, size)
        assert reader.reads == 1
        assert reader.nodes <= 2 * size.bit_length()
    reader = CountingReader(stored)
    prove_consistency(reader, 333, 999)
    assert reader.reads == 1
    assert reader.nodes <= 2 * (999).bit_length()


def test_a_range_is_tiled_by_its_perfect_subtrees_largest_first():
    assert range_nodes(0, 13) == [NodeId(3, 0), NodeId(2, 2), NodeId(0, 12)]
    assert range_nodes(8, 13) == [NodeId(2, 2), NodeId(0, 12)]
    assert range_nodes(0, 0) == []


def test_the_ranges_follow_the_rfc_recursion_deepest_first():
    assert inclusion_ranges(2, 5) == [(3, 4), (0, 2), (4, 5)]
    assert consistency_ranges(3, 7) == [(2, 3), (3, 4), (0, 2), (4, 7)]
    assert consistency_ranges(4, 7) == [(4, 7)]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), size=st.integers(1, 3000))
def test_random_sizes_prove_and_verify(data, size):
    stored = MemoryHashes(i.to_bytes(4, "big") for i in range(size))
    index = data.draw(st.integers(0, size - 1))
    old = data.draw(st.integers(1, size))
    root = stored.root()
    proof = prove_inclusion(stored, index, size)
    verify_inclusion(leaf_hash(index.to_bytes(4, "big")), index, size, proof, root)
    consistency = prove_consistency(stored, old, size)
    verify_consistency(old, size, stored.root(old), root, consistency)
    if old < size:
        with pytest.raises(ProofError):
            verify_consistency(old, size, stored.root(old - 1), root, consistency)
    other = data.draw(st.integers(0, size - 1))
    if other != index:
        with pytest.raises(ProofError):
            verify_inclusion(leaf_hash(other.to_bytes(4, "big")), index, size, proof, root)
