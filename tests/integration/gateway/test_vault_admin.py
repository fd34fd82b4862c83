"""The admin's view of the audit vault through the gateway: `GetVaultStatus`."""

from __future__ import annotations

import grpc

from mixip.audit.v1 import audit_pb2
from mixip.gateway.v1 import admin_pb2
from tests.support.status import expect_error


def test_the_admin_sees_the_vault_key_version_and_its_rotation(gateway, clock):
    status = gateway.admin.GetVaultStatus(
        admin_pb2.GetVaultStatusRequest(), metadata=gateway.admin_metadata()
    )
    assert status.key_version == 1
    assert status.rotated_at.ToDatetime().date() == clock().date()
    clock.advance(days=7)
    gateway.audit.stub.RotateVault(audit_pb2.RotateVaultRequest())
    status = gateway.admin.GetVaultStatus(
        admin_pb2.GetVaultStatusRequest(), metadata=gateway.admin_metadata()
    )
    assert status.key_version == 2
    assert status.rotated_at.ToDatetime().date() == clock().date()


def test_an_account_key_may_not_read_the_vault_status(gateway):
    _, meta = gateway.new_account()
    expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        gateway.admin.GetVaultStatus,
        admin_pb2.GetVaultStatusRequest(),
        metadata=meta,
    )
