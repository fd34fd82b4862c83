"""The purge loop against a scripted audit stub, and the one-line errors runs record."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from sqlalchemy.exc import OperationalError

from mixip.audit.v1 import audit_pb2
from mixip.gateway.v1 import internal_pb2
from services.retention.domain import Tally
from services.retention.jobs import (
    ACCESS_LOG_BATCH,
    PurgeStalled,
    one_line,
    purge,
    purge_access_log,
)
from services.retention.peers import AuditClient, GatewayClient, PeerFailure

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


class ScriptedGateway:
    """Answers PurgeAccessLog with the given (deleted, done) replies, in order."""

    def __init__(self, *replies: tuple[int, bool]) -> None:
        self.replies = list(replies)
        self.requests: list[internal_pb2.PurgeAccessLogRequest] = []

    def PurgeAccessLog(self, request):
        self.requests.append(request)
        deleted, done = self.replies.pop(0)
        return internal_pb2.PurgeAccessLogResponse(entries_deleted=deleted, done=done)


def test_the_access_log_purge_calls_until_done_as_of_the_runs_time():
    gateway, tally = ScriptedGateway((1000, False), (7, True)), Tally()
    purge_access_log(GatewayClient(gateway), CUTOFF, tally)
    assert tally.access_log_purged == 1007 and gateway.replies == []
    assert {(r.as_of.ToDatetime(tzinfo=UTC), r.batch_size) for r in gateway.requests} == {
        (CUTOFF, ACCESS_LOG_BATCH)
    }


def test_the_access_log_purge_stops_when_the_gateway_makes_no_progress():
    tally = Tally()
    with pytest.raises(PurgeStalled):
        purge_access_log(GatewayClient(ScriptedGateway((5, False), (0, False))), CUTOFF, tally)
    assert tally.access_log_purged == 5
