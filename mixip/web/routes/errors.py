"""What the page shows when a call or a request fails: a sign-out on a revoked key, else an
error page in the page's words (never a traceback)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mixip.runtime import logs
from mixip.runtime.errors import error_details
from mixip.web.page import Page, rpc_code

logger = logging.getLogger("mixip.web")

ERROR_PAGES = {
    400: ("Bad request", "The request was not accepted."),
    401: ("Signed out", "Sign in again."),
    403: ("Forbidden", "You may not do this here."),
    404: ("Not found", "There is nothing here, or it is not yours to see."),
    405: ("Not allowed", "This address does not take that method."),
    500: ("Something went wrong", "The page could not be shown. Try again later."),
    502: ("Gateway unavailable", "The clearance mesh did not answer. Try again shortly."),
}
STATUS_OF_CODE = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAVAILABLE: 502,
    grpc.StatusCode.DEADLINE_EXCEEDED: 502,
}


def handlers(page: Page) -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """The exception handlers: a failed gateway call, an HTTP error, anything else."""

    async def rpc_failed(request: Request, exc: Exception) -> Response:
        code = rpc_code(exc)
        session = page.current(request)
        if code == grpc.StatusCode.UNAUTHENTICATED:  # the key was revoked: sign out
            if session is not None:
                page.sessions.end(session.session_id)
            return RedirectResponse("/", 303)
        status = STATUS_OF_CODE.get(code, 500) if code is not None else 500
        detail = None
        if status == 400 and isinstance(exc, grpc.RpcError):
            detail = error_details(exc).one_line()
        logs.log(
            logger,
            "gateway call failed",
            level=logging.WARNING,
            path=request.url.path,
            code=code.name if code is not None else "UNKNOWN",
        )
        return error_page(request, status, detail)

    async def http_failed(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 303 and exc.headers:
            return RedirectResponse(exc.headers["Location"], 303)
        detail = exc.detail if exc.status_code in (400, 403) else None
        return error_page(request, exc.status_code, detail)

    async def crashed(request: Request, exc: Exception) -> Response:
        logs.log(logger, "page failed", level=logging.ERROR, error=type(exc).__name__)
        return error_page(request, 500, None)

    def error_page(request: Request, status: int, detail: str | None) -> Response:
        title, text = ERROR_PAGES.get(status, ERROR_PAGES[500])
        session = page.current(request)
        return page.render(
            request,
            "error.html",
            session if session is not None and session.signed_in else None,
            status,
            status_code=status,
            title=title,
            text=detail or text,
        )

    return {
        grpc.RpcError: rpc_failed,
        HTTPException: http_failed,
        Exception: crashed,
    }
