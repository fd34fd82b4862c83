"""Bad input, everywhere: every client-facing RPC of the gateway gets random and boundary values
(empty, huge, unicode edge cases, out-of-range numbers, unknown enums, malformed media, broken
streams, garbled credentials) and must answer with a well-formed status, keep serving, and
write nothing.

Each property draws a request, asks a small oracle built from the documented contract (the
identifier rule, the documented lengths and ranges) which outcomes are acceptable, and runs it
through `Harness.case` (tests/property/conftest.py), which checks the status (code, message,
ErrorInfo, one BadRequest field violation at least for INVALID_ARGUMENT), that no table of any
service and no media object changed, and that the gateway still answers. Where random input is
valid by the contract the call must succeed (reads return nothing; writes touch only the tables
they should). The bugs these properties found are pinned by the regression tests at the end
(their inputs are rarer than random draws would reach).
"""

from __future__ import annotations

import base64
import json
import random
import re
import struct
import unicodedata
from datetime import UTC, datetime

import grpc
import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from mixip.common.v1 import common_pb2
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import admin_pb2, gateway_pb2
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.retention.v1 import retention_pb2
from mixip.runtime.paging import encode_page_token
from tests.support import faces


def _settings(max_examples: int):
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,  # the same cases on every run and in CI
        database=None,  # nothing written next to the repository
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


TIMEOUT_SECONDS = 60
OK = "OK"  # the outcome of a call that succeeded
INVALID, NOT_FOUND, PRECONDITION = "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION"
UNAUTHENTICATED, DENIED, UNAVAILABLE = "UNAUTHENTICATED", "PERMISSION_DENIED", "UNAVAILABLE"
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
CHUNK_LIMIT = 256 * 1024  # the `gateway` fixture's max_chunk_bytes
UPLOAD_LIMIT = 8 * 1024 * 1024  # and max_upload_bytes
CONSENTED = "consented-talent"

# -- the contract, as an oracle ---------------------------------------------------------------
# A field is GOOD, BAD, or EITHER (the contract does not say: refusing it and accepting it are
# both fine). A request with a BAD field must be INVALID_ARGUMENT; one with only GOOD fields
# must get the RPC's normal answer; EITHER allows both.

GOOD, EITHER, BAD = 0, 1, 2
# The documented identifier rule (ID_RULE in the error messages): 1-128 of A-Z a-z 0-9 . _ : -
# starting with a letter or digit.
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", re.ASCII)


def id_verdict(value: str, *, required: bool = True) -> int:
    if not value:
        return BAD if required else GOOD
    return GOOD if ID.fullmatch(value) else BAD


# Free text may not hide or reorder itself: no C0/C1 controls, surrogates, private use, bidi
# embeddings/overrides/isolates, or the non-characters U+xFFFE/U+xFFFF.
BIDI_CONTROLS = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))


def _hidden(c: str) -> bool:
    code = ord(c)
    return (
        unicodedata.category(c) in ("Cc", "Cs", "Co")
        or code in BIDI_CONTROLS
        or code & 0xFFFE == 0xFFFE
    )


def text_verdict(value: str, max_length: int, *, required: bool) -> int:
    """Free text of at most `max_length` printable characters; a required one not blank."""
    if required and not value.strip():
        return BAD
    if len(value) > max_length or any(_hidden(c) for c in value):
        return BAD
    return GOOD


def page_size_verdict(value: int) -> int:
    return GOOD if 0 <= value <= 1000 else BAD  # 1-1000; 0 means 100


def page_token_verdict(value: str) -> int:
    return GOOD if not value else BAD  # none of ours: a random token never carries our filters


def enum_verdict(value: int, enum_type) -> int:
    return GOOD if value != 0 and value in enum_type.values() else BAD


_FIRST_SECOND = -62_135_596_800  # 0001-01-01T00:00:00Z, protobuf's earliest
_LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z, its latest


def timestamp_verdict(ts: Timestamp, *, not_after: datetime | None = None) -> int:
    if not 0 <= ts.nanos < 1_000_000_000 or not _FIRST_SECOND <= ts.seconds <= _LAST_SECOND:
        return BAD  # not a valid google.protobuf.Timestamp at all
    if ts.seconds < 0 or ts.seconds >= _LAST_SECOND - 86_400:
        return EITHER  # before 1970, or the last day of year 9999
    if not_after is not None and ts.seconds > not_after.timestamp() + 300:
        return BAD  # in the future (5 minutes of skew allowed)
    if not_after is not None and ts.seconds > not_after.timestamp():
        return EITHER
    return GOOD


def expected(*verdicts: int, ok: set[str]) -> set[str]:
    worst = max(verdicts, default=GOOD)
    if worst == BAD:
        return {INVALID}
    return ok | {INVALID} if worst == EITHER else set(ok)


# -- strategies -------------------------------------------------------------------------------

UNICODE_EDGES = [
    "",
    " ",
    "\t",
    "\x00",
    "a\x00b",
    "\x1b[31mred",
    "\x7f",
    "\x85",  # NEL, a C1 control
    "\u0301",  # a lone combining mark
    "e\u0301\u0301\u0301",
    "\u202eevil.exe",  # right-to-left override
    "\u200f\u200e",
    "\u200d",
    "\ufeff",
    "\uffff",
    "\ufffe",
    "\U0010ffff",
    "\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",
    "\U0001f600",
    "مرحبا",
    "\u2028\u2029",
    "\u3000",
    "\uff11\uff12\uff13",  # full-width digits
    "İstanbul",
    "\ufb01",  # the fi ligature
    "\u212a",  # the Kelvin sign
    "Ω\u0308",
]
ID_EDGES = [
    "a b",
    "a/b",
    "../../etc/passwd",
    "a@b",
    "a\\b",
    "-a",
    ".a",
    "_a",
    ":a",
    "a\nb",
    "a\u0301",
    "\uff41",  # a full-width a
    "%2e%2e",
    "a;DROP TABLE x",
    "'; --",
    "*",
    "a" * 128,
    "a" * 129,
    "A.b_c:d-e",
    "0",
    "med_" + "0" * 24,
]


