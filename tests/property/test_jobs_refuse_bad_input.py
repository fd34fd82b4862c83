"""Bad input on the analysis jobs' RPCs (docs/jobs.md): GetJob, WatchJob, CancelJob take any
job id, ListJobs any project, page size and token. The same oracle and harness as
tests/property/test_bad_input.py: a bad field is INVALID_ARGUMENT naming it, a well-formed
unknown job or project is NOT_FOUND, nothing is written, the gateway keeps serving."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mixip.gateway.v1 import gateway_pb2 as pb
from tests.property.test_bad_input import (
    NOT_FOUND,
    PAGING_VALID,
    PAGING_WILD,
    TIMEOUT_SECONDS,
    _call,
    _settings,
    expected,
    id_verdict,
    ids,
    page_size_verdict,
    page_token_verdict,
    request_fields,
    valid_ids,
)

JOB_RPCS = {
    "GetJob": pb.GetJobRequest,
    "WatchJob": pb.WatchJobRequest,
    "CancelJob": pb.CancelJobRequest,
}


def watched(method, request, meta):
    """A server stream read to its end (its status is the call's)."""
    return lambda: list(method(request, metadata=meta, timeout=TIMEOUT_SECONDS))


@_settings(90)
@given(rpc=st.sampled_from(sorted(JOB_RPCS)), job_id=ids)
def test_job_calls(harness, rpc, job_id):
    request = JOB_RPCS[rpc](job_id=job_id)
    method = getattr(harness.stub, rpc)
    harness.case(
        rpc,
        (watched if rpc == "WatchJob" else _call)(method, request, harness.meta),
        allowed=expected(id_verdict(job_id), ok={NOT_FOUND}),
        fields={"job_id"},
    )


@_settings(70)
@given(
    fields=request_fields(
        valid={"project_id": valid_ids, **PAGING_VALID},
        wild={"project_id": ids, **PAGING_WILD},
    )
)
def test_list_jobs(harness, fields):
    request = pb.ListJobsRequest(**fields)
    harness.case(
        "ListJobs",
        _call(harness.stub.ListJobs, request, harness.meta),
        allowed=expected(
            id_verdict(request.project_id),
            page_size_verdict(request.page_size),
            page_token_verdict(request.page_token),
            ok={NOT_FOUND},  # the harness's account has no project
        ),
        fields={"project_id", "page_size", "page_token"},
    )
