"""Bad input for the retention of copies: the admin's SetAccountRetention, and RunRetentionJob's
`as_of` (a purge drill at a later date). Same harness and oracle style as test_bad_input.py: a
request with a BAD field must be INVALID_ARGUMENT and write nothing; a GOOD one gets the RPC's
normal answer (the retention service is not running here, so a good RunRetentionJob is
UNAVAILABLE after the validation passed)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import example, given
from hypothesis import strategies as st

from mixip.gateway.v1 import admin_pb2
from mixip.retention.v1 import retention_pb2
from tests.property.test_bad_input import (
    _FIRST_SECOND,
    _LAST_SECOND,
    BAD,
    EITHER,
    GOOD,
    INT32_MAX,
    INT32_MIN,
    NOT_FOUND,
    OK,
    UNAVAILABLE,
    _call,
    _settings,
    enum_values,
    enum_verdict,
    expected,
    id_verdict,
    ids,
    int32s,
    no_retry_admin,  # noqa: F401 - a fixture, used by name
    timestamps,
)

DAY = 86_400
SLACK = 300  # a drill may start up to 5 minutes before now (clocks a little apart)
HORIZON = 36_525 * DAY  # and at most 100 years ahead
HARNESS_ACCOUNT = "<the harness's account>"  # replaced by its id in the test


def days_verdict(days: int) -> int:
    return GOOD if 1 <= days <= 3650 else BAD


# -- SetAccountRetention ------------------------------------------------------------------------


@_settings(140)
@given(
    account_id=st.one_of(st.just(HARNESS_ACCOUNT), ids),
    days=st.one_of(int32s, st.integers(-5, 4000), st.sampled_from([0, 1, 30, 3650, 3651])),
)
@example(account_id=HARNESS_ACCOUNT, days=30)
@example(account_id=HARNESS_ACCOUNT, days=0)
@example(account_id=HARNESS_ACCOUNT, days=3651)
@example(account_id="acct_0000000000000000", days=365)
def test_set_account_retention(harness, account_id, days):
    if account_id == HARNESS_ACCOUNT:
        account_id = harness.account_id
    ours = account_id == harness.account_id

    def set_as_asked(reply):
        assert (reply.account_id, reply.retention_days) == (account_id, days)

    harness.case(
        "SetAccountRetention",
        _call(
            harness.admin.SetAccountRetention,
            admin_pb2.SetAccountRetentionRequest(account_id=account_id, retention_days=days),
            harness.admin_meta,
        ),
        allowed=expected(
            id_verdict(account_id), days_verdict(days), ok={OK} if ours else {NOT_FOUND}
        ),
        writes={"gateway.gateway_account_retention"},
        on_ok=set_as_asked,
        fields={"account_id", "retention_days"},
    )


# -- RunRetentionJob.as_of ------------------------------------------------------------------------


def as_of_verdict(ts: Timestamp, now: float) -> int:
    """At or after now (less the slack), at most 100 years ahead; a second either side of each
    bound may go either way."""
    if not 0 <= ts.nanos < 1_000_000_000 or not _FIRST_SECOND <= ts.seconds <= _LAST_SECOND:
        return BAD
    earliest, latest = now - SLACK, now + HORIZON
    if earliest - 2 <= ts.seconds <= earliest + 2 or latest - 2 <= ts.seconds <= latest + 2:
        return EITHER
    return GOOD if earliest < ts.seconds < latest else BAD


# Relative to the gateway's clock (drawn as an offset, turned into a time in the test): around
# now, around both bounds, and anywhere.
offsets = st.one_of(
    st.integers(-400, 400),
    st.integers(-SLACK - 5, -SLACK + 5),
    st.integers(HORIZON - 5, HORIZON + 5),
    st.integers(0, HORIZON),
    st.integers(-(10**10), 10**11),
)


# A good case costs the gateway's retries towards the absent retention service (~1.5 s), so
# the draws lean to the bad side: absolute times (mostly invalid or past) and far offsets.
@_settings(60)
@given(
    job=st.one_of(st.just(retention_pb2.RETENTION_JOB_PURGE), enum_values),
    as_of=st.one_of(st.none(), timestamps, st.tuples(st.just("offset"), offsets)),
)
@example(job=retention_pb2.RETENTION_JOB_PURGE, as_of=("offset", -DAY))
@example(job=retention_pb2.RETENTION_JOB_PURGE, as_of=("offset", HORIZON + DAY))
@example(job=retention_pb2.RETENTION_JOB_PURGE, as_of=("offset", 365 * DAY))
@example(job=retention_pb2.RETENTION_JOB_RECONCILE, as_of=("offset", DAY))
@example(job=retention_pb2.RETENTION_JOB_PURGE, as_of=Timestamp(seconds=1, nanos=-1))
@example(job=INT32_MAX, as_of=("offset", DAY))
@example(job=INT32_MIN, as_of=None)
def test_run_retention_job_as_of(harness, no_retry_admin, job, as_of):  # noqa: F811
    now = harness.gateway.app.clock().timestamp()
    if isinstance(as_of, tuple):
        as_of = Timestamp(seconds=int(now) + as_of[1])
    verdicts = [enum_verdict(job, retention_pb2.RetentionJob)]
    if as_of is not None:
        verdicts.append(as_of_verdict(as_of, now))
        if job != retention_pb2.RETENTION_JOB_PURGE:
            verdicts.append(BAD)  # only the purge runs as of a later date
    harness.case(
        "RunRetentionJob",
        _call(
            no_retry_admin.RunRetentionJob,
            admin_pb2.RunRetentionJobRequest(job=job, as_of=as_of),
            harness.admin_meta,
        ),
        allowed=expected(*verdicts, ok={UNAVAILABLE}),
        fields={"job", "as_of"},
    )
