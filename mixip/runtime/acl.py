"""Who may call what inside the mesh, written down in one place.

Each internal service checks the calling service's certificate identity (its common name,
verified by mutual TLS) against this table for every RPC. A caller not listed gets
PERMISSION_DENIED and leaves a warning line in the callee's log. The gateway's client-facing
API is not in this table: its callers are authenticated by API key.

Each caller gets exactly what it calls, nothing more; the read-only operational RPCs that no
service calls are open to `operator` (the certificate of `mixip certs init` for people).
"""

from __future__ import annotations

import logging

import grpc

from mixip.runtime import logs
from mixip.runtime.errors import PermissionDenied
from mixip.runtime.tls import caller_identity

logger = logging.getLogger("mixip.acl")

RULES: dict[str, dict[str, frozenset[str]]] = {
    "mixip.audit.v1.AuditService": {
        "RecordMatchEvents": frozenset({"gateway"}),
        "ListEvents": frozenset({"gateway"}),
        "VerifyLog": frozenset({"gateway"}),
        "ShredTalentSalt": frozenset({"gateway"}),
        "PurgeExpired": frozenset({"retention"}),
        "LiftShredMarker": frozenset({"gateway"}),
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
        "DetectFaces": frozenset({"operator"}),
        "DeleteTalentFaces": frozenset({"gateway", "consent", "retention"}),
        "ListTalentFaces": frozenset({"gateway"}),
        "GetCollectionStats": frozenset({"operator"}),
        "ListEnrolledTalents": frozenset({"retention"}),
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
    identity = caller_identity(context) or "anonymous"
    if identity not in allowed_callers(method):
        logs.log(logger, "caller refused", level=logging.WARNING, caller=identity, method=method)
        raise PermissionDenied(f"{identity} may not call {method}", reason="CALLER_NOT_ALLOWED")
    return identity