def _repeat(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


# 10^4-10^5 characters, built from a short unit (Hypothesis cannot draw that many itself)
huge_text = st.builds(
    _repeat,
    st.sampled_from(["a", "é", "\U0001f600", "a b", "0", "\u0301", "/", "\x00", "ab\u202e"]),
    st.integers(10_000, 100_000),
)


texts = st.one_of(
    st.text(),
    st.text(max_size=300),
    st.sampled_from(UNICODE_EDGES + ID_EDGES),
    st.builds(str.__add__, st.sampled_from(UNICODE_EDGES), st.text(max_size=20)),
    st.builds(lambda n: "x" * n, st.sampled_from([63, 64, 65, 127, 128, 129, 254, 255, 256])),
    huge_text,
)
valid_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,40}", fullmatch=True)
ids = st.one_of(valid_ids, st.sampled_from(ID_EDGES), texts)
optional_ids = st.one_of(st.just(""), ids)
int32s = st.one_of(
    st.sampled_from([INT32_MIN, -5, -1, 0, 1, 2, 3, 99, 1000, 1001, INT32_MAX]),
    st.integers(INT32_MIN, INT32_MAX),
)
page_sizes = int32s
enum_values = int32s


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)
page_tokens = st.one_of(
    st.just(""),
    texts,
    st.binary(max_size=200).map(_b64),
    json_values.map(lambda v: _b64(json.dumps(v).encode())),
    st.builds(
        lambda p, f: _b64(json.dumps({"p": p, "f": f}).encode()),
        json_values,
        st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
    ),
    st.integers(1, 500).map(lambda n: _b64(b"[" * n + b"]" * n)),  # deeper: a test below
)
timestamps = st.builds(
    lambda s, n: Timestamp(seconds=s, nanos=n),
    st.one_of(
        st.sampled_from(
            [
                INT64_MIN,
                _FIRST_SECOND - 1,
                _FIRST_SECOND,
                -1,
                0,
                1_700_000_000,
                _LAST_SECOND - 86_400,
                _LAST_SECOND,
                _LAST_SECOND + 1,
                INT64_MAX,
            ]
        ),
        st.integers(INT64_MIN, INT64_MAX),
        st.integers(0, 1_800_000_000),
    ),
    st.one_of(
        st.sampled_from([INT32_MIN, -1, 0, 999_999_999, 1_000_000_000, INT32_MAX]),
        st.integers(INT32_MIN, INT32_MAX),
    ),
)

# -- media ------------------------------------------------------------------------------------


def _encode(ext: str) -> bytes:
    return faces.encode(np.full((16, 16, 3), 127, np.uint8), ext)


BLANK_PNG, BLANK_JPEG, BLANK_WEBP = _encode(".png"), _encode(".jpg"), _encode(".webp")
BLANK_VIDEO = faces.make_video(None, [(np.zeros((64, 64, 3), np.uint8), 1.0)], fps=4, size=(64, 64))
MAGIC = [
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    b"\x00\x00\x00\x18ftypmp42",
    b"\x00\x00\x00\x14ftypqt  ",
    b"\x00\x00\x00\x08moov",
    b"\x00\x00\x00\x08mdat",
    b"\x1a\x45\xdf\xa3",
    b"GIF89a",
    b"GIF87a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
]


def _png_claiming(width: int, height: int) -> bytes:
    """The blank PNG with its IHDR rewritten to claim another size (its CRC no longer fits)."""
    return BLANK_PNG[:16] + struct.pack(">II", width, height) + BLANK_PNG[24:]


def _jpeg_claiming(width: int, height: int) -> bytes:
    sof = BLANK_JPEG.index(b"\xff\xc0")
    return BLANK_JPEG[: sof + 5] + struct.pack(">HH", height, width) + BLANK_JPEG[sof + 9 :]


def _truncated(data: bytes, keep_below: int):
    return st.integers(1, keep_below - 1).map(lambda n: data[:n])


def _flipped(data: bytes, start: int, end: int):
    """`data` with one byte in [start, end) changed."""
    return st.tuples(st.integers(start, end - 1), st.integers(1, 255)).map(
        lambda at: data[: at[0]] + bytes([data[at[0]] ^ at[1]]) + data[at[0] + 1 :]
    )


_IDAT = BLANK_PNG.index(b"IDAT")
_IEND = BLANK_PNG.index(b"IEND")
_MOOV = BLANK_VIDEO.find(b"moov")
VIDEO_MAGIC = [m for m in MAGIC if m[4:8] in (b"ftyp", b"moov", b"mdat") or m[:2] == b"\x1a\x45"]
_HUGE_SIDES = [7_000, 40_000, 65_535, 2**31 - 1, 2**32 - 1]

# Passes the gateway's magic-bytes check, so it is stored before the matcher refuses it: the
# object and its row must be gone again when the call returns.
sniffable_bad_media = st.one_of(
    st.tuples(st.sampled_from([1, *_HUGE_SIDES]), st.sampled_from([1, *_HUGE_SIDES]))
    .filter(lambda wh: wh[0] * wh[1] > 40_000_000)
    .map(lambda wh: _png_claiming(*wh)),  # a decompression bomb, by its header
    st.tuples(st.integers(1, 4096), st.integers(1, 4096))
    .filter(lambda wh: wh != (16, 16))
    .map(lambda wh: _png_claiming(*wh)),  # another size, so the IHDR checksum is wrong
    st.builds(_jpeg_claiming, st.sampled_from([7_000, 65_535]), st.sampled_from([7_000, 65_535])),
    _flipped(BLANK_PNG, _IDAT + 4, _IEND - 4),  # corrupt pixel data or its checksum
    st.builds(bytes.__add__, st.sampled_from(VIDEO_MAGIC), st.binary(max_size=2048)),
    st.integers(12, _MOOV - 1).map(lambda n: BLANK_VIDEO[:n]),  # a video cut before its index
)
# Refused by the gateway's own check of the magic bytes and header, nearly always (empty
# media: the "header_only" and "empty_chunks" stream shapes).
unsniffable_media = st.one_of(
    st.binary(min_size=1, max_size=4096),
    st.builds(
        lambda seed, size: random.Random(seed).randbytes(size),
        st.integers(0, 2**32),
        st.integers(4096, 2_000_000),
    ),
    st.text(min_size=1, max_size=2000).map(str.encode),
    st.sampled_from([b"hello, this is text", b"<svg/>", b"%PDF-1.7\n", b"\x00" * 64]),
    _truncated(BLANK_PNG, len(BLANK_PNG) - 12),  # cut before the IEND chunk
    _truncated(BLANK_JPEG, len(BLANK_JPEG) - 2),  # cut before the end-of-image marker
    _truncated(BLANK_WEBP, len(BLANK_WEBP)),
    st.builds(_png_claiming, st.just(0), st.sampled_from([0, 1, 65_535])),
    st.builds(_jpeg_claiming, st.sampled_from([0, 1]), st.just(0)),
    st.builds(
        bytes.__add__,
        st.sampled_from([m for m in MAGIC if m not in VIDEO_MAGIC]),
        st.binary(max_size=2048),
    ),
    st.builds(
        lambda a, b: a + b"\xff\xd9" + b,  # JPEG magic, garbage, an end marker, garbage
        st.builds(bytes.__add__, st.just(b"\xff\xd8\xff"), st.binary(max_size=512)),
        st.binary(max_size=64),
    ),
)
# Never a decodable image or video: every upload made of these must be refused.
bad_media = sniffable_bad_media | unsniffable_media

# -- streams ----------------------------------------------------------------------------------

