"""The accounts' messages, shared by the servicers that return them: `GatewayService` shows an
account its own profile and closure (gateway/servicer.py), `AdminService` any account, its API
keys and its closure (gateway/admin_servicer.py)."""

from __future__ import annotations

from gateway.accounts import Account, ApiKey
from gateway.closures import Closure
from mixip.gateway.v1 import admin_pb2, gateway_pb2
from mixip.runtime.times import to_timestamp


def api_key_message(key: ApiKey) -> admin_pb2.ApiKey:
    return admin_pb2.ApiKey(
        api_key_id=key.key_id,
        account_id=key.account_id or "",
        prefix=f"mixip_{key.key_id}_",
        created_at=to_timestamp(key.created_at),
        revoked_at=to_timestamp(key.revoked_at) if key.revoked_at else None,
    )


def account_message(account: Account) -> admin_pb2.Account:
    return admin_pb2.Account(
        account_id=account.account_id,
        name=account.name,
        created_at=to_timestamp(account.created_at),
        email=account.email,
        closed_at=to_timestamp(account.closed_at) if account.closed_at else None,
    )


def profile_message(account: Account) -> gateway_pb2.AccountProfile:
    return gateway_pb2.AccountProfile(
        account_id=account.account_id,
        name=account.name,
        email=account.email,
        created_at=to_timestamp(account.created_at),
    )


def closure_message(closure: Closure) -> admin_pb2.AccountClosure:
    return admin_pb2.AccountClosure(
        receipt_id=closure.receipt_id,
        account_id=closure.account_id,
        closed_at=to_timestamp(closure.closed_at),
        completed_at=to_timestamp(closure.completed_at) if closure.completed_at else None,
        steps=[admin_pb2.AccountClosureStep(name=s.name, count=s.count) for s in closure.steps],
        talents_erased=closure.talents_erased,
    )
