"""Signing in with an API key (kept in the session store, never in a cookie) and out."""

from __future__ import annotations

import logging

import grpc
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from mixip.gateway.v1 import gateway_pb2
from mixip.runtime import logs
from mixip.web.page import SESSION_COOKIE, Page, rpc_code, set_cookie

logger = logging.getLogger("mixip.web")


def routes(page: Page) -> list[BaseRoute]:
    """`/`, `/sign-in`, `/sign-out`."""

    async def home(request: Request) -> Response:
        session = page.current(request)
        if session is not None and session.signed_in:
            return RedirectResponse("/projects", 303)
        session = session or page.sessions.new()
        response = page.render(request, "sign_in.html", session)
        set_cookie(response, session)
        return response

    async def sign_in(request: Request) -> Response:
        session = page.current(request)
        form = await page.checked_form(request, session)
        assert session is not None
        key = str(form.get("api_key", "")).strip()
        if not key or len(key) > 512:
            return page.render(request, "sign_in.html", session, 400, error="Enter your API key.")
        try:
            await page.gateway.call(
                key, "ListProjects", gateway_pb2.ListProjectsRequest(page_size=1)
            )
        except grpc.RpcError as exc:
            if rpc_code(exc) != grpc.StatusCode.UNAUTHENTICATED:
                raise
            logs.log(logger, "sign-in refused", level=logging.WARNING)
            return page.render(
                request, "sign_in.html", session, 401, error="That API key was not accepted."
            )
        page.sessions.end(session.session_id)
        fresh = page.sessions.new(api_key=key)  # a new id: the signed-out one is never promoted
        logs.log(logger, "signed in")
        response = RedirectResponse("/projects", 303)
        set_cookie(response, fresh)
        return response

    async def sign_out(request: Request) -> Response:
        session = page.current(request)
        await page.checked_form(request, session)
        assert session is not None
        page.sessions.end(session.session_id)
        response = RedirectResponse("/", 303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    return [
        Route("/", home),
        Route("/sign-in", sign_in, methods=["POST"]),
        Route("/sign-out", sign_out, methods=["POST"]),
    ]
