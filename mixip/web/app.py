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

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import grpc
import jinja2
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from mixip.common.v1 import common_pb2
from mixip.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from mixip.runtime import clearance_report, logs
from mixip.runtime.errors import error_details
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.validation import ID_PATTERN
from mixip.web.sessions import Notice, Session, Sessions

logger = logging.getLogger("mixip.web")

HERE = Path(__file__).parent
SESSION_COOKIE = "mixip_session"
CALL_TIMEOUT_SECONDS = 30.0
# Preview sizes the page asks the gateway for (GetMediaPreview max_side).
PREVIEW_SIDES = {"thumbnail": 320, "large": 1024}
PROJECTS_PAGE = 100
MEDIA_PAGE = 24
MAX_NOTE = 1000
REPORT_PAGE = 1000  # media per ListClearanceReport call
REPORT_THUMBNAIL = 480  # px, the longest side of a picture in the report
# Hosts the page answers to: a page on loopback reached by another name is a DNS-rebinding
# attempt (its cookies would not be sent, but its forms would be), so it is refused.
LOOPBACK_HOSTS = ["127.0.0.1", "localhost"]
MAX_FACE_INDEX = 2**31 - 1
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
# The form's choices, in this order; none is preselected (the safe choice is never the default).
DECISIONS = {
    "blocked": common_pb2.REVIEW_DECISION_BLOCKED,
    "needs_release_form": common_pb2.REVIEW_DECISION_NEEDS_RELEASE_FORM,
    "approved_for_release": common_pb2.REVIEW_DECISION_APPROVED_FOR_RELEASE,
}
CONFIRM_TEXT = "I approve for release a face that is not CLEARED"
DECISION_TEXT = {
    common_pb2.REVIEW_DECISION_APPROVED_FOR_RELEASE: "approved for release",
    common_pb2.REVIEW_DECISION_BLOCKED: "blocked",
    common_pb2.REVIEW_DECISION_NEEDS_RELEASE_FORM: "needs a release form",
}
DECIDING_ROLES = {gateway_pb2.PROJECT_ROLE_OWNER, gateway_pb2.PROJECT_ROLE_REVIEWER}
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