SHAPES = [
    "normal",
    "normal",
    "normal",
    "no_messages",
    "no_header",
    "two_headers",
    "chunk_before_header",
    "header_after_chunks",
    "header_only",
    "empty_chunks",
    "unset_first",
    "unset_later",
    "oversized_chunk",
    "too_large",
]


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


@st.composite
def streams(draw, message, header):
    """(shape, the messages of one upload/enrollment stream with `header` and bad media)."""
    shape = draw(st.sampled_from(SHAPES))
    media = draw(bad_media)
    chunks = [message(chunk=c) for c in _split(media, draw(st.integers(1, 70_000)))]
    head = message(header=header)
    messages = {
        "normal": [head, *chunks],
        "no_messages": [],
        "no_header": chunks,
        "two_headers": [head, head, *chunks],
        "chunk_before_header": [message(chunk=b"\xff\xd8\xff"), head, *chunks],
        "header_after_chunks": [head, *chunks, head],
        "header_only": [head],
        "empty_chunks": [head] + [message(chunk=b"")] * draw(st.integers(1, 5)),
        "unset_first": [message(), head, *chunks],
        "unset_later": [head, *chunks, message()],
        "oversized_chunk": [head, message(chunk=b"\xff\xd8\xff" + b"\x00" * CHUNK_LIMIT)],
        "too_large": [head]
        + [message(chunk=b"\x00" * CHUNK_LIMIT)] * (UPLOAD_LIMIT // CHUNK_LIMIT)
        + [message(chunk=b"\x00")],
    }[shape]
    return shape, messages


def _call(method, request, meta):
    return lambda: method(request, metadata=meta, timeout=TIMEOUT_SECONDS)


def _stream_call(method, messages, meta):
    return lambda: method(iter(list(messages)), metadata=meta, timeout=TIMEOUT_SECONDS)


@st.composite
def request_fields(draw, valid: dict, wild: dict) -> dict:
    """Field values of one request: a random subset of the fields (maybe none, maybe all) drawn
    from their `wild` strategy, the others from their `valid` one; the oracle judges them."""
    corrupted = draw(st.sets(st.sampled_from(sorted(wild))))
    return {name: draw(wild[name] if name in corrupted else valid[name]) for name in valid}


@pytest.fixture
def replayed() -> dict:
    """Idempotency keys used so far by a property, with what they were first used for (a repeat
    returns the first result; a reuse for something else is refused)."""
    return {}


# -- GatewayService ---------------------------------------------------------------------------

# Besides the client's own field names, a BadRequest of an upload or enrollment may name the
# matcher's field for the bytes ("media", "image").
UPLOAD_FIELDS = {"header", "message", "chunk", "media"}
ENROLL_FIELDS = {"header", "message", "chunk", "image"}
_UPLOAD_HEADER = {
    "project_id": st.just("film-1") | valid_ids,
    "filename": st.sampled_from(["", "a.jpg", "clip.mp4"]),
    "declared_content_type": st.sampled_from(["", "image/png", "video/mp4"]),
    "request_id": st.just("") | valid_ids,
}
# Half the headers are valid, so that the media and the stream are what is wrong.
upload_headers = st.fixed_dictionaries(_UPLOAD_HEADER) | request_fields(
    valid=_UPLOAD_HEADER,
    wild={
        "project_id": ids,
        "filename": texts,
        "declared_content_type": texts,
        "request_id": texts,
    },
)


@_settings(160)
@given(header=upload_headers, stream=st.data())
@example(header={"project_id": "film-1"}, stream=None)
def test_upload_media(harness, header, stream):
    header = pb.UploadHeader(**header)
    if stream is None:  # 1.6 GP claimed by a 100-byte PNG: stored, refused by the matcher
        messages = [
            pb.UploadMediaRequest(header=header),
            pb.UploadMediaRequest(chunk=_png_claiming(40_000, 40_000)),
        ]
    else:
        shape, messages = stream.draw(streams(pb.UploadMediaRequest, header))
        event(f"stream: {shape}")
    harness.case(
        "UploadMedia",
        _stream_call(harness.stub.UploadMedia, messages, harness.meta),
        allowed={INVALID},  # no stream drawn here carries decodable media
        fields=UPLOAD_FIELDS,
    )


@_settings(120)
@given(media_id=ids)
def test_get_media_results(harness, media_id):
    harness.case(
        "GetMediaResults",
        _call(
            harness.stub.GetMediaResults, pb.GetMediaResultsRequest(media_id=media_id), harness.meta
        ),
        allowed=expected(id_verdict(media_id), ok={NOT_FOUND}),
        fields={"media_id"},
    )


NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)  # the suite's FakeClock
good_timestamps = st.integers(0, int(NOW.timestamp())).map(lambda s: Timestamp(seconds=s))
good_evidence = st.builds(
    cpb.Evidence,
    method=st.just("signed-release"),
    policy_version=st.just("v3"),
    actor=st.just("staff-1"),
    captured_at=good_timestamps,
)
evidences = st.one_of(
    st.none(),
    st.builds(
        cpb.Evidence,
        method=st.just("signed-release") | texts,
        policy_version=st.just("v3") | texts,
        actor=st.just("staff-1") | texts,
        captured_at=st.none() | good_timestamps | timestamps,
    ),
)


def _evidence_verdict(evidence: cpb.Evidence | None) -> int:
    if evidence is None:
        return BAD
    return max(
        text_verdict(evidence.method, 64, required=True),
        text_verdict(evidence.policy_version, 64, required=True),
        text_verdict(evidence.actor, 128, required=True),
        timestamp_verdict(evidence.captured_at, not_after=NOW)
        if evidence.HasField("captured_at")
        else BAD,
    )


consent_requests = request_fields(
    valid={
        "talent_id": st.just("t-1") | valid_ids,
        "scope": st.sampled_from([1, 2]),
        "project_id": st.just(None),  # filled in to fit the scope
        "decision": st.sampled_from([1, 2]),
        "evidence": good_evidence,
        "request_id": st.just("") | valid_ids,
    },
    wild={
        "talent_id": ids,
        "scope": enum_values,
        "project_id": optional_ids,
        "decision": enum_values,
        "evidence": evidences,
        "request_id": texts,
    },
)


