"""The salt vault with AWS KMS as its key-encryption key (moto)."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from mixip.audit.v1 import audit_pb2, audit_pb2_grpc
from mixip.runtime.config import Env, ServerConfig
from mixip.runtime.db import Database
from mixip.runtime.keys import KMS_PURPOSE, KMS_PURPOSE_TAG, KmsKeyRing, KmsKeyWrapper
from mixip.runtime.times import to_timestamp
from services.audit.app import SERVICE_NAME, AuditApp, build
from services.audit.store import Base, VaultState
from tests.integration.audit.test_vault_rotation import ACCOUNT, link_in_copy, linked, record
from tests.support.disk import backup


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
        state = session.get(VaultState, 1)
        assert state.wrapped_sealing_key.startswith(b"K1")
        assert state.wrapped_lookup_key.startswith(b"K1")

    restarted = AuditApp(Database(url, Base.metadata), KmsKeyWrapper(client, key_id), clock)
    with restarted.db.read() as session:
        assert restarted.log.vault.salts(session, "acct", ["t-ada"], create=False)
    restarted.close()


def test_configuration_selects_kms(kms, tmp_path, monkeypatch):
    client, key_id = kms
    env = Env(
        {
            "MIXIP_DATA_DIR": str(tmp_path),
            "MIXIP_AUDIT_KMS_KEY_ID": key_id,
            "AWS_REGION": "eu-west-1",
        }
    )
    config = ServerConfig.load("audit", env)
    app, _ = build(config, env)
    with app.db.read() as session:
        assert session.get(VaultState, 1).kek_ref == arn(client, key_id)
    assert config.key_dir != tmp_path and not (config.key_dir / "audit-kek.key").exists()
    app.close()


def arn(client, key_id: str) -> str:
    return client.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]


def enabled_keys(client) -> list[KmsKeyWrapper]:
    """A wrapper per KMS key that can still decrypt (KMS refuses keys pending deletion)."""
    wrappers = []
    for key in client.list_keys()["Keys"]:
        metadata = client.describe_key(KeyId=key["KeyId"])["KeyMetadata"]
        if metadata["KeyState"] == "Enabled":
            wrappers.append(KmsKeyWrapper(client, metadata["Arn"]))
    return wrappers


@pytest.mark.parametrize("configured", ["key id", "alias"])
def test_a_rotation_schedules_the_old_kms_key_for_deletion_so_backups_stop_linking(
    kms, database_url, serve, channels, clock, backend, tmp_path, pg_test_database, configured
):
    client, first_key = kms
    name = first_key
    if configured == "alias":  # an alias cannot be scheduled for deletion: its key must be
        name = "alias/mixip-audit-vault"
        client.create_alias(AliasName=name, TargetKeyId=first_key)
    ring = KmsKeyRing(client, name, deletion_window_days=9)
    app = AuditApp(Database(database_url("audit"), Base.metadata), ring, clock)
    running = serve(app)
    stub = audit_pb2_grpc.AuditServiceStub(channels(f"127.0.0.1:{running.port}", SERVICE_NAME))
    record(stub, clock, "t-ada", "m1:0")
    record(stub, clock, "t-bob", "m2:0")
    copy = backup(app.db, "audit", Base.metadata, tmp_path, pg_test_database)
    stub.ShredTalentSalt(audit_pb2.ShredTalentSaltRequest(account_id=ACCOUNT, talent_id="t-ada"))
    assert link_in_copy(copy, app.log.vault, "t-ada", enabled_keys(client))

    stub.RotateVault(audit_pb2.RotateVaultRequest())

    old = client.describe_key(KeyId=first_key)["KeyMetadata"]
    assert old["KeyState"] == "PendingDeletion"
    with app.db.read() as session:
        current = session.get(VaultState, 1).kek_ref
    assert [w.key_id for w in enabled_keys(client)] == [current]
    tags = client.list_resource_tags(KeyId=current)["Tags"]
    assert {"TagKey": KMS_PURPOSE_TAG, "TagValue": KMS_PURPOSE} in tags
    # moto still decrypts with a key pending deletion (AWS KMS refuses: KMSInvalidStateException),
    # so the copy is tried with every key that can still decrypt, and the live vault's own keys
    assert not link_in_copy(copy, app.log.vault, "t-ada", enabled_keys(client))
    assert linked(stub, "t-bob") == 1
    copy.dispose()


def test_a_kms_rotation_stopped_after_its_commit_is_finished_at_the_next_start(
    kms, database_url, clock
):
    client, first_key = kms
    url = database_url("audit")

    class Crash(Exception):
        pass

    def crash_after_commit(step: str) -> None:
        if step == "committed":
            raise Crash

    crashing = AuditApp(
        Database(url, Base.metadata), KmsKeyRing(client, first_key), clock, step=crash_after_commit
    )
    with pytest.raises(Crash):
        crashing.log.rotate_vault()
    crashing.close()
    assert client.describe_key(KeyId=first_key)["KeyMetadata"]["KeyState"] == "Enabled"

    restarted = AuditApp(Database(url, Base.metadata), KmsKeyRing(client, first_key), clock)
    assert client.describe_key(KeyId=first_key)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    with restarted.db.read() as session:
        state = session.get(VaultState, 1)
        assert (state.version, state.retired_kek_ref) == (2, None)
    restarted.log.vault.ring.destroy(first_key)  # destroying a destroyed key is no error
    restarted.close()