class Forbidden(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(403, detail)


def create_app(channel: grpc.Channel, sessions: Sessions | None = None) -> Starlette:
    """The page, calling the gateway over `channel`."""
    gateway = Gateway(channel)
    sessions = sessions if sessions is not None else Sessions()  # an empty store is falsy
    templates = Jinja2Templates(
        env=jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
    )

    def current(request: Request) -> Session | None:
        return sessions.get(request.cookies.get(SESSION_COOKIE))

    def signed_in(request: Request) -> Session:
        session = current(request)
        if session is None or not session.signed_in:
            raise HTTPException(303, headers={"Location": "/"})
        return session

    def render(
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
        return templates.TemplateResponse(request, template, context, status_code=status)

    async def checked_form(request: Request, session: Session | None) -> FormData:
        """The POST's form, if it comes from this page's origin with the session's token."""
        if not _same_origin(request):
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

    async def call(session: Session, method: str, request: Message) -> Any:
        assert session.api_key is not None
        return await gateway.call(session.api_key, method, request)

    async def home(request: Request) -> Response:
        session = current(request)
        if session is not None and session.signed_in:
            return RedirectResponse("/projects", 303)
        session = session or sessions.new()
        response = render(request, "sign_in.html", session)
        _set_cookie(response, session)
        return response

    async def sign_in(request: Request) -> Response:
        session = current(request)
        form = await checked_form(request, session)
        assert session is not None
        key = str(form.get("api_key", "")).strip()
        if not key or len(key) > 512:
            return render(request, "sign_in.html", session, 400, error="Enter your API key.")
        try:
            await gateway.call(key, "ListProjects", gateway_pb2.ListProjectsRequest(page_size=1))
        except grpc.RpcError as exc:
            if _code(exc) != grpc.StatusCode.UNAUTHENTICATED:
                raise
            logs.log(logger, "sign-in refused", level=logging.WARNING)
            return render(
                request, "sign_in.html", session, 401, error="That API key was not accepted."
            )
        sessions.end(session.session_id)
        fresh = sessions.new(api_key=key)  # a new id: the signed-out one is never promoted
        logs.log(logger, "signed in")
        response = RedirectResponse("/projects", 303)
        _set_cookie(response, fresh)
        return response

    async def sign_out(request: Request) -> Response:
        session = current(request)
        await checked_form(request, session)
        assert session is not None
        sessions.end(session.session_id)
        response = RedirectResponse("/", 303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    async def projects(request: Request) -> Response:
        session = signed_in(request)
        reply = await call(
            session,
            "ListProjects",
            gateway_pb2.ListProjectsRequest(
                page_size=PROJECTS_PAGE, page_token=request.query_params.get("page_token", "")
            ),
        )
        # A pending invitation gives no access yet (`mixip projects accept` accepts it).
        rows = [_project_view(p) for p in reply.projects if not p.pending]
        following = _link("/projects", page_token=reply.next_page_token)
        return render(request, "projects.html", session, projects=rows, next_page=following)

    async def project(request: Request) -> Response:
        session = signed_in(request)
        project_id = _identifier(request.path_params["project_id"])
        undecided = request.query_params.get("undecided") == "1"
        reply = await call(
            session,
            "ListMedia",
            gateway_pb2.ListMediaRequest(
                project_id=project_id,
                undecided=undecided,
                page_size=MEDIA_PAGE,
                page_token=request.query_params.get("page_token", ""),
            ),
        )
        found = await _find_project(call, session, project_id)
        following = _link(
            f"/projects/{project_id}",
            undecided="1" if undecided else "",
            page_token=reply.next_page_token,
        )
        return render(
            request,
            "project.html",
            session,
            project=_project_view(found) if found else {"project_id": project_id},
            # an uploader sees no labels or decisions (gateway/role_views.py): no counts, no filter
            labelled=found is None or found.role != gateway_pb2.PROJECT_ROLE_UPLOADER,
            media=[_media_view(m) for m in reply.media],
            undecided=undecided,
            next_page=following,
        )

    async def media(request: Request) -> Response:
        session = signed_in(request)
        media_id = _identifier(request.path_params["media_id"])
        reply = await call(
            session, "GetMediaResults", gateway_pb2.GetMediaResultsRequest(media_id=media_id)
        )
        found = await _find_project(call, session, reply.media.project_id)
        may_decide = found is not None and found.role in DECIDING_ROLES
        video = reply.media.kind == common_pb2.MEDIA_KIND_VIDEO
        return render(
            request,
            "media.html",
            session,
            media_id=media_id,
            # a name an erasure blanked (or none given): the media id
            filename=reply.filename or media_id,
            project=_project_view(found) if found else {"project_id": reply.media.project_id},
            video=video,
            faces=[_face_view(f, reply.decisions, video) for f in reply.media.faces],
            may_decide=may_decide,
            decisions=[{"value": k, "text": DECISION_TEXT[v]} for k, v in DECISIONS.items()],
            confirm_text=CONFIRM_TEXT,
            max_note=MAX_NOTE,
            request_id=secrets.token_urlsafe(16),
        )

    async def preview(request: Request) -> Response:
        session = signed_in(request)
        media_id = _identifier(request.path_params["media_id"])
        side = PREVIEW_SIDES.get(request.query_params.get("size", "thumbnail"))
        if side is None:
            raise HTTPException(404)
        reply = await call(
            session,
            "GetMediaPreview",
            # the page shows the legend once itself, not in every picture
            gateway_pb2.GetMediaPreviewRequest(media_id=media_id, max_side=side, omit_legend=True),
        )
        return Response(reply.image, media_type=reply.content_type or "image/jpeg")

    async def decide(request: Request) -> Response:
        session = current(request)
        form = await checked_form(request, session)
        session = signed_in(request)  # a sign-in form's session has a valid token too
        media_id = _identifier(request.path_params["media_id"])
        face_index = int(request.path_params["face_index"])
        if face_index > MAX_FACE_INDEX:
            raise HTTPException(404)  # no such face: the gateway's face_index is an int32
        decision = DECISIONS.get(str(form.get("decision", "")))
        note = str(form.get("note", "")).strip()
        back = RedirectResponse(f"/media/{media_id}#face-{face_index}", 303)
        if decision is None:
            session.flash.append(
                Notice(f"Choose a decision for face #{face_index}.", face_index, error=True)
            )
            return back
        if len(note) > MAX_NOTE:
            raise HTTPException(400, f"The note is longer than {MAX_NOTE} characters.")
        try:
            await call(
                session,
                "RecordReviewDecision",
                gateway_pb2.RecordReviewDecisionRequest(
                    media_id=media_id,
                    face_index=face_index,
                    decision=decision,
                    note=note,
                    # one per form shown: a double submission records the decision once
                    request_id=str(form.get("request_id", ""))[:128],
                    # the gateway refuses to approve a face that is not CLEARED without it
                    confirm_not_cleared=form.get("confirm_not_cleared") == "yes",
                ),
            )
        except grpc.RpcError as exc:
            details = error_details(exc)
            if details.reason != "NOT_CLEARED_UNCONFIRMED":
                raise
            label = details.metadata.get("label", "not CLEARED")
            session.flash.append(
                Notice(
                    f"Nothing recorded: face #{face_index} is {label}, not CLEARED. To approve "
                    f"it for release anyway, tick “{CONFIRM_TEXT}” and record again.",
                    face_index,
                    error=True,
                )
            )
            return back
        text = DECISION_TEXT[decision]
        session.flash.append(Notice(f"Recorded for face #{face_index}: {text}.", face_index))
        return back

    async def report(request: Request) -> Response:
        """The project's clearance report as a download (?format=pdf or csv)."""
        session = signed_in(request)
        project_id = _identifier(request.path_params["project_id"])
        fmt = request.query_params.get("format", "pdf")
        if fmt not in clearance_report.FORMATS:
            raise HTTPException(404)
        api_key = session.api_key
        assert api_key is not None

        def thumbnail(media_id: str) -> bytes | None:
            try:
                reply = gateway.call_now(
                    api_key,
                    "GetMediaPreview",
                    gateway_pb2.GetMediaPreviewRequest(
                        media_id=media_id, max_side=REPORT_THUMBNAIL, omit_legend=True
                    ),
                )
            except grpc.RpcError as exc:  # its content is gone or undecodable: no picture
                if _code(exc) != grpc.StatusCode.NOT_FOUND:
                    raise
                return None
            return bytes(reply.image)

        def build() -> bytes:
            gathered = clearance_report.gather(
                lambda token: gateway.call_now(
                    api_key,
                    "ListClearanceReport",
                    gateway_pb2.ListClearanceReportRequest(
                        project_id=project_id, page_size=REPORT_PAGE, page_token=token
                    ),
                )
            )
            if fmt == "csv":
                return clearance_report.to_csv(gathered)
            return clearance_report.to_pdf(gathered, thumbnail)

        data = await run_in_threadpool(build)
        logs.log(logger, "report downloaded", format=fmt)
        name = clearance_report.file_name(project_id, fmt)
        return Response(
            data,
            media_type=clearance_report.CONTENT_TYPES[fmt],
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    async def account(request: Request) -> Response:
        session = signed_in(request)
        reply = await call(session, "GetAccount", gateway_pb2.GetAccountRequest())
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
        return render(
            request,
            "account.html",
            session,
            status,
            account_id=profile.account_id,
            created=_when(profile.created_at),
            name=shown["name"],
            email=shown["email"],
            errors=dict(errors or {}),
        )

    async def update_account(request: Request) -> Response:
        session = current(request)
        form = await checked_form(request, session)
        session = signed_in(request)  # a sign-in form's session has a valid token too
        entered = {key: str(form.get(key, "")).strip() for key in ("name", "email")}
        try:
            # both fields as the form shows them: the gateway checks both before it writes
            await call(
                session,
                "UpdateAccount",
                gateway_pb2.UpdateAccountRequest(name=entered["name"], email=entered["email"]),
            )
        except grpc.RpcError as exc:
            if _code(exc) != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            details = error_details(exc)
            errors: dict[str, str] = {}
            for violation in details.violations:
                field = violation.field if violation.field in entered else "name"
                errors[field] = "; ".join(filter(None, (errors.get(field), violation.description)))
            if not errors:
                errors["name"] = details.one_line()
            reply = await call(session, "GetAccount", gateway_pb2.GetAccountRequest())
            return render_account(request, session, reply.account, 400, errors, entered)
        logs.log(logger, "account updated")
        session.flash.append(Notice("Saved."))
        return RedirectResponse("/account", 303)

    async def export_account(request: Request) -> Response:
        """The account's own data (ExportOwnAccount) as a JSON download."""
        session = signed_in(request)
        reply = await call(session, "ExportOwnAccount", gateway_pb2.ExportOwnAccountRequest())
        found = await call(session, "GetAccount", gateway_pb2.GetAccountRequest())
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

    async def rpc_failed(request: Request, exc: Exception) -> Response:
        code = _code(exc)
        session = current(request)
        if code == grpc.StatusCode.UNAUTHENTICATED:  # the key was revoked: sign out
            if session is not None:
                sessions.end(session.session_id)
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
        session = current(request)
        return render(
            request,
            "error.html",
            session if session is not None and session.signed_in else None,
            status,
            status_code=status,
            title=title,
            text=detail or text,
        )

    handlers: Mapping[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        grpc.RpcError: rpc_failed,
        HTTPException: http_failed,
        Exception: crashed,
    }
    return Starlette(
        routes=[
            Route("/", home),
            Route("/sign-in", sign_in, methods=["POST"]),
            Route("/sign-out", sign_out, methods=["POST"]),
            Route("/projects", projects),
            Route("/account", account),
            Route("/account", update_account, methods=["POST"]),
            Route("/account/export", export_account),
            Route("/projects/{project_id}", project),
            Route("/projects/{project_id}/report", report),
            Route("/media/{media_id}", media),
            Route("/media/{media_id}/preview", preview),
            Route("/media/{media_id}/faces/{face_index:int}/decision", decide, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS),
        ],
        exception_handlers=dict(handlers),
    )


def _set_cookie(response: Response, session: Session) -> None:
    response.set_cookie(
        SESSION_COOKIE, session.session_id, path="/", httponly=True, samesite="strict"
    )


def _same_origin(request: Request) -> bool:
    """Whether the POST comes from a page of this origin (its Origin, else its Referer)."""
    expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
    origin = request.headers.get("origin")
    if origin is None:
        referer = urlsplit(request.headers.get("referer", ""))
        origin = f"{referer.scheme}://{referer.netloc}" if referer.netloc else ""
    return bool(origin) and origin == expected


def _code(exc: BaseException) -> grpc.StatusCode | None:
    code = getattr(exc, "code", None)
    return code() if callable(code) else None


def _identifier(value: str) -> str:
    if ID_PATTERN.fullmatch(value) is None:
        raise HTTPException(404)
    return value


def _link(path: str, **query: str) -> str | None:
    """`path` with the query, or None when there is no next page."""
    if not query.get("page_token"):
        return None
    return f"{path}?{urlencode({k: v for k, v in query.items() if v})}"


async def _find_project(
    call: Callable[[Session, str, Message], Awaitable[Any]], session: Session, project_id: str
) -> gateway_pb2.Project | None:
    """The caller's project with this id (its name and the caller's role), if listed."""
    token = ""
    for _ in range(10):  # at most 10 pages of the largest size are looked through
        reply = await call(
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


def _enum_text(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix).replace("_", " ").lower()
    except ValueError:
        return "unknown"


def _project_view(project: gateway_pb2.Project) -> dict[str, Any]:
    return {
        "project_id": project.project_id,
        "display_name": project.display_name or project.project_id,
        "owner": project.owner_account_id,
        "role": _enum_text(gateway_pb2.ProjectRole, project.role, "PROJECT_ROLE_"),
    }


def _media_view(media: gateway_pb2.MediaSummary) -> dict[str, Any]:
    return {
        "media_id": media.media_id,
        "filename": media.filename or media.media_id,
        "video": media.kind == common_pb2.MEDIA_KIND_VIDEO,
        "uploaded": _when(media.created_at),
        "faces": media.face_count,
        "cleared": media.cleared_faces,
        "possible": media.possible_faces,
        "unknown": media.unknown_faces,
        "undecided": media.undecided_faces,
    }


def _face_view(
    face: common_pb2.FaceResult,
    decisions: Any,
    video: bool,
) -> dict[str, Any]:
    history = [_decision_view(d) for d in decisions if d.face_index == face.face_index]
    label = _enum_text(common_pb2.FaceLabel, face.label, "FACE_LABEL_")
    return {
        "index": face.face_index,
        # UNSPECIFIED: withheld from the caller's role (an uploader's), as everything below it
        "withheld": face.label == common_pb2.FACE_LABEL_UNSPECIFIED,
        # approving it for release needs the person's explicit confirmation
        "needs_confirmation": face.label != common_pb2.FACE_LABEL_CLEARED,
        "label": label,
        "similarity": f"{face.similarity:.2f}",
        "reason": _enum_text(common_pb2.LabelReason, face.reason, "LABEL_REASON_"),
        "talent_id": face.talent_id,
        "ranges": ", ".join(f"{r.start_seconds:.1f}-{r.end_seconds:.1f} s" for r in face.ranges)
        if video
        else "",
        "current": history[-1] if history else None,
        "history": list(reversed(history)),
    }


def _decision_view(decision: gateway_pb2.ReviewDecisionRecord) -> dict[str, Any]:
    return {
        "decision": DECISION_TEXT.get(decision.decision, "unknown"),
        "note": decision.note,
        # the person's name; an account without one (none is refused today) by its id
        "by": decision.decided_by_name or decision.decided_by_account_id,
        "at": _when(decision.decided_at),
    }


def _when(timestamp: Any) -> str:
    if not timestamp.seconds and not timestamp.nanos:
        return ""
    return str(timestamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M UTC"))
