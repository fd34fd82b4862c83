"""`mixip access-log list`: who called what on the account's data."""

from __future__ import annotations

import argparse

from mixip.cli.arguments import time_option
from mixip.cli.commands.parsing import Subparsers
from mixip.cli.output import Output
from mixip.gateway.v1 import gateway_pb2
from mixip.runtime.connection import Connection
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.paging import every_page


def access_log_list(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    since = time_option(args.since, "--since")
    stub, meta = conn.gateway()
    pages = every_page(
        lambda token: stub.ListAccessLog(
            gateway_pb2.ListAccessLogRequest(
                since=since, project_id=args.project or "", page_size=MAX_BATCH, page_token=token
            ),
            metadata=meta,
        )
    )
    entries = [
        {
            "sequence": e.sequence,
            "occurred_at": e.occurred_at.ToJsonString(),
            "account_id": e.account_id,
            "api_key_id": e.api_key_id,
            "peer": e.peer,
            "rpc": e.rpc,
            "project_id": e.project_id or None,
            "media_id": e.media_id or None,
            "status_code": e.status_code,
        }
        for page in pages
        for e in page.entries
    ]
    lines = [f"{len(entries)} access(es)"] + [
        f"  #{e['sequence']} {e['occurred_at']} {e['account_id'] or '-'}/{e['api_key_id'] or '-'}"
        f" {e['rpc']} {e['project_id'] or ''} {e['media_id'] or ''} {e['status_code']}"
        for e in entries
    ]
    out.result({"entries": entries}, lines)
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """`mixip access-log list`."""
    log = sub.add_parser("access-log", help="who called what on your data").add_subparsers(
        dest="action", required=True
    )
    p = log.add_parser("list", parents=[common], help="your account's access log")
    p.add_argument("--since", metavar="ISO8601", help="only entries at or after this time")
    p.add_argument("--project", help="only entries naming this project")
    p.set_defaults(run=access_log_list)
