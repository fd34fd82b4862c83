"""The gateway's settings: every MIXIP_GATEWAY_* variable, read once, refused at start-up."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway import settings as settings_module
from gateway.settings import GatewaySettings
from mixip.runtime.config import ConfigError, Env, ServerConfig


def load(tmp_path: Path, **variables: str) -> GatewaySettings:
    env = Env({"MIXIP_DATA_DIR": str(tmp_path), **variables})
    return GatewaySettings.load(ServerConfig.load("gateway", env), env)


def test_without_variables_data_lives_in_the_data_dir_and_keys_in_the_key_dir_beside_it(tmp_path):
    settings = load(tmp_path)
    root = tmp_path.resolve()
    keys = root.with_name(root.name + "-keys")
    assert settings.storage == "local"
    assert settings.media_dir == root / "media"
    assert settings.kek_file == keys / "gateway-kek.key"
    assert settings.admin_key_file == keys / "gateway-admin.key"
    assert settings.internal_listen == "127.0.0.1:50056"
    assert settings.media_retention_days == 365
    assert settings.tls_cert is None and settings.tls_key is None


def test_every_field_is_documented_with_the_variable_it_comes_from():
    source = Path(settings_module.__file__).read_text()
    for field in dataclasses.fields(GatewaySettings):
        declared = source.index(f"    {field.name}: ")
        docstring = source[declared : source.index('"""', source.index('"""', declared) + 3)]
        assert "MIXIP_" in docstring or "<data dir>" in docstring, field.name


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"MIXIP_GATEWAY_MEDIA_RETENTION_DAYS": "3651"}, "MIXIP_GATEWAY_MEDIA_RETENTION_DAYS"),
        ({"MIXIP_GATEWAY_MAX_CHUNK_BYTES": "10"}, "MIXIP_GATEWAY_MAX_CHUNK_BYTES"),
        ({"MIXIP_GATEWAY_STORAGE": "ftp"}, "MIXIP_GATEWAY_STORAGE"),
        ({"MIXIP_GATEWAY_STORAGE": "s3", "MIXIP_GATEWAY_S3_BUCKET": "b"}, "S3_KMS_KEY_ID"),
        ({"MIXIP_GATEWAY_TLS_KEY": "/k.pem"}, "MIXIP_GATEWAY_TLS_CERT"),
        ({"MIXIP_GATEWAY_ERASURE_RESUME_SECONDS": "-1"}, "MIXIP_GATEWAY_ERASURE_RESUME_SECONDS"),
        ({"MIXIP_GATEWAY_WEBHOOKS_TIMEOUT_SECONDS": "61"}, "MIXIP_GATEWAY_WEBHOOKS_TIMEOUT"),
        ({"MIXIP_GATEWAY_WEBHOOKS_SECRET_OVERLAP_HOURS": "-1"}, "WEBHOOKS_SECRET_OVERLAP_HOURS"),
        ({"MIXIP_GATEWAY_WEBHOOKS_RETENTION_DAYS": "0"}, "MIXIP_GATEWAY_WEBHOOKS_RETENTION_DAYS"),
        ({"MIXIP_GATEWAY_WEBHOOKS_ALLOW_PRIVATE": "maybe"}, "WEBHOOKS_ALLOW_PRIVATE"),
    ],
)
def test_a_bad_value_is_refused_at_start_up_naming_the_variable(tmp_path, variables, named):
    with pytest.raises(ConfigError, match=named):
        load(tmp_path, **variables)


def test_s3_storage_reads_its_bucket_key_and_prefix(tmp_path):
    settings = load(
        tmp_path,
        MIXIP_GATEWAY_STORAGE="s3",
        MIXIP_GATEWAY_S3_BUCKET="media-bucket",
        MIXIP_GATEWAY_S3_KMS_KEY_ID="alias/media",
        MIXIP_GATEWAY_S3_PREFIX="p/",
    )
    assert (settings.storage, settings.s3_bucket, settings.s3_kms_key_id, settings.s3_prefix) == (
        "s3",
        "media-bucket",
        "alias/media",
        "p/",
    )


@pytest.mark.parametrize("value", ["0", "3651", "ninety"])
def test_an_access_log_period_out_of_range_is_refused_naming_the_variable(tmp_path, value):
    with pytest.raises(ConfigError, match="MIXIP_GATEWAY_ACCESS_LOG_RETENTION_DAYS"):
        load(tmp_path, MIXIP_GATEWAY_ACCESS_LOG_RETENTION_DAYS=value)


def test_the_access_log_is_kept_90_days_unless_set(tmp_path):
    assert load(tmp_path).access_log_retention_days == 90
    assert (
        load(tmp_path, MIXIP_GATEWAY_ACCESS_LOG_RETENTION_DAYS="30").access_log_retention_days == 30
    )
