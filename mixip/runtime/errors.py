"""Domain errors and their mapping to gRPC status with google.rpc details (AIP-193).

Domain code raises a `MeshError` subclass; the server interceptor turns it into a status with an
`ErrorInfo` (reason, domain) and, for bad input, one `BadRequest` listing every field violation.
Clients (the CLI, other services, tests) read the details back with `error_details`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class MeshError(Exception):
    """Base of every error a service returns on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})  # the ErrorInfo's metadata (e.g. where to resume)


class InvalidArgument(MeshError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: list[FieldViolation],
        message: str | None = None,
        *,
        reason: str | None = None,
    ) -> None:
        self.violations = list(violations)
        if message is None:
            message = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(message, reason=reason)

    @classmethod
    def one(cls, field_name: str, description: str, *, reason: str | None = None) -> Self:
        return cls([FieldViolation(field_name, description)], reason=reason)


class NotFound(MeshError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class FailedPrecondition(MeshError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class PermissionDenied(MeshError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(MeshError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class ResourceExhausted(MeshError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(MeshError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DependencyUnavailable(Unavailable):
    """A service this call depends on was unreachable (UNAVAILABLE after this hop's own retries,
    or DEADLINE_EXCEEDED, which no hop retries). The
    status tells the caller's channel not to retry (gRPC's server pushback, a negative
    `grpc-retry-pushback-ms`): retrying at every hop of a chain would multiply the attempts
    (five at each of three hops: 125 calls to a service that is down, and minutes before the
    caller hears). The caller still gets UNAVAILABLE, and may retry the whole call later."""

    default_reason = "DEPENDENCY_UNAVAILABLE"


# gRPC's server pushback: a negative delay asks the client's channel not to retry this call.
NO_RETRY = (("grpc-retry-pushback-ms", "-1"),)


class Cancelled(MeshError):
    """The caller went away (cancelled, or its deadline passed) while the call ran: what the
    call then failed on is not an error of the service's, and nobody hears the answer."""

    code = grpc.StatusCode.CANCELLED
    default_reason = "CANCELLED"


class DeadlineExceeded(MeshError):
    """As `Cancelled`, when it was the caller's deadline that passed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Internal(MeshError):
    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


def to_grpc_status(error: MeshError, domain: str) -> grpc.Status:
    """The status a servicer aborts with: code, message, ErrorInfo, and BadRequest if any."""
    details = []
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=domain, metadata=getattr(error, "metadata", {})
    )
    details.append(_pack(info))
    violations = getattr(error, "violations", None)
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in violations
            ]
        )
        details.append(_pack(bad))
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code.name), message=error.message, details=details
    )
    converted: grpc.Status = rpc_status.to_status(status)
    if isinstance(error, DependencyUnavailable):
        converted = _Status(
            converted.code, converted.details, (*converted.trailing_metadata, *NO_RETRY)
        )
    return converted


@dataclass(frozen=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


@dataclass
class ErrorDetails:
    """What a client can learn from a failed call."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    violations: list[FieldViolation] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def one_line(self) -> str:
        text = self.message or self.code.name.lower()
        if self.violations and not self.message:
            text = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        return text


def failure_code(exc: Exception) -> str:
    """How a log line or a row's last error names a failed attempt: the status code of a failed
    call, the exception's type otherwise; never its message, which may carry personal data."""
    return exc.code().name if isinstance(exc, grpc.RpcError) else type(exc).__name__


def error_details(error: grpc.RpcError) -> ErrorDetails:
    """Decodes the status details of a failed call (works for calls of any stub)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    result = ErrorDetails(code=code, message=message or "")
    try:
        status = rpc_status.from_call(error)
    except (ValueError, AttributeError):
        status = None
    if status is None:
        return result
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            result.reason, result.domain = info.reason, info.domain
            result.metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            result.violations.extend(
                FieldViolation(v.field, v.description) for v in bad.field_violations
            )
    return result
