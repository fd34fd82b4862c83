"""The signed-in account's own profile: shown, corrected, exported."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import grpc
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from mixip.gateway.v1 import gateway_pb2
from mixip.runtime import logs
from mixip.runtime.errors import error_details
from mixip.web.page import Page, rpc_code, when
from mixip.web.sessions import Notice, Session

logger = logging.getLogger("mixip.web")


def routes(page: Page) -> list[BaseRoute]:
    """`/account` (GET, POST), `/account/export`."""

    async def account(request: Request) -> Response:
        session = page.signed_in(request)
        reply = await page.call(session, "GetAccount", gateway_pb2.GetAccountRequest())
        return render_account(request, session, reply.account)

    def render_account(
        request: Request,
        session: Session,
        profile: gateway_pb2.AccountProfile,
        status: int = 200,
        errors: Mapping[str, str] | None = None,
        entered: Mapping[str, str] | None = None,
    ) -> Response:
        shown = entered or {"name": profile.name, "email": profile.email}
        return page.render(
            request,
            "account.html",
            session,
            status,
            account_id=profile.account_id,
            created=when(profile.created_at),
            name=shown["name"],
            email=shown["email"],
            errors=dict(errors or {}),
        )

    async def update_account(request: Request) -> Response:
        session = page.current(request)
        form = await page.checked_form(request, session)
        session = page.signed_in(request)  # a sign-in form's session has a valid token too
        entered = {key: str(form.get(key, "")).strip() for key in ("name", "email")}
        try:
            # both fields as the form shows them: the gateway checks both before it writes
            await page.call(
                session,
                "UpdateAccount",
                gateway_pb2.UpdateAccountRequest(name=entered["name"], email=entered["email"]),
            )
        except grpc.RpcError as exc:
            if rpc_code(exc) != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            details = error_details(exc)
            errors: dict[str, str] = {}
            for violation in details.violations:
                field = violation.field if violation.field in entered else "name"
                errors[field] = "; ".join(filter(None, (errors.get(field), violation.description)))
            if not errors:
                errors["name"] = details.one_line()
            reply = await page.call(session, "GetAccount", gateway_pb2.GetAccountRequest())
            return render_account(request, session, reply.account, 400, errors, entered)
        logs.log(logger, "account updated")
        session.flash.append(Notice("Saved."))
        return RedirectResponse("/account", 303)

    async def export_account(request: Request) -> Response:
        """The account's own data (ExportOwnAccount) as a JSON download."""
        session = page.signed_in(request)
        reply = await page.call(session, "ExportOwnAccount", gateway_pb2.ExportOwnAccountRequest())
        found = await page.call(session, "GetAccount", gateway_pb2.GetAccountRequest())
        logs.log(logger, "account exported")
        name = f"mixip-account-{found.account.account_id}.json"
        return Response(
            reply.document_json.encode(),
            media_type="application/json",
            headers={
                "Content-Disposition": f'attachment; filename="{name}"',
                "Cache-Control": "no-store",
            },
        )

    return [
        Route("/account", account),
        Route("/account", update_account, methods=["POST"]),
        Route("/account/export", export_account),
    ]
