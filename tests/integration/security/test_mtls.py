"""Mutual TLS from our private CA, and the per-RPC caller rules."""

from __future__ import annotations

import logging

import grpc
import pytest
from cryptography import x509

from mixip.audit.v1 import audit_pb2, audit_pb2_grpc
from mixip.consent.v1 import consent_pb2
from mixip.gateway.v1 import internal_pb2
from mixip.matcher.v1 import matcher_pb2
from mixip.retention.v1 import retention_pb2
from mixip.runtime import acl
from mixip.runtime.client import open_channel
from mixip.runtime.db import Database
from mixip.runtime.keys import LocalKeyWrapper
from mixip.runtime.times import to_timestamp
from mixip.runtime.tls import IDENTITIES, channel_credentials, init_certs, server_credentials
from services.audit.app import SERVICE_NAME, AuditApp
from services.audit.store import Base
from tests.support.status import expect_error


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return init_certs(tmp_path_factory.mktemp("tls"))[0].parent


@pytest.fixture
def secured_audit(certs, database_url, serve, clock, tmp_path):
    app = AuditApp(
        Database(database_url("audit"), Base.metadata), LocalKeyWrapper(tmp_path / "kek.key"), clock
    )
    running = serve(
        app,
        listen="127.0.0.1:0",
        credentials=server_credentials(certs, "audit"),
        authorize=acl.authorize,
    )
    return f"127.0.0.1:{running.port}"


def expect_refused_at_handshake(call, *args, **kwargs) -> None:
    """No TLS session, so no call: gRPC reports it as UNAVAILABLE, or as DEADLINE_EXCEEDED when
    its retries outlast the deadline."""
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def stub_as(address, certs_dir, identity):
    channel = open_channel(
        address,
        [SERVICE_NAME],
        timeout_seconds=5,
        credentials=channel_credentials(certs_dir, identity),
    )
    return audit_pb2_grpc.AuditServiceStub(channel)


def test_certificates_are_signed_by_the_private_ca_with_private_keys(certs):
    ca = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    for name in IDENTITIES:
        cert = x509.load_pem_x509_certificate((certs / f"{name}.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        assert cert.subject.rfc4514_string() == f"CN={name}"
        assert (certs / f"{name}.key").stat().st_mode & 0o077 == 0
    assert (certs / "ca.key").stat().st_mode & 0o077 == 0


def test_only_listed_callers_may_call_each_rpc(secured_audit, certs, clock, caplog):
    event = audit_pb2.MatchEventInput(
        idempotency_key="m:0",
        project_id="p",
        media_id="m",
        label=3,
        reason=2,
        similarity=0.1,
        actor="key",
        occurred_at=to_timestamp(clock()),
    )
    gateway = stub_as(secured_audit, certs, "gateway")
    assert (
        gateway.RecordMatchEvents(
            audit_pb2.RecordMatchEventsRequest(account_id="a", events=[event])
        ).recorded_count
        == 1
    )
    retention = stub_as(secured_audit, certs, "retention")
    assert retention.PurgeExpired(audit_pb2.PurgeExpiredRequest(cutoff=to_timestamp(clock()))).done
    with caplog.at_level(logging.WARNING, logger="mixip.acl"):
        details = expect_error(
            grpc.StatusCode.PERMISSION_DENIED,
            retention.ShredTalentSalt,
            audit_pb2.ShredTalentSaltRequest(account_id="a", talent_id="t"),
        )
    assert details.reason == "CALLER_NOT_ALLOWED"
    assert any("caller refused" in r.getMessage() for r in caplog.records)
    expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        gateway.PurgeExpired,
        audit_pb2.PurgeExpiredRequest(cutoff=to_timestamp(clock())),
    )
    expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        stub_as(secured_audit, certs, "matcher").ListEvents,
        audit_pb2.ListEventsRequest(account_id="a"),
    )


def test_plaintext_and_foreign_clients_are_refused_at_the_handshake(secured_audit, tmp_path):
    plain = audit_pb2_grpc.AuditServiceStub(
        open_channel(secured_audit, [SERVICE_NAME], timeout_seconds=3)
    )
    expect_refused_at_handshake(plain.VerifyLog, audit_pb2.VerifyLogRequest())
    foreign = init_certs(tmp_path / "other-ca")[0].parent
    expect_refused_at_handshake(
        stub_as(secured_audit, foreign, "gateway").VerifyLog, audit_pb2.VerifyLogRequest()
    )


def test_the_rules_cover_every_internal_rpc_and_name_known_callers():
    for module, service in (
        (audit_pb2, "AuditService"),
        (consent_pb2, "ConsentService"),
        (matcher_pb2, "MatcherService"),
        (retention_pb2, "RetentionService"),
        (internal_pb2, "GatewayInternalService"),
    ):
        descriptor = module.DESCRIPTOR.services_by_name[service]
        rules = acl.RULES[descriptor.full_name]
        assert set(rules) == {m.name for m in descriptor.methods}, service
        for callers in rules.values():
            assert callers and callers <= set(IDENTITIES)
    assert acl.allowed_callers("/mixip.audit.v1.AuditService/PurgeExpired") == {"retention"}
    assert acl.allowed_callers("/mixip.audit.v1.AuditService/ShredTalentSalt") == {"gateway"}


def test_the_gateway_port_can_use_server_tls_from_configuration(gateway, certs, serve):
    """Clients authenticate with API keys; the certificate only encrypts and identifies."""
    from gateway.app import ADMIN_SERVICE, client_credentials
    from gateway.settings import GatewaySettings
    from mixip.gateway.v1 import admin_pb2, admin_pb2_grpc
    from mixip.runtime.config import ConfigError, Env, ServerConfig

    env = Env(
        {
            "MIXIP_GATEWAY_TLS_CERT": str(certs / "gateway.pem"),
            "MIXIP_GATEWAY_TLS_KEY": str(certs / "gateway.key"),
        }
    )
    settings = GatewaySettings.load(ServerConfig.load("gateway", env), env)
    running = serve(gateway.app, credentials=client_credentials(settings))
    address = f"127.0.0.1:{running.port}"
    secure = open_channel(
        address,
        [ADMIN_SERVICE],
        timeout_seconds=5,
        credentials=grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes()),
    )
    listed = admin_pb2_grpc.AdminServiceStub(secure).ListAccounts(
        admin_pb2.ListAccountsRequest(), metadata=gateway.admin_metadata()
    )
    assert list(listed.accounts) == []
    plain = admin_pb2_grpc.AdminServiceStub(
        open_channel(address, [ADMIN_SERVICE], timeout_seconds=3)
    )
    expect_refused_at_handshake(
        plain.ListAccounts, admin_pb2.ListAccountsRequest(), metadata=gateway.admin_metadata()
    )
    half = Env({"MIXIP_GATEWAY_TLS_CERT": str(certs / "gateway.pem")})
    config = ServerConfig.load("gateway", half)
    with pytest.raises(ConfigError, match="both"):
        GatewaySettings.load(config, half)


def test_a_service_refuses_to_listen_beyond_loopback_without_tls(tmp_path):
    """Without TLS there is no caller identity, so no caller rules: only loopback is safe."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "MIXIP_DATA_DIR": str(tmp_path),
        "MIXIP_AUDIT_LISTEN": "0.0.0.0:0",
        "MIXIP_INSECURE_DEV": "true",  # even the development flag: plaintext stays on loopback
    }
    env.pop("MIXIP_TLS_DIR", None)
    result = subprocess.run(
        [sys.executable, "-m", "services.audit"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0:0 without TLS" in result.stderr
    assert "Traceback" not in result.stderr