@_settings(150)
@given(fields=consent_requests)
def test_record_consent(harness, replayed, fields):
    scope, project_id = fields["scope"], fields["project_id"]
    if project_id is None:
        project_id = "film-1" if scope == cpb.CONSENT_SCOPE_FACE_USAGE else ""
    request = pb.RecordConsentRequest(**{**fields, "project_id": project_id})
    if scope == cpb.CONSENT_SCOPE_FACE_USAGE:
        project = id_verdict(project_id)
    elif scope == cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING:
        project = BAD if project_id else GOOD  # BIOMETRIC_PROCESSING covers every project
    else:
        project = GOOD  # the scope is wrong already
    content = (request.talent_id, scope, project_id, request.decision)
    first = replayed.get(request.request_id) if request.request_id else None
    allowed = expected(
        id_verdict(request.talent_id),
        enum_verdict(scope, cpb.ConsentScope),
        project,
        enum_verdict(request.decision, cpb.ConsentDecision),
        _evidence_verdict(fields["evidence"]),
        text_verdict(request.request_id, 128, required=False),
        ok={OK},
    )
    if first is not None and first != content:
        # a key already used for another record is refused (it would drop this one)
        allowed = {PRECONDITION if outcome == OK else outcome for outcome in allowed}

    def recorded(reply):
        if first is not None:
            return  # the first record with this key comes back
        if request.request_id:
            replayed[request.request_id] = content
        record = reply.record
        assert (record.talent_id, record.scope, record.project_id, record.decision) == (
            request.talent_id,
            scope,
            project_id,
            request.decision,
        )

    harness.case(
        "RecordConsent",
        _call(harness.stub.RecordConsent, request, harness.meta),
        allowed=allowed,
        # the record, a revocation's outbox row, the talent's data key (its first record), and
        # the account's consent version
        writes={
            "consent.consent_records",
            "consent.consent_outbox",
            "consent.consent_talent_keys",
            "consent.consent_account_versions",
        },
        on_ok=recorded,
        fields={"talent_id", "scope", "project_id", "decision", "evidence", "request_id"},
    )


def _empty_page(field: str):
    def check(reply):
        assert list(getattr(reply, field)) == [] and reply.next_page_token == ""

    return check


PAGING_VALID = {"page_size": st.sampled_from([0, 1, 1000]), "page_token": st.just("")}
PAGING_WILD = {"page_size": page_sizes, "page_token": page_tokens}


@_settings(150)
@given(
    fields=request_fields(
        valid={"talent_id": st.just("") | valid_ids, **PAGING_VALID},
        wild={"talent_id": optional_ids, **PAGING_WILD},
    )
)
def test_list_consents(harness, fields):
    request = pb.ListConsentsRequest(**fields)
    harness.case(
        "ListConsents",
        _call(harness.stub.ListConsents, request, harness.meta),
        allowed=expected(
            id_verdict(request.talent_id, required=False),
            page_size_verdict(request.page_size),
            page_token_verdict(request.page_token),
            ok={OK},
        ),
        on_ok=_empty_page("records"),  # the account has no consent records
        fields={"talent_id", "page_size", "page_token"},
    )


@pytest.fixture
def consented(harness):
    """The harness, whose account has a talent with biometric consent (so that enrollment
    images of that talent reach the face detector)."""
    harness.stub.RecordConsent(
        pb.RecordConsentRequest(
            talent_id=CONSENTED,
            scope=cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING,
            decision=cpb.CONSENT_DECISION_GRANTED,
            evidence=cpb.Evidence(
                method="signed-release",
                policy_version="v3",
                actor="staff-1",
                captured_at=Timestamp(seconds=int(NOW.timestamp())),
            ),
        ),
        metadata=harness.meta,
        timeout=TIMEOUT_SECONDS,
    )
    return harness


_ENROLL_HEADER = {
    "talent_id": st.just(CONSENTED) | valid_ids,
    "request_id": st.just("") | valid_ids,
}


@_settings(130)
@given(
    header=st.fixed_dictionaries(_ENROLL_HEADER)
    | request_fields(valid=_ENROLL_HEADER, wild={"talent_id": ids, "request_id": texts}),
    faceless=st.sampled_from([None, None, None, BLANK_PNG, BLANK_JPEG, BLANK_WEBP]),
    stream=st.data(),
)
def test_enroll_talent(consented, header, faceless, stream):
    header = pb.EnrollHeader(**header)
    if faceless is None:
        shape, messages = stream.draw(streams(pb.EnrollTalentRequest, header))
        event(f"stream: {shape}")
        allowed = {INVALID}
    else:  # a decodable image without a face: NO_FACE, or no consent for another talent
        messages = [pb.EnrollTalentRequest(header=header), pb.EnrollTalentRequest(chunk=faceless)]
        allowed = expected(
            id_verdict(header.talent_id),
            text_verdict(header.request_id, 128, required=False),
            ok={INVALID} if header.talent_id == CONSENTED else {PRECONDITION},
        )
    consented.case(
        "EnrollTalent",
        _stream_call(consented.stub.EnrollTalent, messages, consented.meta),
        allowed=allowed,
        fields=ENROLL_FIELDS,
    )


@_settings(150)
@given(
    fields=request_fields(
        valid={"talent_id": st.just("t-1") | valid_ids, **PAGING_VALID},
        wild={"talent_id": ids, **PAGING_WILD},
    )
)
def test_list_talent_faces(harness, fields):
    request = pb.ListTalentFacesRequest(**fields)
    harness.case(
        "ListTalentFaces",
        _call(harness.stub.ListTalentFaces, request, harness.meta),
        allowed=expected(
            id_verdict(request.talent_id),
            page_size_verdict(request.page_size),
            page_token_verdict(request.page_token),
            ok={OK},
        ),
        on_ok=_empty_page("faces"),  # nobody is enrolled
        fields={"talent_id", "page_size", "page_token"},
    )


@_settings(150)
@given(
    fields=request_fields(
        valid={
            "talent_id": st.just("") | valid_ids,
            "project_id": st.just("") | valid_ids,
            "since": st.none() | good_timestamps,
            **PAGING_VALID,
        },
        wild={
            "talent_id": optional_ids,
            "project_id": optional_ids,
            "since": timestamps,
            **PAGING_WILD,
        },
    )
)
def test_list_audit_events(harness, fields):
    request = pb.ListAuditEventsRequest(**fields)
    since = fields["since"]
    harness.case(
        "ListAuditEvents",
        _call(harness.stub.ListAuditEvents, request, harness.meta),
        allowed=expected(
            id_verdict(request.talent_id, required=False),
            id_verdict(request.project_id, required=False),
            GOOD if since is None else timestamp_verdict(since),
            page_size_verdict(request.page_size),
            page_token_verdict(request.page_token),
            ok={OK},
        ),
        on_ok=_empty_page("events"),  # this account never uploaded anything
        fields={"talent_id", "project_id", "since", "page_size", "page_token"},
    )


@_settings(120)
@given(talent_id=ids)
def test_export_talent_data(harness, talent_id):
    harness.case(
        "ExportTalentData",
        _call(
            harness.stub.ExportTalentData,
            pb.ExportTalentDataRequest(talent_id=talent_id),
            harness.meta,
        ),
        allowed=expected(id_verdict(talent_id), ok={NOT_FOUND}),  # no data about anyone
        fields={"talent_id"},
    )


