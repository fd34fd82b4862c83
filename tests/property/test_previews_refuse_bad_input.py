"""Bad input for `GetMediaPreview` (tests/property/test_bad_input.py has the other methods): any
media id and any max_side; a bad field is INVALID_ARGUMENT naming it, a well-formed unknown
media is NOT_FOUND, and nothing is written."""

from __future__ import annotations

from hypothesis import given

from mixip.gateway.v1 import gateway_pb2 as pb
from tests.property.test_bad_input import (
    BAD,
    GOOD,
    NOT_FOUND,
    _call,
    _settings,
    expected,
    id_verdict,
    ids,
    int32s,
)


def max_side_verdict(value: int) -> int:
    return GOOD if value == 0 or 64 <= value <= 2048 else BAD


@_settings(70)
@given(media_id=ids, max_side=int32s)
def test_get_media_preview(harness, media_id, max_side):
    harness.case(
        "GetMediaPreview",
        _call(
            harness.stub.GetMediaPreview,
            pb.GetMediaPreviewRequest(media_id=media_id, max_side=max_side),
            harness.meta,
        ),
        allowed=expected(id_verdict(media_id), max_side_verdict(max_side), ok={NOT_FOUND}),
        fields={"media_id", "max_side"},
    )
