"""The hash chain and talent hashes, without I/O."""

from dataclasses import replace
from datetime import UTC, datetime

from services.audit.domain import (
    GENESIS_HASH,
    EventContent,
    StoredLink,
    chain_hash,
    talent_hash,
    verify_chain,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _chain(n: int) -> list[StoredLink]:
    links, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        content = EventContent(
            "acct",
            seq,
            f"k{seq}",
            "proj",
            "media",
            seq,
            1,
            1,
            0.9,
            talent_hash(b"s" * 32, "t"),
            "key-1",
            T0,
            T0,
        )
        digest = chain_hash(prev, content)
        links.append(StoredLink(content, prev, digest))
        prev = digest
    return links


def _verify(links, head):
    return verify_chain(
        links,
        start_sequence=0,
        start_hash=GENESIS_HASH,
        head_sequence=head.content.sequence,
        head_hash=head.event_hash,
    )


def test_an_intact_chain_verifies():
    links = _chain(5)
    verdict = _verify(links, links[-1])
    assert verdict.ok and verdict.checked == 5


def test_an_edited_event_is_caught_at_its_sequence():
    links = _chain(5)
    links[2] = replace(links[2], content=replace(links[2].content, similarity=0.1))
    verdict = _verify(links, links[-1])
    assert not verdict.ok and verdict.first_broken_sequence == 3


def test_a_removed_event_is_caught():
    links = _chain(5)
    head = links[-1]
    del links[1]
    verdict = _verify(links, head)
    assert not verdict.ok and verdict.first_broken_sequence == 2


def test_a_truncated_tail_is_caught():
    links = _chain(5)
    verdict = _verify(links[:3], links[-1])
    assert not verdict.ok and verdict.first_broken_sequence == 4


def test_a_chain_verifies_from_a_checkpoint():
    links = _chain(5)
    verdict = verify_chain(
        links[2:],
        start_sequence=2,
        start_hash=links[1].event_hash,
        head_sequence=5,
        head_hash=links[-1].event_hash,
    )
    assert verdict.ok and verdict.checked == 3


def test_talent_hash_depends_on_the_salt():
    assert talent_hash(b"a" * 32, "talent") != talent_hash(b"b" * 32, "talent")
    assert talent_hash(b"a" * 32, "talent") == talent_hash(b"a" * 32, "talent")
