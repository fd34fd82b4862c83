"""What every route of the review page shares: the gateway called as the signed-in person, the
session store, the templates, and the small helpers the routes have in common."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import grpc
import jinja2
from google.protobuf.message import Message
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from mixip.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.validation import ID_PATTERN
from mixip.web.sessions import Session, Sessions

HERE = Path(__file__).parent
SESSION_COOKIE = "mixip_session"
CALL_TIMEOUT_SECONDS = 30.0


class Gateway:
    """The gateway's calls, made as one person (their API key as the call's metadata)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = gateway_pb2_grpc.GatewayServiceStub(channel)

    async def call(self, api_key: str, method: str, request: Message) -> Any:
        return await run_in_threadpool(self.call_now, api_key, method, request)

    def call_now(self, api_key: str, method: str, request: Message) -> Any:
        """The call, in this thread (for work that makes many calls in a worker thread)."""
        rpc = getattr(self.stub, method)
        metadata = (("authorization", f"Bearer {api_key}"),)
        return rpc(request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)


class Forbidden(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(403, detail)


class Page:
    """The gateway, the sessions and the templates, and what each route does with them first:
    find the session, require a signed-in one, check a POST's form, render a template."""

    def __init__(self, gateway: Gateway, sessions: Sessions) -> None:
        self.gateway = gateway
        self.sessions = sessions
        self.templates = Jinja2Templates(
            env=jinja2.Environment(
                loader=jinja2.FileSystemLoader(HERE / "templates"),
                autoescape=True,
                undefined=jinja2.StrictUndefined,
            )
        )

    def current(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(SESSION_COOKIE))

    def signed_in(self, request: Request) -> Session:
        session = self.current(request)
        if session is None or not session.signed_in:
            raise HTTPException(303, headers={"Location": "/"})
        return session

    def render(
        self,
        request: Request,
        template: str,
        session: Session | None,
        status: int = 200,
        **context: Any,
    ) -> Response:
        notices = list(session.flash) if session is not None else []
        if session is not None:
            session.flash.clear()
        faces = {face["index"] for face in context.get("faces", [])}
        context |= {
            "csrf_token": session.csrf_token if session is not None else "",
            "signed_in": session is not None and session.signed_in,
            # a notice about a face is shown next to it (where the eye is), others at the top
            "flash": [n for n in notices if n.face not in faces],
            "face_notices": {n.face: n for n in notices if n.face in faces},
        }
        return self.templates.TemplateResponse(request, template, context, status_code=status)

    async def checked_form(self, request: Request, session: Session | None) -> FormData:
        """The POST's form, if it comes from this page's origin with the session's token."""
        if not same_origin(request):
            raise Forbidden("the form did not come from this page")
        form = await request.form(max_files=0, max_fields=16, max_part_size=16 * 1024)
        token = form.get("csrf_token")
        if (
            session is None
            or not isinstance(token, str)
            or not secrets.compare_digest(token.encode(), session.csrf_token.encode())
        ):
            raise Forbidden("the form's token is missing or stale: reload the page")
        return form

    async def call(self, session: Session, method: str, request: Message) -> Any:
        assert session.api_key is not None
        return await self.gateway.call(session.api_key, method, request)


def set_cookie(response: Response, session: Session) -> None:
    response.set_cookie(
        SESSION_COOKIE, session.session_id, path="/", httponly=True, samesite="strict"
    )


def same_origin(request: Request) -> bool:
    """Whether the POST comes from a page of this origin (its Origin, else its Referer)."""
    expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
    origin = request.headers.get("origin")
    if origin is None:
        referer = urlsplit(request.headers.get("referer", ""))
        origin = f"{referer.scheme}://{referer.netloc}" if referer.netloc else ""
    return bool(origin) and origin == expected


def rpc_code(exc: BaseException) -> grpc.StatusCode | None:
    found = getattr(exc, "code", None)
    return found() if callable(found) else None


def identifier(value: str) -> str:
    if ID_PATTERN.fullmatch(value) is None:
        raise HTTPException(404)
    return value


def link(path: str, **query: str) -> str | None:
    """`path` with the query, or None when there is no next page."""
    if not query.get("page_token"):
        return None
    return f"{path}?{urlencode({k: v for k, v in query.items() if v})}"


async def find_project(
    call: Callable[[Session, str, Message], Awaitable[Any]], session: Session, project_id: str
) -> gateway_pb2.Project | None:
    """The caller's project with this id (its name and the caller's role), if listed."""
    token = ""
    for _ in range(10):  # at most 10 pages of the largest size are looked through
        reply: gateway_pb2.ListProjectsResponse = await call(
            session,
            "ListProjects",
            gateway_pb2.ListProjectsRequest(page_size=MAX_BATCH, page_token=token),
        )
        for candidate in reply.projects:
            if candidate.project_id == project_id and not candidate.pending:
                return candidate
        token = reply.next_page_token
        if not token:
            break
    return None


def enum_text(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix).replace("_", " ").lower()
    except ValueError:
        return "unknown"


def project_view(project: gateway_pb2.Project) -> dict[str, Any]:
    return {
        "project_id": project.project_id,
        "display_name": project.display_name or project.project_id,
        "owner": project.owner_account_id,
        "role": enum_text(gateway_pb2.ProjectRole, project.role, "PROJECT_ROLE_"),
    }


def when(timestamp: Any) -> str:
    if not timestamp.seconds and not timestamp.nanos:
        return ""
    return str(timestamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M UTC"))