@_settings(130)
@given(
    fields=request_fields(
        valid={"talent_id": st.just("t-1") | valid_ids, "request_id": st.just("") | valid_ids},
        wild={"talent_id": ids, "request_id": texts},
    )
)
def test_erase_talent(harness, fields):
    request = pb.EraseTalentRequest(**fields)
    harness.case(
        "EraseTalent",
        _call(harness.stub.EraseTalent, request, harness.meta),
        # nobody to erase: NOT_FOUND, and nothing journaled (no receipt, intent or marker)
        allowed=expected(
            id_verdict(request.talent_id),
            text_verdict(request.request_id, 128, required=False),
            ok={NOT_FOUND},
        ),
        fields={"talent_id", "request_id"},
    )


# -- AdminService -----------------------------------------------------------------------------


@_settings(130)
@given(
    fields=request_fields(
        valid={
            "name": st.just("studio")
            | st.text(max_size=128).filter(str.isprintable).filter(str.strip),
            "request_id": st.just("") | valid_ids,
        },
        wild={"name": texts, "request_id": texts},
    )
)
def test_create_account(harness, replayed, fields):
    request = admin_pb2.CreateAccountRequest(**fields)
    first = replayed.get(request.request_id) if request.request_id else None
    allowed = expected(
        text_verdict(request.name, 128, required=True),
        text_verdict(request.request_id, 128, required=False),
        ok={OK},
    )
    if first is not None and first != request.name:  # the key names another account
        allowed = {PRECONDITION if outcome == OK else outcome for outcome in allowed}

    def created(reply):
        assert reply.account.account_id and reply.account.name == request.name
        if first is not None:
            assert reply.api_key == ""  # a replay mints no second key
            return
        assert reply.api_key.startswith("mixip_")
        if request.request_id:
            replayed[request.request_id] = request.name

    harness.case(
        "CreateAccount",
        _call(harness.admin.CreateAccount, request, harness.admin_meta),
        allowed=allowed,
        writes={"gateway.gateway_accounts", "gateway.gateway_api_keys"},
        on_ok=created,
        fields={"name", "request_id"},
    )


@_settings(120)
@given(account_id=ids | st.builds("acct_{}".format, st.text("0123456789abcdef", max_size=20)))
def test_create_api_key(harness, account_id):
    harness.case(
        "CreateApiKey",
        _call(
            harness.admin.CreateApiKey,
            admin_pb2.CreateApiKeyRequest(account_id=account_id),
            harness.admin_meta,
        ),
        allowed=expected(id_verdict(account_id), ok={NOT_FOUND}),  # no such account
        fields={"account_id"},
    )


@_settings(150)
@given(fields=request_fields(valid=PAGING_VALID, wild=PAGING_WILD))
def test_list_accounts(harness, fields):
    request = admin_pb2.ListAccountsRequest(**fields)

    def listed(reply):
        assert [a.account_id for a in reply.accounts] == [harness.account_id]

    harness.case(
        "ListAccounts",
        _call(harness.admin.ListAccounts, request, harness.admin_meta),
        allowed=expected(
            page_size_verdict(request.page_size),
            page_token_verdict(request.page_token),
            ok={OK},
        ),
        on_ok=listed,
        fields={"page_size", "page_token"},
    )


@pytest.fixture
def no_retry_admin(harness):
    """An admin stub on a channel without retries: the retention service is not running, and
    the fixture's channel would retry each UNAVAILABLE answer."""
    from mixip.gateway.v1 import admin_pb2_grpc

    channel = grpc.insecure_channel(harness.gateway.address, options=[("grpc.enable_retries", 0)])
    yield admin_pb2_grpc.AdminServiceStub(channel)
    channel.close()


# Each case costs the gateway's own retries towards the absent retention service (~1.5 s), so
# this property is small: the boundary values and one random value.
@_settings(1)
@given(job=enum_values)
@example(job=0)
@example(job=99)
@example(job=-5)
@example(job=INT32_MIN)
@example(job=INT32_MAX)
def test_run_retention_job(harness, no_retry_admin, job):
    # The gateway passes `job` through to the retention service without validating it, so any
    # job, known or not, is UNAVAILABLE here (see the report); INVALID_ARGUMENT would be right
    # for the unknown ones.
    harness.case(
        "RunRetentionJob",
        _call(
            no_retry_admin.RunRetentionJob,
            admin_pb2.RunRetentionJobRequest(job=job),
            harness.admin_meta,
        ),
        allowed={UNAVAILABLE}
        if enum_verdict(job, retention_pb2.RetentionJob) == GOOD
        else {INVALID, UNAVAILABLE},
        fields={"job"},
    )


# -- forged page tokens -----------------------------------------------------------------------
# Page tokens are base64 JSON {"p": position, "f": fingerprint of the filters}, unsigned: a
# client can forge one for the filters it sends. A forged token of the right shape may be
# honoured (OK) or refused (INVALID_ARGUMENT); it must never break anything.


def _list_call(harness, rpc: str, position):
    """A call of list RPC `rpc` (no filters but the required talent) with a forged token."""
    a = harness.account_id
    if rpc == "ListConsents":
        token = encode_page_token(position, {"a": a, "t": ""})
        return _call(
            harness.stub.ListConsents, pb.ListConsentsRequest(page_token=token), harness.meta
        )
    if rpc == "ListAuditEvents":
        token = encode_page_token(position, {"a": a, "t": "", "p": "", "s": ""})
        return _call(
            harness.stub.ListAuditEvents, pb.ListAuditEventsRequest(page_token=token), harness.meta
        )
    if rpc == "ListTalentFaces":
        token = encode_page_token(position, {"a": a, "t": "t-1"})
        request = pb.ListTalentFacesRequest(talent_id="t-1", page_token=token)
        return _call(harness.stub.ListTalentFaces, request, harness.meta)
    token = encode_page_token(position, {})
    request = admin_pb2.ListAccountsRequest(page_token=token)
    return _call(harness.admin.ListAccounts, request, harness.admin_meta)


LIST_RPCS = ["ListConsents", "ListAuditEvents", "ListTalentFaces", "ListAccounts"]
positions = st.one_of(
    st.integers(INT64_MIN - 5, INT64_MAX + 5),
    st.sampled_from([INT64_MIN, -1, 0, 1, INT64_MAX]),
    st.text(),
    st.sampled_from(["", " ", "~", "\U0010ffff", "acct_ffffffffffffffff"]),
    st.none() | st.booleans() | st.floats() | st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@_settings(120)
@given(rpc=st.sampled_from(LIST_RPCS), position=positions)
def test_forged_page_tokens(harness, rpc, position):
    harness.case(
        rpc, _list_call(harness, rpc, position), allowed={OK, INVALID}, fields={"page_token"}
    )


# -- credentials, for every RPC ---------------------------------------------------------------

_SECRET_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# gRPC itself refuses other characters in metadata values before anything is sent
printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)
CREDENTIAL_FLAWS = [
    "missing",
    "random",
    "bearer_random",
    "unknown_key",
    "wrong_scheme",
    "no_scheme",
    "secret_changed",
    "secret_truncated",
    "secret_extended",
    "key_id_changed",
    "bin_header",
    "empty_bearer",
]


