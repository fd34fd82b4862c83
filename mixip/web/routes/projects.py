"""The caller's projects, a project's media as thumbnails, and its clearance report."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mixip.common.v1 import common_pb2
from mixip.gateway.v1 import gateway_pb2
from mixip.runtime import clearance_report, logs
from mixip.web.page import Page, find_project, identifier, link, project_view, rpc_code, when

logger = logging.getLogger("mixip.web")

PROJECTS_PAGE = 100
MEDIA_PAGE = 24
REPORT_PAGE = 1000  # media per ListClearanceReport call
REPORT_THUMBNAIL = 480  # px, the longest side of a picture in the report


def routes(page: Page) -> list[BaseRoute]:
    """`/projects`, `/projects/ID`, `/projects/ID/report`."""

    async def projects(request: Request) -> Response:
        session = page.signed_in(request)
        reply = await page.call(
            session,
            "ListProjects",
            gateway_pb2.ListProjectsRequest(
                page_size=PROJECTS_PAGE, page_token=request.query_params.get("page_token", "")
            ),
        )
        # A pending invitation gives no access yet (`mixip projects accept` accepts it).
        rows = [project_view(p) for p in reply.projects if not p.pending]
        following = link("/projects", page_token=reply.next_page_token)
        return page.render(request, "projects.html", session, projects=rows, next_page=following)

    async def project(request: Request) -> Response:
        session = page.signed_in(request)
        project_id = identifier(request.path_params["project_id"])
        undecided = request.query_params.get("undecided") == "1"
        reply = await page.call(
            session,
            "ListMedia",
            gateway_pb2.ListMediaRequest(
                project_id=project_id,
                undecided=undecided,
                page_size=MEDIA_PAGE,
                page_token=request.query_params.get("page_token", ""),
            ),
        )
        found = await find_project(page.call, session, project_id)
        following = link(
            f"/projects/{project_id}",
            undecided="1" if undecided else "",
            page_token=reply.next_page_token,
        )
        return page.render(
            request,
            "project.html",
            session,
            project=project_view(found) if found else {"project_id": project_id},
            # an uploader sees no labels or decisions (gateway/role_views.py): no counts, no filter
            labelled=found is None or found.role != gateway_pb2.PROJECT_ROLE_UPLOADER,
            media=[_media_view(m) for m in reply.media],
            undecided=undecided,
            next_page=following,
        )

    async def report(request: Request) -> Response:
        """The project's clearance report as a download (?format=pdf or csv)."""
        session = page.signed_in(request)
        project_id = identifier(request.path_params["project_id"])
        fmt = request.query_params.get("format", "pdf")
        if fmt not in clearance_report.FORMATS:
            raise HTTPException(404)
        api_key = session.api_key
        assert api_key is not None

        def thumbnail(media_id: str) -> bytes | None:
            try:
                reply = page.gateway.call_now(
                    api_key,
                    "GetMediaPreview",
                    gateway_pb2.GetMediaPreviewRequest(
                        media_id=media_id, max_side=REPORT_THUMBNAIL, omit_legend=True
                    ),
                )
            except grpc.RpcError as exc:  # its content is gone or undecodable: no picture
                if rpc_code(exc) != grpc.StatusCode.NOT_FOUND:
                    raise
                return None
            return bytes(reply.image)

        def build() -> bytes:
            gathered = clearance_report.gather(
                lambda token: page.gateway.call_now(
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

    return [
        Route("/projects", projects),
        Route("/projects/{project_id}", project),
        Route("/projects/{project_id}/report", report),
    ]


def _media_view(media: gateway_pb2.MediaSummary) -> dict[str, Any]:
    return {
        "media_id": media.media_id,
        "filename": media.filename or media.media_id,
        "video": media.kind == common_pb2.MEDIA_KIND_VIDEO,
        "uploaded": when(media.created_at),
        "faces": media.face_count,
        "cleared": media.cleared_faces,
        "possible": media.possible_faces,
        "unknown": media.unknown_faces,
        "undecided": media.undecided_faces,
    }
