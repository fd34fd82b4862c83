"""Bad input for the audit log's proofs (GetAuditInclusionProof, GetAuditConsistencyProof). Same
harness and oracle style as test_bad_input.py. The harness's account has a log of a few events;
the contract: an event's sequence from 1, a tree size the caller's tree has reached
(docs/audit-log.md). A request outside that is INVALID_ARGUMENT naming the field and writes
nothing; one inside gets a proof that verifies against the tree of the account's own events."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mixip.audit.v1 import audit_pb2
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.tlog.merkle import leaf_hash, tree_hash
from mixip.tlog.proof import verify_consistency, verify_inclusion
from tests.integration.audit.test_audit_service import event
from tests.property.test_bad_input import (
    BAD,
    GOOD,
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    OK,
    _call,
    _settings,
    expected,
    request_fields,
)

EVENTS = 7  # the harness account's log: a tree of 7 leaves (proofs of every shape up to it)

int64s = st.one_of(
    st.sampled_from([INT64_MIN, INT32_MIN, -1, 0, 1, EVENTS, EVENTS + 1, INT32_MAX, INT64_MAX]),
    st.integers(INT64_MIN, INT64_MAX),
)


@pytest.fixture
def leaves(harness, clock) -> list[bytes]:
    """The harness account's log of EVENTS events (recorded as the gateway records them, on the
    audit service), and the leaves of its tree, as the gateway lists them."""
    harness.gateway.audit.stub.RecordMatchEvents(
        audit_pb2.RecordMatchEventsRequest(
            account_id=harness.account_id,
            events=[event(f"proof-{i}", clock) for i in range(EVENTS)],
        )
    )
    listed = harness.stub.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=harness.meta)
    assert [e.sequence for e in listed.events] == list(range(1, EVENTS + 1))
    return [e.leaf for e in listed.events]


@_settings(100)
@given(
    fields=request_fields(
        valid={
            "sequence": st.integers(1, EVENTS),
            "tree_size": st.integers(1, EVENTS),
        },
        wild={"sequence": int64s, "tree_size": int64s},
    )
)
def test_get_audit_inclusion_proof(harness, leaves, fields):
    request = pb.GetAuditInclusionProofRequest(**fields)
    sequence, size = request.sequence, request.tree_size

    def proves_the_event(reply):
        assert (reply.leaf_index, reply.tree_size) == (sequence - 1, size)
        root = tree_hash(leaves[:size])
        verify_inclusion(leaf_hash(leaves[sequence - 1]), sequence - 1, size, reply.hashes, root)

    harness.case(
        "GetAuditInclusionProof",
        _call(harness.stub.GetAuditInclusionProof, request, harness.meta),
        # an event of the tree of that size, which the account's tree has reached
        allowed=expected(GOOD if 1 <= sequence <= size <= EVENTS else BAD, ok={OK}),
        on_ok=proves_the_event,
        fields={"sequence", "tree_size"},
    )


@_settings(100)
@given(
    fields=request_fields(
        valid={
            "from_size": st.integers(0, EVENTS),
            "to_size": st.integers(0, EVENTS),
        },
        wild={"from_size": int64s, "to_size": int64s},
    )
)
def test_get_audit_consistency_proof(harness, leaves, fields):
    request = pb.GetAuditConsistencyProofRequest(**fields)
    old, new = request.from_size, request.to_size

    def proves_the_extension(reply):
        assert (reply.from_size, reply.to_size) == (old, new)
        old_root, new_root = tree_hash(leaves[:old]), tree_hash(leaves[:new])
        verify_consistency(old, new, old_root, new_root, reply.hashes)

    harness.case(
        "GetAuditConsistencyProof",
        _call(harness.stub.GetAuditConsistencyProof, request, harness.meta),
        # two sizes in order, the newer one reached by the account's tree (0: the empty tree)
        allowed=expected(GOOD if 0 <= old <= new <= EVENTS else BAD, ok={OK}),
        on_ok=proves_the_extension,
        fields={"from_size", "to_size"},
    )