@st.composite
def bad_credentials(draw, key: str):
    """Call metadata that must be UNAUTHENTICATED, derived from the valid `key` header value."""
    token = key.split(" ", 1)[1]  # mixip_<16 hex>_<43 url-safe>
    prefix, key_id, secret = token[:6], token[6:22], token[23:]
    hex16 = st.text("0123456789abcdef", min_size=16, max_size=16)
    secret43 = st.text(_SECRET_ALPHABET, min_size=43, max_size=43)
    flaw = draw(st.sampled_from(CREDENTIAL_FLAWS))
    if flaw == "missing":
        return ()
    if flaw == "bin_header":  # the right key under another header
        return (("authorization-bin", f"Bearer {token}".encode()),)
    if flaw == "random":
        value = draw(printable.filter(lambda v: not v.lower().startswith("bearer ")))
    elif flaw == "bearer_random":
        value = "Bearer " + draw(printable)
    elif flaw == "unknown_key":
        value = f"Bearer mixip_{draw(hex16)}_{draw(secret43)}"
    elif flaw == "wrong_scheme":
        scheme = draw(st.sampled_from(["Basic", "Token", "Bearer:", "Bearerx", "mixip", "ApiKey"]))
        value = f"{scheme} {token}"
    elif flaw == "no_scheme":
        value = token
    elif flaw == "secret_changed":
        i = draw(st.integers(0, len(secret) - 1))
        other = draw(st.sampled_from(_SECRET_ALPHABET).filter(lambda c: c != secret[i]))
        value = f"Bearer {prefix}{key_id}_{secret[:i]}{other}{secret[i + 1 :]}"
    elif flaw == "secret_truncated":
        value = f"Bearer {prefix}{key_id}_{secret[: draw(st.integers(0, len(secret) - 1))]}"
    elif flaw == "secret_extended":
        value = f"Bearer {token}{draw(st.text(_SECRET_ALPHABET, min_size=1, max_size=5))}"
    elif flaw == "key_id_changed":
        value = f"Bearer {prefix}{draw(hex16.filter(lambda h: h != key_id))}_{secret}"
    else:
        value = draw(st.sampled_from(["Bearer", "Bearer ", "bearer  ", ""]))
    return (("authorization", value),)


def _valid_requests(harness) -> dict:
    """A small valid request per RPC: bad credentials must stop each one at the door."""
    consent = pb.RecordConsentRequest(
        talent_id="t-1",
        scope=cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING,
        decision=cpb.CONSENT_DECISION_GRANTED,
        evidence=cpb.Evidence(
            method="m", policy_version="v", actor="a", captured_at=Timestamp(seconds=1)
        ),
    )
    s, a = harness.stub, harness.admin
    return {
        "UploadMedia": (
            s.UploadMedia,
            [
                pb.UploadMediaRequest(header=pb.UploadHeader(project_id="film-1")),
                pb.UploadMediaRequest(chunk=BLANK_PNG),
            ],
        ),
        "GetMediaResults": (s.GetMediaResults, pb.GetMediaResultsRequest(media_id="med_1")),
        "CreateUploadSession": (
            s.CreateUploadSession,
            pb.CreateUploadSessionRequest(project_id="film-1", declared_size=10),
        ),
        "AppendUploadChunks": (
            s.AppendUploadChunks,
            [pb.AppendUploadChunksRequest(session_id=UNKNOWN_SESSION, offset=0, data=b"x")],
        ),
        "GetUploadSession": (
            s.GetUploadSession,
            pb.GetUploadSessionRequest(session_id=UNKNOWN_SESSION),
        ),
        "FinishUploadSession": (
            s.FinishUploadSession,
            pb.FinishUploadSessionRequest(session_id=UNKNOWN_SESSION, sha256="0" * 64),
        ),
        "GetMediaPreview": (s.GetMediaPreview, pb.GetMediaPreviewRequest(media_id="med_1")),
        "RecordConsent": (s.RecordConsent, consent),
        "ListConsents": (s.ListConsents, pb.ListConsentsRequest()),
        "EnrollTalent": (
            s.EnrollTalent,
            [
                pb.EnrollTalentRequest(header=pb.EnrollHeader(talent_id="t-1")),
                pb.EnrollTalentRequest(chunk=BLANK_PNG),
            ],
        ),
        "ListTalentFaces": (s.ListTalentFaces, pb.ListTalentFacesRequest(talent_id="t-1")),
        "ListAuditEvents": (s.ListAuditEvents, pb.ListAuditEventsRequest()),
        "VerifyAuditLog": (s.VerifyAuditLog, pb.VerifyAuditLogRequest()),
        "GetAuditCheckpoint": (s.GetAuditCheckpoint, pb.GetAuditCheckpointRequest()),
        "GetAuditInclusionProof": (
            s.GetAuditInclusionProof,
            pb.GetAuditInclusionProofRequest(sequence=1, tree_size=1),
        ),
        "GetAuditConsistencyProof": (
            s.GetAuditConsistencyProof,
            pb.GetAuditConsistencyProofRequest(from_size=0, to_size=0),
        ),
        "GetAuditLogPublicKey": (s.GetAuditLogPublicKey, pb.GetAuditLogPublicKeyRequest()),
        "ExportTalentData": (s.ExportTalentData, pb.ExportTalentDataRequest(talent_id="t-1")),
        "EraseTalent": (s.EraseTalent, pb.EraseTalentRequest(talent_id="t-1")),
        "CreateAccount": (a.CreateAccount, admin_pb2.CreateAccountRequest(name="x")),
        "CreateApiKey": (
            a.CreateApiKey,
            admin_pb2.CreateApiKeyRequest(account_id=harness.account_id),
        ),
        "ListAccounts": (a.ListAccounts, admin_pb2.ListAccountsRequest()),
        "RunRetentionJob": (
            a.RunRetentionJob,
            admin_pb2.RunRetentionJobRequest(job=retention_pb2.RETENTION_JOB_PURGE),
        ),
        "GetRetentionStatus": (a.GetRetentionStatus, admin_pb2.GetRetentionStatusRequest()),
        "DeleteTalentFace": (
            s.DeleteTalentFace,
            pb.DeleteTalentFaceRequest(talent_id="t-1", face_id="f-1"),
        ),
        "ListApiKeys": (a.ListApiKeys, admin_pb2.ListApiKeysRequest(account_id=harness.account_id)),
        "RevokeApiKey": (
            a.RevokeApiKey,
            admin_pb2.RevokeApiKeyRequest(api_key_id="0123456789abcdef"),
        ),
        "SetAccountRetention": (
            a.SetAccountRetention,
            admin_pb2.SetAccountRetentionRequest(account_id=harness.account_id, retention_days=30),
        ),
        "GetVaultStatus": (a.GetVaultStatus, admin_pb2.GetVaultStatusRequest()),
        "ListAccessLog": (s.ListAccessLog, pb.ListAccessLogRequest()),
        "CreateProject": (s.CreateProject, pb.CreateProjectRequest(display_name="Film")),
        "ListProjects": (s.ListProjects, pb.ListProjectsRequest()),
        "InviteCollaborator": (
            s.InviteCollaborator,
            pb.InviteCollaboratorRequest(
                project_id="film-1", account_id="acc-2", role=pb.PROJECT_ROLE_VIEWER
            ),
        ),
        "AcceptInvitation": (
            s.AcceptInvitation,
            pb.AcceptInvitationRequest(project_id="film-1", owner_account_id="acc-2"),
        ),
        "RemoveCollaborator": (
            s.RemoveCollaborator,
            pb.RemoveCollaboratorRequest(project_id="film-1", account_id="acc-2"),
        ),
        "ListCollaborators": (
            s.ListCollaborators,
            pb.ListCollaboratorsRequest(project_id="film-1"),
        ),
        "ListMedia": (s.ListMedia, pb.ListMediaRequest(project_id="film-1")),
        "ListClearanceReport": (
            s.ListClearanceReport,
            pb.ListClearanceReportRequest(project_id="film-1"),
        ),
        "RecordReviewDecision": (
            s.RecordReviewDecision,
            pb.RecordReviewDecisionRequest(
                media_id="med_1", decision=common_pb2.REVIEW_DECISION_BLOCKED
            ),
        ),
        "AddWebhook": (s.AddWebhook, pb.AddWebhookRequest(url="https://hooks.example.com/x")),
        "ListWebhooks": (s.ListWebhooks, pb.ListWebhooksRequest()),
        "RemoveWebhook": (s.RemoveWebhook, pb.RemoveWebhookRequest(webhook_id="wh_1")),
        "TestWebhook": (s.TestWebhook, pb.TestWebhookRequest(webhook_id="wh_1")),
        "RotateWebhookSecret": (
            s.RotateWebhookSecret,
            pb.RotateWebhookSecretRequest(webhook_id="wh_1"),
        ),
        "GetJob": (s.GetJob, pb.GetJobRequest(job_id="job_1")),
        "WatchJob": (s.WatchJob, pb.WatchJobRequest(job_id="job_1")),
        "CancelJob": (s.CancelJob, pb.CancelJobRequest(job_id="job_1")),
        "ListJobs": (s.ListJobs, pb.ListJobsRequest(project_id="film-1")),
        "GetAccount": (s.GetAccount, pb.GetAccountRequest()),
        "UpdateAccount": (s.UpdateAccount, pb.UpdateAccountRequest(name="Studio")),
        "CloseOwnAccount": (
            s.CloseOwnAccount,
            pb.CloseOwnAccountRequest(confirm_account_id=harness.account_id),
        ),
        "ExportOwnAccount": (s.ExportOwnAccount, pb.ExportOwnAccountRequest()),
        "CloseAccount": (
            a.CloseAccount,
            admin_pb2.CloseAccountRequest(account_id=harness.account_id),
        ),
        "ExportAccount": (
            a.ExportAccount,
            admin_pb2.ExportAccountRequest(account_id=harness.account_id),
        ),
    }


