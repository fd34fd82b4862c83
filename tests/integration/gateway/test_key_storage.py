"""API key secrets are stored only as their SHA-256: no table of the gateway holds a secret."""

from __future__ import annotations

import hashlib

from sqlalchemy import select

from gateway.store import ApiKeyRow, Base
from mixip.gateway.v1 import admin_pb2


def test_no_gateway_table_holds_an_api_key_secret_only_its_sha256(gateway):
    account, meta = gateway.new_account("studio")
    second = gateway.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(account_id=account), metadata=gateway.admin_metadata()
    ).api_key
    keys = [meta[0][1].removeprefix("Bearer "), second, gateway.app.admin_key]
    with gateway.app.db.read() as session:
        everything = repr(
            [session.execute(select(table)).all() for table in Base.metadata.sorted_tables]
        )
        stored = {row.key_id: row.secret_hash for row in session.scalars(select(ApiKeyRow))}
    for key in keys:
        _, key_id, secret = key.split("_", 2)
        assert secret not in everything and secret.encode().hex() not in everything
        assert stored[key_id] == hashlib.sha256(secret.encode()).digest()
