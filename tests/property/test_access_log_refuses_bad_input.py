"""Bad input for ListAccessLog. Same harness and oracle style as test_bad_input.py: a request
with a BAD field must be INVALID_ARGUMENT and write nothing; a GOOD one lists only the caller's
own entries, or is NOT_FOUND when it filters on a project the caller does not own. The access
log itself records every call, refused ones too, by design: the harness does not watch its
table (tests/property/conftest.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mixip.gateway.v1 import gateway_pb2 as pb
from tests.property.test_bad_input import (
    GOOD,
    NOT_FOUND,
    OK,
    PAGING_VALID,
    PAGING_WILD,
    _call,
    _settings,
    expected,
    good_timestamps,
    id_verdict,
    optional_ids,
    page_size_verdict,
    page_token_verdict,
    request_fields,
    timestamp_verdict,
    timestamps,
    valid_ids,
)


@_settings(80)
@given(
    fields=request_fields(
        valid={
            "project_id": st.just("") | valid_ids,
            "since": st.none() | good_timestamps,
            **PAGING_VALID,
        },
        wild={"project_id": optional_ids, "since": timestamps, **PAGING_WILD},
    )
)
def test_list_access_log(harness, fields):
    request = pb.ListAccessLogRequest(**fields)
    since = fields["since"]

    def only_the_callers(reply):
        assert {entry.account_id for entry in reply.entries} <= {harness.account_id}

    harness.case(
        "ListAccessLog",
        _call(harness.stub.ListAccessLog, request, harness.meta),
        allowed=expected(
            id_verdict(request.project_id, required=False),
            GOOD if since is None else timestamp_verdict(since),
            page_size_verdict(request.page_size),
            page_token_verdict(request.page_token),
            # the harness's account owns no project: a filter naming one is NOT_FOUND
            ok={NOT_FOUND} if request.project_id else {OK},
        ),
        on_ok=only_the_callers,
        fields={"project_id", "since", "page_size", "page_token"},
    )
