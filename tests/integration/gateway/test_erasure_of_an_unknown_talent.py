"""No silent typos: erasing a talent the account holds nothing about is NOT_FOUND, not a receipt
of zeros; erasing a known talent again, or retrying an erasure, still succeeds."""

from __future__ import annotations

import grpc
import pytest

from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.runtime.errors import error_details


def test_erasing_an_unknown_talent_is_not_found_and_journals_nothing(gateway, studio):
    _, meta = studio
    with pytest.raises(grpc.RpcError) as refused:
        gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id="astronuat"), metadata=meta)
    details = error_details(refused.value)
    assert details.code == grpc.StatusCode.NOT_FOUND and details.reason == "TALENT_NOT_FOUND"
    assert "no talent 'astronuat'" in details.message
    # the real talent is untouched: still exported
    gateway.stub.ExportTalentData(pb.ExportTalentDataRequest(talent_id="astronaut"), metadata=meta)


def test_erasing_a_known_talent_twice_and_retrying_both_succeed(gateway, studio):
    _, meta = studio
    first = gateway.stub.EraseTalent(
        pb.EraseTalentRequest(talent_id="astronaut", request_id="erase-1"), metadata=meta
    )
    assert {s.name: s.count for s in first.steps}["matcher.delete_faces"] == 1
    retried = gateway.stub.EraseTalent(
        pb.EraseTalentRequest(talent_id="astronaut", request_id="erase-1"), metadata=meta
    )
    assert retried.receipt_id == first.receipt_id  # a retry gets the first receipt
    again = gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id="astronaut"), metadata=meta)
    assert {s.count for s in again.steps} == {0}  # nothing left, and no error