UNKNOWN_SESSION = "ups_" + "0" * 32

GATEWAY_RPCS = list(gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].methods_by_name)
ADMIN_RPCS = list(admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods_by_name)


@_settings(480)
@given(
    rpc=st.sampled_from(GATEWAY_RPCS + ADMIN_RPCS),
    wrong_kind=st.booleans(),
    request_id_header=st.none() | printable,
    data=st.data(),
)
def test_bad_credentials_on_every_rpc(harness, rpc, wrong_kind, request_id_header, data):
    method, request = _valid_requests(harness)[rpc]
    admin = rpc in ADMIN_RPCS
    if wrong_kind:  # a valid key of the other kind: an account's on admin calls, and back
        meta, allowed = (harness.meta if admin else harness.admin_meta), {DENIED}
    else:
        key = (harness.admin_meta if admin else harness.meta)[0][1]
        meta, allowed = data.draw(bad_credentials(key)), {UNAUTHENTICATED}
    if request_id_header is not None:
        meta = (*meta, ("x-request-id", request_id_header))
    if isinstance(request, list):
        call = _stream_call(method, request, meta)
    elif rpc == "WatchJob":  # a server stream: its status comes with its first read
        call = lambda: list(method(request, metadata=meta, timeout=TIMEOUT_SECONDS))  # noqa: E731
    else:
        call = _call(method, request, meta)
    harness.case(rpc, call, allowed=allowed)


def test_every_rpc_has_a_property():
    with_input = {
        "UploadMedia",
        "GetMediaResults",
        "RecordConsent",
        "ListConsents",
        "EnrollTalent",
        "ListTalentFaces",
        "ListAuditEvents",
        "ExportTalentData",
        "EraseTalent",
        "CreateAccount",
        "CreateApiKey",
        "ListAccounts",
        "RunRetentionJob",
        *("DeleteTalentFace", "ListApiKeys", "RevokeApiKey"),
        # ^ test_face_deletion_and_api_keys_refuse_bad_input.py
        "SetAccountRetention",  # test_retention_periods_refuse_bad_input.py
        "GetMediaPreview",  # test_previews_refuse_bad_input.py
        "ListAccessLog",  # test_access_log_refuses_bad_input.py
        *("CreateUploadSession", "AppendUploadChunks", "GetUploadSession"),
        "FinishUploadSession",  # ^ test_upload_sessions_refuse_bad_input.py
        *("CreateProject", "InviteCollaborator", "RemoveCollaborator", "ListCollaborators"),
        *("ListMedia", "RecordReviewDecision", "ListProjects", "AcceptInvitation"),
        "ListClearanceReport",
        # ^ test_projects_and_review_refuse_bad_input.py
        *("AddWebhook", "ListWebhooks", "RemoveWebhook", "TestWebhook", "RotateWebhookSecret"),
        # ^ test_webhooks_refuse_bad_input.py
        *("GetAuditInclusionProof", "GetAuditConsistencyProof"),
        # ^ test_audit_proofs_refuse_bad_input.py
        *("GetJob", "WatchJob", "CancelJob", "ListJobs"),  # test_jobs_refuse_bad_input.py
        *("UpdateAccount", "CloseOwnAccount", "CloseAccount", "ExportAccount"),
        # ^ test_accounts_refuse_bad_input.py
    }
    credentials_only = {"VerifyAuditLog", "GetRetentionStatus"}  # requests without fields
    credentials_only |= {"GetAuditCheckpoint", "GetAuditLogPublicKey"}
    credentials_only |= {"GetVaultStatus"}  # test_vault_status_refuses_bad_input.py
    credentials_only |= {"GetAccount", "ExportOwnAccount"}
    assert with_input | credentials_only == set(GATEWAY_RPCS + ADMIN_RPCS)


