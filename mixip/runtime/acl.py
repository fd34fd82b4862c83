"""Who may call what inside the mesh, written down in one place.

Each internal service checks the calling service's certificate identity (its common name,
verified by mutual TLS) against this table for every RPC. A caller not listed gets
PERMISSION_DENIED and leaves a warning line in the callee's log; a caller without a verified
certificate (a plaintext port) gets UNAUTHENTICATED: internal services fail closed. The one
exception is `development` (MIXIP_INSECURE_DEV, `mixip up --insecure`): plaintext on loopback,
any local caller, and still only the RPCs listed here. The gateway's client-facing API is not in
this table: its callers are authenticated by API key; its internal API (GatewayInternalService,
on its own port) is.

Each caller gets exactly what it calls, nothing more; the read-only operational RPCs that no
service calls are open to `operator` (the certificate of `mixip certs init` for people).
"""

from __future__ import annotations

import logging

import grpc

from mixip.runtime import logs
from mixip.runtime.errors import PermissionDenied, Unauthenticated
from mixip.runtime.tls import caller_identity

logger = logging.getLogger("mixip.acl")

RULES: dict[str, dict[str, frozenset[str]]] = {
    "mixip.audit.v1.AuditService": {
        "RecordMatchEvents": frozenset({"gateway"}),
        "ListEvents": frozenset({"gateway"}),
        "VerifyLog": frozenset({"gateway"}),
        "ShredTalentSalt": frozenset({"gateway"}),
        "PurgeExpired": frozenset({"retention"}),
        "RotateVault": frozenset({"retention"}),
        "GetVaultStatus": frozenset({"gateway"}),
        "LiftShredMarker": frozenset({"gateway"}),
        "GetCheckpoint": frozenset({"gateway"}),
        "GetInclusionProof": frozenset({"gateway"}),
        "GetConsistencyProof": frozenset({"gateway"}),
        "GetLogPublicKey": frozenset({"gateway"}),
    },
    "mixip.consent.v1.ConsentService": {
        "RecordConsent": frozenset({"gateway"}),
        "CheckConsent": frozenset({"matcher"}),
        "BatchCheckConsent": frozenset({"gateway", "matcher", "retention"}),
        "ListConsentRecords": frozenset({"gateway"}),
        "EraseTalentConsent": frozenset({"gateway"}),
    },
    "mixip.matcher.v1.MatcherService": {
        "EnrollTalentFace": frozenset({"gateway"}),
        "MatchMedia": frozenset({"gateway"}),
        "PlanVideoSegments": frozenset({"gateway"}),
        "MatchVideoSegment": frozenset({"gateway"}),
        "StitchVideoSegments": frozenset({"gateway"}),
        "DetectFaces": frozenset({"operator"}),
        "DeleteTalentFaces": frozenset({"gateway", "consent", "retention"}),
        "ListTalentFaces": frozenset({"gateway"}),
        "GetCollectionStats": frozenset({"operator"}),
        "ListEnrolledTalents": frozenset({"gateway", "retention"}),  # gateway: closures
        "DeleteTalentFace": frozenset({"gateway"}),
    },
    "mixip.gateway.v1.GatewayInternalService": {
        "PurgeExpiredMedia": frozenset({"retention"}),
        "PurgeAccessLog": frozenset({"retention"}),
    },
    "mixip.retention.v1.RetentionService": {
        "RunNow": frozenset({"gateway"}),
        "GetStatus": frozenset({"gateway"}),
        "ListRuns": frozenset({"operator"}),
    },
}


def allowed_callers(method: str) -> frozenset[str]:
    """Callers of a full method name ("/package.Service/Method"); empty if unlisted."""
    service, _, name = method.lstrip("/").partition("/")
    return RULES.get(service, {}).get(name, frozenset())


def authorize(method: str, context: grpc.ServicerContext) -> str:
    """The server interceptor's authorizer: returns the caller's identity or refuses."""
    identity = caller_identity(context)
    if identity is None:
        logs.log(logger, "caller refused", level=logging.WARNING, caller="none", method=method)
        raise Unauthenticated(
            f"{method} needs a caller identified by mutual TLS (a client certificate of the "
            "mesh's CA); this port has none",
            reason="MTLS_REQUIRED",
        )
    if identity not in allowed_callers(method):
        logs.log(logger, "caller refused", level=logging.WARNING, caller=identity, method=method)
        raise PermissionDenied(f"{identity} may not call {method}", reason="CALLER_NOT_ALLOWED")
    return identity


DEVELOPMENT_CALLER = "insecure-dev"


def development(method: str, context: grpc.ServicerContext) -> str:
    """The authorizer of a plaintext internal service started with the development flag (on
    loopback only, see `mixip.runtime.server.start_server`): no identity to check, so any local
    caller passes, but an RPC missing from the table is still refused (as it would be in
    production, so a forgotten rule fails in tests too)."""
    if not allowed_callers(method):
        raise PermissionDenied(f"no service may call {method}", reason="CALLER_NOT_ALLOWED")
    return caller_identity(context) or DEVELOPMENT_CALLER
