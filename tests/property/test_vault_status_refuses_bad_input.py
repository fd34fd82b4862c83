"""Bad input for the admin's `GetVaultStatus` (tests/property/test_bad_input.py has the method).

The request has no field, so the input is the call itself: arbitrary bytes as the request
(parsing ones, unknown fields included, must be answered; the others are INVALID_ARGUMENT on
`request`), garbled credentials (UNAUTHENTICATED) and an account's key (PERMISSION_DENIED).
Every case writes nothing (the audit vault's state row included) and leaves the gateway
serving."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import example, given
from hypothesis import strategies as st

from mixip.gateway.v1 import admin_pb2
from tests.property.test_bad_input import (
    DENIED,
    INVALID,
    OK,
    TIMEOUT_SECONDS,
    UNAUTHENTICATED,
    _call,
    _settings,
    bad_credentials,
    printable,
)

RPC = "GetVaultStatus"
METHOD = "/mixip.gateway.v1.AdminService/GetVaultStatus"


def _status_ok(reply) -> None:
    status = admin_pb2.GetVaultStatusResponse.FromString(reply)
    assert status.key_version >= 1
    assert status.HasField("rotated_at") and status.rotated_at.seconds > 0


@pytest.fixture
def raw_call(harness):
    """Calls GetVaultStatus with any bytes as the request."""
    channel = grpc.insecure_channel(harness.gateway.address)
    call = channel.unary_unary(
        METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    yield lambda data, meta: lambda: call(data, metadata=meta, timeout=TIMEOUT_SECONDS)
    channel.close()


# A protobuf field: its key (field number << 3 | wire type) and a payload of that type.
unknown_fields = st.lists(
    st.tuples(st.integers(1, 2**29 - 1), st.sampled_from([0, 1, 2, 5]), st.binary(max_size=12)),
    max_size=4,
)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    key = _encode_varint(number << 3 | wire)
    if wire == 0:
        return key + _encode_varint(int.from_bytes(payload[:9] or b"\0", "little"))
    if wire == 1:
        return key + payload[:8].ljust(8, b"\0")
    if wire == 5:
        return key + payload[:4].ljust(4, b"\0")
    return key + _encode_varint(len(payload)) + payload


@_settings(100)
@given(
    request=st.one_of(
        unknown_fields.map(lambda fs: b"".join(_field(*f) for f in fs)),
        st.binary(max_size=40),
    )
)
@example(request=b"")
@example(request=b"\xff\xff\xff")
@example(request=b"\x0a\x05ab")  # a length-delimited field cut short
def test_get_vault_status_with_any_request_bytes(harness, raw_call, request):
    try:
        admin_pb2.GetVaultStatusRequest.FromString(request)
        allowed = {OK}
    except DecodeError:
        allowed = {INVALID}
    harness.case(
        RPC,
        raw_call(request, harness.admin_meta),
        allowed=allowed,
        on_ok=_status_ok,
        fields={"request"},
    )


@_settings(100)
@given(wrong_kind=st.booleans(), request_id_header=st.none() | printable, data=st.data())
def test_get_vault_status_refuses_any_credential_but_the_admins(
    harness, wrong_kind, request_id_header, data
):
    if wrong_kind:
        meta, allowed = harness.meta, {DENIED}
    else:
        meta, allowed = data.draw(bad_credentials(harness.admin_meta[0][1])), {UNAUTHENTICATED}
    if request_id_header is not None:
        meta = (*meta, ("x-request-id", request_id_header))
    harness.case(
        RPC,
        _call(harness.admin.GetVaultStatus, admin_pb2.GetVaultStatusRequest(), meta),
        allowed=allowed,
    )
