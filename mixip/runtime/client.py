"""Client channels between services: a deadline on every call and retries of UNAVAILABLE.

Every channel balances round_robin over all the addresses its target resolves to (a DNS name
with several records, e.g. a Kubernetes headless Service, or `ipv4:a:p1,b:p2` from `mixip up
--replicas`), and sends keepalive pings while calls are open, so a replica that vanished without
closing its connections is noticed in seconds rather than at the next deadline.

Every internal RPC is idempotent as our clients call it (writes carry idempotency keys), so
the retry policy covers whole services; `LONG_CALLS` raises the default deadline of the few
calls that legitimately take long (video matching, log verification, retention runs).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc

from mixip.runtime.config import Env, ServerConfig, service_address
from mixip.runtime.limits import MAX_MESSAGE_BYTES
from mixip.runtime.logs import REQUEST_ID
from mixip.runtime.telemetry import traced

DEFAULT_TIMEOUT_SECONDS = 10.0
LONG_CALLS = {
    ("mixip.matcher.v1.MatcherService", "MatchMedia"): 600.0,
    ("mixip.matcher.v1.MatcherService", "DetectFaces"): 600.0,
    ("mixip.matcher.v1.MatcherService", "EnrollTalentFace"): 60.0,
    # A video job's segments (docs/jobs.md#segments): a plan demuxes the whole video.
    ("mixip.matcher.v1.MatcherService", "PlanVideoSegments"): 3600.0,
    ("mixip.matcher.v1.MatcherService", "MatchVideoSegment"): 3600.0,
    ("mixip.matcher.v1.MatcherService", "StitchVideoSegments"): 600.0,
    ("mixip.audit.v1.AuditService", "VerifyLog"): 600.0,
    ("mixip.audit.v1.AuditService", "PurgeExpired"): 600.0,
    ("mixip.retention.v1.RetentionService", "RunNow"): 3600.0,
    ("mixip.gateway.v1.GatewayService", "UploadMedia"): 900.0,
    ("mixip.gateway.v1.GatewayService", "EnrollTalent"): 120.0,
    ("mixip.gateway.v1.GatewayService", "ExportTalentData"): 300.0,
    ("mixip.gateway.v1.GatewayService", "VerifyAuditLog"): 600.0,
    ("mixip.gateway.v1.GatewayService", "EraseTalent"): 120.0,
    ("mixip.gateway.v1.AdminService", "RunRetentionJob"): 3600.0,
    ("mixip.gateway.v1.GatewayInternalService", "PurgeExpiredMedia"): 600.0,
}
RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


# Pings on open calls only (servers accept them: mixip.runtime.server's KEEPALIVE_POLICY).
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
]


def service_config(services: Sequence[str], timeout_seconds: float) -> str:
    configs = [
        {
            "name": [{"service": s} for s in services],
            "timeout": f"{timeout_seconds}s",
            "retryPolicy": RETRY_POLICY,
        }
    ]
    for (service, method), seconds in LONG_CALLS.items():
        if service in services:
            configs.append(
                {
                    "name": [{"service": service, "method": method}],
                    "timeout": f"{seconds}s",
                    "retryPolicy": RETRY_POLICY,
                }
            )
    return json.dumps({"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": configs})


def open_channel(
    address: str,
    services: Sequence[str],
    *,
    credentials: grpc.ChannelCredentials | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    server_name: str | None = None,
) -> grpc.Channel:
    """A channel to `address` for full service names such as "mixip.audit.v1.AuditService"."""
    options = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(services, timeout_seconds)),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.per_rpc_retry_buffer_size", 1024 * 1024),
        # A restarted peer is back within seconds: reconnect soon (gRPC's default backoff
        # grows to two minutes, which would strand a channel long after the peer returned).
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 5000),
        *KEEPALIVE_OPTIONS,
    ]
    if credentials is None:
        channel = grpc.insecure_channel(address, options=options)
    else:
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        channel = grpc.secure_channel(address, credentials, options=options)
    return grpc.intercept_channel(traced(channel), _RequestIdPropagation())


def peer_channel(config: ServerConfig, env: Env, target: str, service: str) -> grpc.Channel:
    """The channel from service `config.name` to service `target` (full name `service`): mutual
    TLS with this service's certificate when MIXIP_TLS_DIR is set, plaintext otherwise."""
    credentials = None
    if config.tls_dir is not None:
        from mixip.runtime.tls import channel_credentials

        credentials = channel_credentials(config.tls_dir, config.name)
    address = service_address(target, env)
    return open_channel(
        address,
        [service],
        credentials=credentials,
        max_message_bytes=config.max_message_bytes,
        # An address list (`ipv4:a:p1,b:p2`) names no host: check the certificate's own name.
        server_name=target if credentials is not None and "," in address else None,
    )


class _CallDetails(grpc.ClientCallDetails):
    def __init__(
        self, details: grpc.ClientCallDetails, metadata: tuple[tuple[str, str | bytes], ...]
    ) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = details.compression


class _RequestIdPropagation(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
    """Passes the current request id on, so one id follows a request through the mesh."""

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        request_id = REQUEST_ID.get()
        if not request_id:
            return details
        metadata = (*(details.metadata or ()), ("x-request-id", request_id))
        return _CallDetails(details, metadata)

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self,
        continuation: Any,
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)
