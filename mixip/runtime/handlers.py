"""The four kinds of gRPC method handler, for the interceptors that wrap every call: the mesh
interceptor (mixip/runtime/server.py), its pass for health and reflection, and the gateway's
access log (gateway/access_recording.py). Each rebuilds a handler of the kind it was given
around its own behaviour; `rewrapped` is that rebuilding, once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc


@dataclass(frozen=True)
class RpcKind:
    """A kind of RPC: whether its requests and its responses stream, and its `grpc_type` label
    in the metrics (go-grpc-prometheus's names)."""

    requests_stream: bool
    responses_stream: bool
    grpc_type: str


# The handler's attribute holding its behaviour, the kind, and gRPC's factory for a handler of
# that kind.
_KINDS: tuple[tuple[str, RpcKind, Callable[..., Any]], ...] = (
    ("unary_unary", RpcKind(False, False, "unary"), grpc.unary_unary_rpc_method_handler),
    ("stream_unary", RpcKind(True, False, "client_stream"), grpc.stream_unary_rpc_method_handler),
    ("unary_stream", RpcKind(False, True, "server_stream"), grpc.unary_stream_rpc_method_handler),
    ("stream_stream", RpcKind(True, True, "bidi_stream"), grpc.stream_stream_rpc_method_handler),
)

# A behaviour: (request or request iterator, context) -> response or response iterator.
Behavior = Callable[[Any, Any], Any]


def rewrapped(
    handler: Any,
    wrap: Callable[[Behavior, RpcKind], Behavior],
    *,
    request_deserializer: Callable[[bytes], Any] | None,
    response_serializer: Callable[[Any], bytes] | None,
) -> Any | None:
    """A handler of `handler`'s kind serving `wrap(its behaviour, its kind)` with these
    (de)serializers; None when `handler` is of none of the four kinds (the caller decides
    whether to refuse it or to pass it on)."""
    for attribute, kind, factory in _KINDS:
        behavior = getattr(handler, attribute)
        if behavior:
            return factory(
                wrap(behavior, kind),
                request_deserializer=request_deserializer,
                response_serializer=response_serializer,
            )
    return None
