"""Assertions on gRPC failures: the code, the ErrorInfo reason, and the BadRequest fields."""

from __future__ import annotations

import grpc
import pytest

from mixip.runtime.errors import ErrorDetails, error_details


def expect_error(code: grpc.StatusCode, call, *args, **kwargs) -> ErrorDetails:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    details = error_details(caught.value)
    assert details.code == code, f"expected {code.name}, got {details.code.name}: {details.message}"
    return details


def expect_invalid(call, *args, fields: set[str], **kwargs) -> ErrorDetails:
    """INVALID_ARGUMENT with one BadRequest naming at least the given fields."""
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, call, *args, **kwargs)
    named = {v.field for v in details.violations}
    assert fields <= named, f"expected violations of {fields}, got {named}"
    assert all(v.description for v in details.violations)
    return details
