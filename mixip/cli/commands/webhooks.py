"""`mixip webhooks add|list|remove|test|rotate-secret`: the account's webhook endpoints
(docs/webhooks.md). A URL or event type the gateway refuses is a usage error (exit 2)."""

from __future__ import annotations

import argparse
import uuid
from typing import Any

import grpc

from mixip.cli.commands.parsing import Command, Subparsers
from mixip.cli.output import CliError, Output
from mixip.gateway.v1 import gateway_pb2
from mixip.runtime.connection import Connection
from mixip.runtime.errors import error_details
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.paging import every_page


def _usage_errors(command: Command) -> Command:
    """INVALID_ARGUMENT (a bad URL, event type or id) as a one-line usage error, exit 2."""

    def run(args: argparse.Namespace, conn: Connection, out: Output) -> int:
        try:
            return command(args, conn, out)
        except grpc.RpcError as exc:
            details = error_details(exc)
            if details.code != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            raise CliError(f"invalid argument: {details.one_line()}", exit_code=2) from None

    return run


def _json(webhook: gateway_pb2.Webhook) -> dict[str, Any]:
    disabled = webhook.HasField("disabled_at")
    overlap = webhook.HasField("previous_secret_expires_at")
    return {
        "webhook_id": webhook.webhook_id,
        "url": webhook.url,
        "event_types": list(webhook.event_types),
        "created_at": webhook.created_at.ToJsonString(),
        "disabled_at": webhook.disabled_at.ToJsonString() if disabled else None,
        "previous_secret_expires_at": (
            webhook.previous_secret_expires_at.ToJsonString() if overlap else None
        ),
    }


def _line(hook: dict[str, Any]) -> str:
    events = ",".join(hook["event_types"]) or "every event"
    state = f"DISABLED (410 at {hook['disabled_at']})" if hook["disabled_at"] else "live"
    return f"  {hook['webhook_id']}  {hook['url']}  {events}  {state}"


@_usage_errors
def webhooks_add(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    request = gateway_pb2.AddWebhookRequest(
        url=args.url, event_types=args.event or [], request_id=uuid.uuid4().hex
    )
    reply = stub.AddWebhook(request, metadata=meta)
    hook = _json(reply.webhook)
    out.result(
        {"webhook": hook, "secret": reply.secret},
        [
            f"webhook {hook['webhook_id']} -> {hook['url']}",
            f"signing secret (shown once): {reply.secret}",
        ],
    )
    return 0


@_usage_errors
def webhooks_list(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    pages = every_page(
        lambda token: stub.ListWebhooks(
            gateway_pb2.ListWebhooksRequest(page_size=MAX_BATCH, page_token=token), metadata=meta
        )
    )
    hooks = [_json(w) for page in pages for w in page.webhooks]
    out.result({"webhooks": hooks}, [f"{len(hooks)} webhook(s)"] + [_line(h) for h in hooks])
    return 0


@_usage_errors
def webhooks_remove(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    request = gateway_pb2.RemoveWebhookRequest(webhook_id=args.webhook_id)
    hook = _json(stub.RemoveWebhook(request, metadata=meta).webhook)
    out.result({"removed": hook}, f"removed webhook {hook['webhook_id']} ({hook['url']})")
    return 0


@_usage_errors
def webhooks_test(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    request = gateway_pb2.TestWebhookRequest(webhook_id=args.webhook_id)
    message_id = stub.TestWebhook(request, metadata=meta).message_id
    out.result(
        {"webhook_id": args.webhook_id, "message_id": message_id},
        f"webhook.test queued for {args.webhook_id} (webhook-id {message_id})",
    )
    return 0


@_usage_errors
def webhooks_rotate_secret(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    request = gateway_pb2.RotateWebhookSecretRequest(
        webhook_id=args.webhook_id, request_id=uuid.uuid4().hex
    )
    reply = stub.RotateWebhookSecret(request, metadata=meta)
    hook = _json(reply.webhook)
    out.result(
        {"webhook": hook, "secret": reply.secret},
        [
            f"new signing secret (shown once): {reply.secret}",
            f"the previous secret also signs until {hook['previous_secret_expires_at']}",
        ],
    )
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    hooks = sub.add_parser(
        "webhooks", help="the account's webhook endpoints (signed event notifications)"
    ).add_subparsers(dest="action", required=True)
    p = hooks.add_parser("add", parents=[common], help="add an endpoint (its secret shown once)")
    p.add_argument("url", help="https URL of a public host that receives the events")
    p.add_argument(
        "--event",
        action="append",
        metavar="TYPE",
        help="an event type to deliver (erasure.completed, job.completed, job.failed, "
        "job.cancelled); repeat for several; default: every type",
    )
    p.set_defaults(run=webhooks_add)
    p = hooks.add_parser("list", parents=[common], help="list endpoints (never their secrets)")
    p.set_defaults(run=webhooks_list)
    for name, run, text in (
        ("remove", webhooks_remove, "remove an endpoint and its undelivered events"),
        ("test", webhooks_test, "send a webhook.test event to an endpoint"),
        (
            "rotate-secret",
            webhooks_rotate_secret,
            "a new secret; the old one keeps signing during the overlap (24 h)",
        ),
    ):
        p = hooks.add_parser(name, parents=[common], help=text)
        p.add_argument("webhook_id", metavar="ID", help="the endpoint, as `webhooks list` shows")
        p.set_defaults(run=run)
