"""The gateway's peer adapters against the real services (gateway/peers.py)."""

from __future__ import annotations

from gateway.peers import AuditClient
from mixip.audit.v1 import audit_pb2
from mixip.common.v1 import common_pb2
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.times import to_timestamp

ACCOUNT = "acct_peers"


def test_match_events_beyond_the_audit_limit_are_recorded_in_several_calls(audit_service, clock):
    audit = AuditClient(audit_service.channel)
    count = 2 * MAX_BATCH + 1
    events = [
        audit_pb2.MatchEventInput(
            idempotency_key=f"med_big:{i}",
            project_id="p",
            media_id="med_big",
            face_index=i,
            label=common_pb2.FACE_LABEL_UNKNOWN,
            reason=common_pb2.LABEL_REASON_NO_MATCH,
            actor="key",
            occurred_at=to_timestamp(clock()),
        )
        for i in range(count)
    ]
    audit.record_match_events(ACCOUNT, events)
    listed = audit.events(
        ACCOUNT, talent_id="", project_id="p", since=None, page_size=1000, page_token=""
    )
    seen = len(listed.items)
    while listed.next_page_token:
        listed = audit.events(
            ACCOUNT,
            talent_id="",
            project_id="p",
            since=None,
            page_size=1000,
            page_token=listed.next_page_token,
        )
        seen += len(listed.items)
    assert seen == count
    assert audit.verify_log(ACCOUNT).ok
