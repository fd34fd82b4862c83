"""`mixip accounts ...` (admin) and `mixip account ...`: accounts, their retention, and the
calling account's own profile and data."""

from __future__ import annotations

import argparse
import json
import sys
import uuid

from mixip.cli.commands.parsing import Subparsers
from mixip.cli.exports import refuse_existing, show_export
from mixip.cli.output import CliError, Output
from mixip.gateway.v1 import admin_pb2, gateway_pb2
from mixip.runtime.connection import Connection
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.paging import every_page


def accounts_create(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    stub, meta = conn.admin()
    # A key per invocation: the channel's retries then cannot mint a second account or key.
    reply = stub.CreateAccount(
        admin_pb2.CreateAccountRequest(name=args.name, request_id=uuid.uuid4().hex),
        metadata=meta,
    )
    out.result(
        {"account_id": reply.account.account_id, "api_key": reply.api_key},
        [
            f"account {reply.account.account_id} ({args.name})",
            f"api key (shown once): {reply.api_key}",
        ],
    )
    return 0


def accounts_list(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    stub, meta = conn.admin()
    pages = every_page(
        lambda token: stub.ListAccounts(
            admin_pb2.ListAccountsRequest(page_size=MAX_BATCH, page_token=token), metadata=meta
        )
    )
    accounts = [
        {
            "account_id": a.account_id,
            "name": a.name,
            "email": a.email,
            "created_at": a.created_at.ToJsonString(),
            "closed_at": a.closed_at.ToJsonString() if a.HasField("closed_at") else None,
        }
        for page in pages
        for a in page.accounts
    ]
    lines = [f"{len(accounts)} account(s)"] + [
        f"  {a['account_id']}  {a['name']}"
        + (f" <{a['email']}>" if a["email"] else "")
        + f"  created {a['created_at']}"
        + (f"  closed {a['closed_at']}" if a["closed_at"] else "")
        for a in accounts
    ]
    out.result({"accounts": accounts}, lines)
    return 0


def accounts_retention(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    stub, meta = conn.admin()
    reply = stub.SetAccountRetention(
        admin_pb2.SetAccountRetentionRequest(account_id=args.account, retention_days=args.days),
        metadata=meta,
    )
    out.result(
        {
            "account_id": reply.account_id,
            "retention_days": reply.retention_days,
            "updated_at": reply.updated_at.ToJsonString(),
        },
        f"account {reply.account_id}: stored media and results kept {reply.retention_days} days",
    )
    return 0


def accounts_show(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    """One account as an admin reads it (ListAccounts' pages, until it is found)."""
    stub, meta = conn.admin()
    pages = every_page(
        lambda token: stub.ListAccounts(
            admin_pb2.ListAccountsRequest(page_size=MAX_BATCH, page_token=token), metadata=meta
        )
    )
    found = next((a for page in pages for a in page.accounts if a.account_id == args.account), None)
    if found is None:
        raise CliError(f"no such account: {args.account}", exit_code=1)
    closed = found.closed_at.ToJsonString() if found.HasField("closed_at") else None
    out.result(
        {
            "account_id": found.account_id,
            "name": found.name,
            "email": found.email,
            "created_at": found.created_at.ToJsonString(),
            "closed_at": closed,
        },
        [
            f"account {found.account_id}",
            f"  name:    {found.name}",
            f"  email:   {found.email or '-'}",
            f"  created: {found.created_at.ToJsonString()}",
            *([f"  closed:  {closed} (closing)"] if closed else []),
        ],
    )
    return 0


def accounts_close(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    _confirm_closure(args, args.account)
    stub, meta = conn.admin()
    with out.progress(f"closing {args.account}"):
        reply = stub.CloseAccount(
            admin_pb2.CloseAccountRequest(account_id=args.account), metadata=meta
        )
    _print_closure(out, reply.closure)
    return 0


def accounts_export(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    refuse_existing(args.output, force=args.force)
    stub, meta = conn.admin()
    with out.progress(f"exporting {args.account}"):
        reply = stub.ExportAccount(
            admin_pb2.ExportAccountRequest(account_id=args.account), metadata=meta
        )
    return _account_export(out, args, reply.document_json)


def account_show(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    reply = stub.GetAccount(gateway_pb2.GetAccountRequest(), metadata=meta)
    _print_profile(out, reply.account)
    return 0


def account_update(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    if args.name is None and args.email is None:
        raise CliError("give --name, --email or both", exit_code=2)
    stub, meta = conn.gateway()
    reply = stub.UpdateAccount(
        gateway_pb2.UpdateAccountRequest(name=args.name, email=args.email), metadata=meta
    )
    _print_profile(out, reply.account)
    return 0


def account_close(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    _confirm_closure(args, args.account)
    stub, meta = conn.gateway()
    with out.progress(f"closing {args.account}"):
        reply = stub.CloseOwnAccount(
            gateway_pb2.CloseOwnAccountRequest(confirm_account_id=args.account), metadata=meta
        )
    _print_closure(out, reply.closure)
    return 0


def account_export(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    refuse_existing(args.output, force=args.force)
    stub, meta = conn.gateway()
    with out.progress("exporting the account"):
        reply = stub.ExportOwnAccount(gateway_pb2.ExportOwnAccountRequest(), metadata=meta)
    return _account_export(out, args, reply.document_json)


def _confirm_closure(args: argparse.Namespace, account: str) -> None:
    """A closure deletes everything the account holds: --yes, or the id typed at a terminal."""
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise CliError(f"closing {account} deletes everything it holds; pass --yes", exit_code=2)
    answer = input(
        f"Close {account}: its keys, projects, media, results and talents go, for good? "
        "Type the account id to confirm: "
    )
    if answer.strip() != account:
        raise CliError("not closed (the confirmation did not match)", exit_code=1)


def _print_closure(out: Output, closure: admin_pb2.AccountClosure) -> None:
    steps = [{"name": s.name, "count": s.count} for s in closure.steps]
    out.result(
        {
            "receipt_id": closure.receipt_id,
            "account_id": closure.account_id,
            "closed_at": closure.closed_at.ToJsonString(),
            "completed_at": closure.completed_at.ToJsonString(),
            "talents_erased": closure.talents_erased,
            "steps": steps,
        },
        [
            f"closed {closure.account_id} (receipt {closure.receipt_id})",
            *(f"  {s['name']}: {s['count']}" for s in steps),
        ],
    )


def _print_profile(out: Output, account: gateway_pb2.AccountProfile) -> None:
    out.result(
        {
            "account_id": account.account_id,
            "name": account.name,
            "email": account.email,
            "created_at": account.created_at.ToJsonString(),
        },
        [
            f"account {account.account_id}",
            f"  name:  {account.name}",
            f"  email: {account.email or '-'}",
        ],
    )


def _account_export(out: Output, args: argparse.Namespace, document_json: str) -> int:
    document = json.loads(document_json)
    account = {"account_id": document["account"]["account_id"]}
    show_export(out, document, document_json, args.output, force=args.force, subject=account)
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """`mixip accounts create|list|retention|show|close|export` and `mixip account
    show|update|close|export`."""
    accounts = sub.add_parser("accounts", help="manage accounts (admin)").add_subparsers(
        dest="action", required=True
    )
    create = accounts.add_parser("create", parents=[common], help="create an account and key")
    create.add_argument("name", help="the account's display name")
    create.set_defaults(run=accounts_create)
    listed = accounts.add_parser("list", parents=[common], help="list every account")
    listed.set_defaults(run=accounts_list)
    keep = accounts.add_parser(
        "retention", parents=[common], help="how long an account's media and results are kept"
    )
    keep.add_argument("account", help="the account id")
    keep.add_argument("--days", type=int, required=True, help="1-3650 (default period: 365)")
    keep.set_defaults(run=accounts_retention)
    shown = accounts.add_parser("show", parents=[common], help="one account's profile")
    shown.add_argument("account", help="the account id")
    shown.set_defaults(run=accounts_show)
    close = accounts.add_parser(
        "close", parents=[common], help="close an account: everything it holds is deleted"
    )
    close.add_argument("account", help="the account id")
    close.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    close.set_defaults(run=accounts_close)
    exported = accounts.add_parser(
        "export", parents=[common], help="an account's own data as JSON (written 0600)"
    )
    exported.add_argument("account", help="the account id")
    exported.add_argument("-o", "--output", help="write to this file (default: stdout)")
    exported.add_argument("--force", action="store_true", help="overwrite the file")
    exported.set_defaults(run=accounts_export)

    own = sub.add_parser(
        "account", help="the calling account's own profile and data"
    ).add_subparsers(dest="action", required=True)
    shown = own.add_parser("show", parents=[common], help="its name and contact email")
    shown.set_defaults(run=account_show)
    update = own.add_parser("update", parents=[common], help="correct its name or email")
    update.add_argument("--name", help="the display name (1-128 characters)")
    update.add_argument("--email", help='the contact email ("" removes it)')
    update.set_defaults(run=account_update)
    close = own.add_parser("close", parents=[common], help="close it: everything it holds goes")
    close.add_argument("account", help="its own id, as a confirmation")
    close.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    close.set_defaults(run=account_close)
    exported = own.add_parser("export", parents=[common], help="its own data as JSON (0600)")
    exported.add_argument("-o", "--output", help="write to this file (default: stdout)")
    exported.add_argument("--force", action="store_true", help="overwrite the file")
    exported.set_defaults(run=account_export)
