"""The salt vault with AWS KMS as its key-encryption key (moto)."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from mixip.audit.v1 import audit_pb2, audit_pb2_grpc
from mixip.runtime.config import ConfigError, Env, ServerConfig
from mixip.runtime.db import Database
from mixip.runtime.keys import KmsKeyWrapper
from mixip.runtime.times import to_timestamp
from services.audit.app import SERVICE_NAME, AuditApp, build
from services.audit.store import Base, VaultKey
from services.audit.vault import MASTER_KEY_NAME


@pytest.fixture
def kms(aws_credentials):
    with mock_aws():
        client = boto3.client("kms", region_name="eu-west-1")
        yield client, client.create_key(Description="mixip audit KEK")["KeyMetadata"]["KeyId"]


def test_salts_are_wrapped_by_kms_and_survive_a_restart(kms, database_url, serve, channels, clock):
    client, key_id = kms
    url = database_url("audit")
    app = AuditApp(Database(url, Base.metadata), KmsKeyWrapper(client, key_id), clock)
    running = serve(app)
    stub = audit_pb2_grpc.AuditServiceStub(channels(f"127.0.0.1:{running.port}", SERVICE_NAME))
    stub.RecordMatchEvents(
        audit_pb2.RecordMatchEventsRequest(
            account_id="acct",
            events=[
                audit_pb2.MatchEventInput(
                    idempotency_key="m:0",
                    project_id="p",
                    media_id="m",
                    label=1,
                    reason=1,
                    similarity=0.9,
                    talent_id="t-ada",
                    actor="key",
                    occurred_at=to_timestamp(clock()),
                )
            ],
        )
    )
    with app.db.read() as session:
        assert session.get(VaultKey, MASTER_KEY_NAME).wrapped.startswith(b"K1")

    restarted = AuditApp(Database(url, Base.metadata), KmsKeyWrapper(client, key_id), clock)
    with restarted.db.read() as session:
        assert restarted.log.vault.salts(session, "acct", ["t-ada"], create=False)
    restarted.close()

    other_key = client.create_key()["KeyMetadata"]["KeyId"]
    with pytest.raises(ConfigError, match="cannot unwrap its master secret with AWS KMS key"):
        AuditApp(Database(url, Base.metadata), KmsKeyWrapper(client, other_key), clock)


def test_configuration_selects_kms(kms, tmp_path, monkeypatch):
    _, key_id = kms
    env = Env(
        {
            "MIXIP_DATA_DIR": str(tmp_path),
            "MIXIP_AUDIT_KMS_KEY_ID": key_id,
            "AWS_REGION": "eu-west-1",
        }
    )
    app, _ = build(ServerConfig.load("audit", env), env)
    with app.db.read() as session:
        assert session.get(VaultKey, MASTER_KEY_NAME).wrapped.startswith(b"K1")
    assert not (tmp_path / "keys" / "audit-kek.key").exists()
    app.close()