# -- regressions --------------------------------------------------------------------------------
# One test per bug these properties found, running its minimal reproductions and listing those
# that misbehave.


def _reproduce(harness, cases, *, fields: set[str]) -> None:
    """Runs `(label, rpc, call, allowed)` cases; fails listing every case that misbehaved."""
    failures = []
    for label, rpc, call, allowed in cases:
        try:
            harness.case(rpc, call, allowed=allowed, fields=fields)
        except AssertionError as exc:
            failures.append(f"{label}: {str(exc).splitlines()[0]}")
    assert not failures, "\n".join(failures)


def _consent_request(**overrides) -> pb.RecordConsentRequest:
    evidence = cpb.Evidence(
        method="m", policy_version="v", actor="a", captured_at=Timestamp(seconds=1)
    )
    return pb.RecordConsentRequest(
        talent_id="t-1",
        scope=cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING,
        decision=cpb.CONSENT_DECISION_GRANTED,
        evidence=evidence,
        **overrides,
    )


def test_blank_text_longer_than_its_field(harness):
    """Blank optional text is checked too (it once skipped the length check: SQLite stored it,
    PostgreSQL cut the spaces off the idempotency key or answered INTERNAL for U+3000)."""
    cases = []
    for blank in (" " * 129, "\u3000" * 129):
        label = f"request_id={blank[0]!r}*129"
        cases += [
            (
                f"CreateAccount {label}",
                "CreateAccount",
                _call(
                    harness.admin.CreateAccount,
                    admin_pb2.CreateAccountRequest(name="studio", request_id=blank),
                    harness.admin_meta,
                ),
                {INVALID},
            ),
            (
                f"EraseTalent {label}",
                "EraseTalent",
                _call(
                    harness.stub.EraseTalent,
                    pb.EraseTalentRequest(talent_id="t-1", request_id=blank),
                    harness.meta,
                ),
                {INVALID},
            ),
            (
                f"RecordConsent {label}",
                "RecordConsent",
                _call(harness.stub.RecordConsent, _consent_request(request_id=blank), harness.meta),
                {INVALID},
            ),
        ]
    _reproduce(harness, cases, fields={"request_id"})


def _list_with_token(harness, rpc: str, token: str):
    if rpc == "ListConsents":
        request = pb.ListConsentsRequest(page_token=token)
        return _call(harness.stub.ListConsents, request, harness.meta)
    if rpc == "ListAuditEvents":
        request = pb.ListAuditEventsRequest(page_token=token)
        return _call(harness.stub.ListAuditEvents, request, harness.meta)
    if rpc == "ListTalentFaces":
        request = pb.ListTalentFacesRequest(talent_id="t-1", page_token=token)
        return _call(harness.stub.ListTalentFaces, request, harness.meta)
    request = admin_pb2.ListAccountsRequest(page_token=token)
    return _call(harness.admin.ListAccounts, request, harness.admin_meta)


def test_deeply_nested_page_token(harness):
    """A token that is nested JSON must not reach json.loads's recursion limit as INTERNAL."""
    token = _b64(b"[" * 5000)  # page_token=base64url("[" * 5000)
    _reproduce(
        harness,
        [(rpc, rpc, _list_with_token(harness, rpc, token), {INVALID}) for rpc in LIST_RPCS],
        fields={"page_token"},
    )


def test_header_request_id_violation_names_its_path(harness):
    upload = [
        pb.UploadMediaRequest(header=pb.UploadHeader(project_id="film-1", request_id="\x08")),
        pb.UploadMediaRequest(chunk=BLANK_PNG),
    ]
    enroll = [
        pb.EnrollTalentRequest(header=pb.EnrollHeader(talent_id="t-1", request_id="\x08")),
        pb.EnrollTalentRequest(chunk=BLANK_PNG),
    ]
    cases = [
        (
            "UploadMedia header.request_id='\\x08'",
            "UploadMedia",
            _stream_call(harness.stub.UploadMedia, upload, harness.meta),
            {INVALID},
        ),
        (
            "EnrollTalent header.request_id='\\x08'",
            "EnrollTalent",
            _stream_call(harness.stub.EnrollTalent, enroll, harness.meta),
            {INVALID},
        ),
    ]
    _reproduce(harness, cases, fields={"header"})


def test_forged_page_token_beyond_int64(harness):
    cases = [
        (f"{rpc} position={position}", rpc, _list_call(harness, rpc, position), {OK, INVALID})
        for rpc in ("ListConsents", "ListAuditEvents")
        for position in (2**63, -(2**63) - 1)
    ]
    _reproduce(harness, cases, fields={"page_token"})


def test_forged_page_token_with_nul(harness):
    cases = [
        (f"{rpc} position='a\\x00'", rpc, _list_call(harness, rpc, "a\x00"), {OK, INVALID})
        for rpc in ("ListTalentFaces", "ListAccounts")
    ]
    _reproduce(harness, cases, fields={"page_token"})


def test_forged_page_token_with_lone_surrogate(harness):
    cases = [
        (f"{rpc} position='\\ud800'", rpc, _list_call(harness, rpc, "\ud800"), {OK, INVALID})
        for rpc in ("ListTalentFaces", "ListAccounts")
    ]
    _reproduce(harness, cases, fields={"page_token"})


def test_request_that_is_not_protobuf(harness):
    """Bytes that do not parse as the request (invalid UTF-8 in a string field, a truncated
    field) are INVALID_ARGUMENT from our interceptor, not gRPC's bare INTERNAL."""
    channel = grpc.insecure_channel(harness.gateway.address)

    def raw(method: str, data: bytes, meta):
        call = channel.unary_unary(
            method, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        return lambda: call(data, metadata=meta, timeout=TIMEOUT_SECONDS)

    gateway, admin = "/mixip.gateway.v1.GatewayService/", "/mixip.gateway.v1.AdminService/"
    cases = [
        (
            "GetMediaResults media_id=b'\\xff\\xfe' (invalid UTF-8)",
            "GetMediaResults",
            raw(gateway + "GetMediaResults", b"\x0a\x02\xff\xfe", harness.meta),
            {INVALID},
        ),
        (
            "ListConsents talent_id truncated (length 5, 2 bytes)",
            "ListConsents",
            raw(gateway + "ListConsents", b"\x0a\x05ab", harness.meta),
            {INVALID},
        ),
        (
            "CreateAccount b'\\xff\\xff\\xff'",
            "CreateAccount",
            raw(admin + "CreateAccount", b"\xff\xff\xff", harness.admin_meta),
            {INVALID},
        ),
    ]
    try:
        _reproduce(harness, cases, fields={"request"})
    finally:
        channel.close()
