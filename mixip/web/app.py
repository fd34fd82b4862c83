"""The review web page: projects, their media as annotated thumbnails, and per face the advisory
label, the decisions recorded so far and a form to record one.

Server-rendered HTML (Starlette + Jinja2, no script). It talks to the gateway over gRPC as the
signed-in person: their API key, given once to the sign-in form, stays in this process's
session store (mixip.web.sessions) and goes out as the call's `authorization` metadata, so the
gateway decides what each person may see and do exactly as for the CLI. Every POST carries the
session's CSRF token and must come from this page's own origin; every response forbids framing,
scripts and other origins (docs/review-page.md).
"""

from __future__ import annotations

import grpc
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from mixip.web.page import HERE, Gateway, Page
from mixip.web.routes import account, errors, media, projects, sign_in
from mixip.web.sessions import Sessions

# Hosts the page answers to: a page on loopback reached by another name is a DNS-rebinding
# attempt (its cookies would not be sent, but its forms would be), so it is refused.
LOOPBACK_HOSTS = ["127.0.0.1", "localhost"]
CSP = (
    "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'none'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Browsers send `Origin: null` on a POST from a page under `no-referrer`, which would leave
    # the same-origin check nothing to check: `same-origin` sends the page's own address back
    # to itself only, and never to another origin.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class SecurityHeaders:
    """Adds the security headers to every response; pages and previews are never cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope["path"]).startswith("/static/")

        async def sending(message: AsgiMessage) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                headers["Cache-Control"] = "no-cache" if static else "no-store"
            await send(message)

        await self.app(scope, receive, sending)


def create_app(channel: grpc.Channel, sessions: Sessions | None = None) -> Starlette:
    """The page, calling the gateway over `channel`: each area's routes (mixip/web/routes/),
    the static files, the error pages, and the security middleware."""
    sessions = sessions if sessions is not None else Sessions()  # an empty store is falsy
    page = Page(Gateway(channel), sessions)
    return Starlette(
        routes=[
            *sign_in.routes(page),
            *projects.routes(page),
            *account.routes(page),
            *media.routes(page),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS),
        ],
        exception_handlers=errors.handlers(page),
    )
