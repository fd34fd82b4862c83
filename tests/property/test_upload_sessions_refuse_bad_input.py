"""Bad input for the resumable upload sessions (tests/property/test_bad_input.py has the other
methods): any project, file name, size, session id, offset, bytes and SHA-256. A bad field is
INVALID_ARGUMENT naming it; a well-formed unknown session is NOT_FOUND; a real session offered
bytes at another offset than its durable one, or finished before its bytes are in, is
FAILED_PRECONDITION; and nothing is written (a valid CreateUploadSession writes its row only)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from mixip.gateway.v1 import gateway_pb2 as pb
from tests.property.test_bad_input import (
    BAD,
    GOOD,
    INT64_MAX,
    INT64_MIN,
    INVALID,
    NOT_FOUND,
    OK,
    PRECONDITION,
    _call,
    _settings,
    _stream_call,
    expected,
    id_verdict,
    ids,
    text_verdict,
    texts,
)

MAX_SESSION_BYTES = 10 * 1024**3  # the `gateway` fixture's (the default)
SESSION_ID_LIKE = st.from_regex(r"ups_[0-9a-f]{32}", fullmatch=True)
int64s = st.one_of(
    st.sampled_from([INT64_MIN, -1, 0, 1, 2, MAX_SESSION_BYTES, MAX_SESSION_BYTES + 1, INT64_MAX]),
    st.integers(INT64_MIN, INT64_MAX),
)
session_ids = st.one_of(ids, SESSION_ID_LIKE)


def session_verdict(value: str) -> int:
    """The documented rule: an id CreateUploadSession returned (ups_ and 32 hex digits)."""
    return GOOD if re.fullmatch(r"ups_[0-9a-f]{32}", value) else BAD


def _real_session(harness) -> str:
    """A session of the harness's account, made once per property, with no byte in."""
    if not hasattr(harness, "session_id"):
        harness.session_id = harness.stub.CreateUploadSession(
            pb.CreateUploadSessionRequest(project_id="film-1", declared_size=1000),
            metadata=harness.meta,
        ).session.session_id
    return harness.session_id


@_settings(80)
@given(
    project_id=st.just("film-1") | ids,
    filename=st.sampled_from(["", "episode-1.mp4"]) | texts,
    content_type=st.sampled_from(["", "video/mp4"]) | texts,
    size=st.integers(1, MAX_SESSION_BYTES) | int64s,
)
def test_create_upload_session(harness, project_id, filename, content_type, size):
    size_verdict = GOOD if 1 <= size <= MAX_SESSION_BYTES else BAD
    harness.case(
        "CreateUploadSession",
        _call(
            harness.stub.CreateUploadSession,
            pb.CreateUploadSessionRequest(
                project_id=project_id,
                filename=filename,
                declared_size=size,
                declared_content_type=content_type,
            ),
            harness.meta,
        ),
        allowed=expected(
            id_verdict(project_id),
            text_verdict(filename, 255, required=False),
            text_verdict(content_type, 128, required=False),
            size_verdict,
            ok={OK},
        ),
        writes={"gateway.gateway_upload_sessions"},
        fields={"project_id", "filename", "declared_content_type", "declared_size"},
    )


@_settings(80)
@given(
    real=st.booleans(),
    session_id=session_ids,
    offset=int64s.filter(lambda n: n != 0),  # 0 is the real session's durable offset
    data=st.binary(max_size=2000),
    more=st.integers(0, 2),
)
def test_append_upload_chunks(harness, real, session_id, offset, data, more):
    sid = _real_session(harness) if real else session_id
    messages = [pb.AppendUploadChunksRequest(session_id=sid, offset=offset, data=data)] * (1 + more)
    if real:
        allowed = {INVALID} if offset < 0 else {PRECONDITION}
    else:
        verdict = session_verdict(sid)
        allowed = {INVALID} if verdict == BAD else {NOT_FOUND}
    harness.case(
        "AppendUploadChunks",
        _stream_call(harness.stub.AppendUploadChunks, messages, harness.meta),
        allowed=allowed,
        fields={"session_id", "message"},
    )


def test_an_empty_append_stream_is_refused(harness):
    harness.case(
        "AppendUploadChunks",
        _stream_call(harness.stub.AppendUploadChunks, [], harness.meta),
        allowed={INVALID},
        fields={"session_id"},
    )


@_settings(60)
@given(real=st.booleans(), session_id=session_ids)
def test_get_upload_session(harness, real, session_id):
    sid = _real_session(harness) if real else session_id
    verdict = GOOD if real else session_verdict(sid)
    harness.case(
        "GetUploadSession",
        _call(
            harness.stub.GetUploadSession, pb.GetUploadSessionRequest(session_id=sid), harness.meta
        ),
        allowed=expected(verdict, ok={OK} if real else {NOT_FOUND}),
        fields={"session_id"},
    )


@_settings(80)
@given(
    real=st.booleans(),
    session_id=session_ids,
    sha256=st.one_of(texts, st.from_regex(r"[0-9a-f]{64}", fullmatch=True)),
)
def test_finish_upload_session(harness, real, session_id, sha256):
    sid = _real_session(harness) if real else session_id
    sha_verdict = GOOD if re.fullmatch(r"[0-9a-f]{64}", sha256) else BAD
    verdict = GOOD if real else session_verdict(sid)
    harness.case(
        "FinishUploadSession",
        _call(
            harness.stub.FinishUploadSession,
            pb.FinishUploadSessionRequest(session_id=sid, sha256=sha256),
            harness.meta,
        ),
        # a real session has none of its bytes in: it cannot be finished yet
        allowed=expected(verdict, sha_verdict, ok={PRECONDITION} if real else {NOT_FOUND}),
        fields={"session_id", "sha256"},
    )
