"""The purge loop against a scripted audit stub, and the one-line errors runs record."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from sqlalchemy.exc import OperationalError

from mixip.audit.v1 import audit_pb2
from services.retention.domain import Tally
from services.retention.jobs import PurgeStalled, one_line, purge
from services.retention.peers import AuditClient, PeerFailure

CUTOFF = datetime(2025, 11, 1, tzinfo=UTC)


class ScriptedAudit:
    """Answers PurgeExpired with the given (purged, done) replies, in order."""

    def __init__(self, *replies: tuple[int, bool]) -> None:
        self.replies = list(replies)
        self.requests: list[audit_pb2.PurgeExpiredRequest] = []

    def PurgeExpired(self, request):
        self.requests.append(request)
        purged, done = self.replies.pop(0)
        return audit_pb2.PurgeExpiredResponse(purged_count=purged, done=done)


def test_purge_calls_until_done_and_sums_the_batches():
    audit, tally = ScriptedAudit((2, False), (2, False), (1, True)), Tally()
    purge(AuditClient(audit), CUTOFF, 2, tally)
    assert tally.events_purged == 5 and audit.replies == []
    assert {(r.cutoff.ToDatetime(tzinfo=UTC), r.batch_size) for r in audit.requests} == {
        (CUTOFF, 2)
    }


def test_purge_stops_when_audit_makes_no_progress():
    tally = Tally()
    with pytest.raises(PurgeStalled):
        purge(AuditClient(ScriptedAudit((3, False), (0, False))), CUTOFF, 3, tally)
    assert tally.events_purged == 3


def test_errors_are_one_line_without_foreign_messages():
    assert one_line(PeerFailure("audit.PurgeExpired", grpc.StatusCode.UNAVAILABLE)) == (
        "audit.PurgeExpired: UNAVAILABLE"
    )
    leaky = OperationalError("DELETE ... WHERE talent_id = %s", {"talent_id": "t-ada"}, None)
    assert one_line(leaky) == "OperationalError"
    assert one_line(PurgeStalled()) == "PurgeStalled"
