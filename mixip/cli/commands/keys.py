"""`mixip keys list|create|revoke` (admin): an account's API keys."""

from __future__ import annotations

import argparse
from typing import Any

from mixip.cli.commands.parsing import Subparsers
from mixip.cli.output import Output
from mixip.gateway.v1 import admin_pb2
from mixip.runtime.connection import Connection
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.paging import every_page


def _key_json(key: admin_pb2.ApiKey) -> dict[str, Any]:
    return {
        "api_key_id": key.api_key_id,
        "account_id": key.account_id,
        "prefix": key.prefix,
        "created_at": key.created_at.ToJsonString(),
        "revoked_at": key.revoked_at.ToJsonString() if key.HasField("revoked_at") else None,
    }


def keys_list(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    stub, meta = conn.admin()
    pages = every_page(
        lambda token: stub.ListApiKeys(
            admin_pb2.ListApiKeysRequest(
                account_id=args.account, page_size=MAX_BATCH, page_token=token
            ),
            metadata=meta,
        )
    )
    keys = [_key_json(k) for page in pages for k in page.api_keys]
    lines = [f"{args.account}: {len(keys)} key(s)"] + [
        f"  {k['api_key_id']}  {k['prefix']}...  created {k['created_at']}  "
        + (f"revoked {k['revoked_at']}" if k["revoked_at"] else "live")
        for k in keys
    ]
    out.result({"account_id": args.account, "api_keys": keys}, lines)
    return 0


def keys_create(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    stub, meta = conn.admin()
    reply = stub.CreateApiKey(admin_pb2.CreateApiKeyRequest(account_id=args.account), metadata=meta)
    out.result(
        {"account_id": args.account, "api_key_id": reply.api_key_id, "api_key": reply.api_key},
        [f"key {reply.api_key_id} for {args.account}", f"api key (shown once): {reply.api_key}"],
    )
    return 0


def keys_revoke(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    stub, meta = conn.admin()
    reply = stub.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(api_key_id=args.key_id), metadata=meta)
    key = _key_json(reply.api_key)
    out.result(key, f"revoked key {key['api_key_id']} (at {key['revoked_at']})")
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """`mixip keys list|create|revoke`."""
    keys = sub.add_parser("keys", help="an account's API keys (admin)").add_subparsers(
        dest="action", required=True
    )
    p = keys.add_parser("list", parents=[common], help="list keys (never their secrets)")
    p.add_argument("account", help="the account id")
    p.set_defaults(run=keys_list)
    p = keys.add_parser("create", parents=[common], help="create a key (shown once)")
    p.add_argument("account", help="the account id")
    p.set_defaults(run=keys_create)
    p = keys.add_parser("revoke", parents=[common], help="revoke a key at once")
    p.add_argument("key_id", metavar="KEY_ID", help="the key's id, as `mixip keys list` shows it")
    p.set_defaults(run=keys_revoke)
