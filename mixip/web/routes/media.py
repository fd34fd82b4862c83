"""One media: its faces with their advisory labels and decisions, its previews, and the form that
records a decision on a face."""

from __future__ import annotations

import secrets
from typing import Any

import grpc
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from mixip.common.v1 import common_pb2
from mixip.gateway.v1 import gateway_pb2
from mixip.runtime.errors import error_details
from mixip.web.page import Page, enum_text, find_project, identifier, project_view, when
from mixip.web.sessions import Notice

# Preview sizes the page asks the gateway for (GetMediaPreview max_side).
PREVIEW_SIDES = {"thumbnail": 320, "large": 1024}
MAX_NOTE = 1000
MAX_FACE_INDEX = 2**31 - 1
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


def routes(page: Page) -> list[BaseRoute]:
    """`/media/ID`, its preview, and the decision form of each face."""

    async def media(request: Request) -> Response:
        session = page.signed_in(request)
        media_id = identifier(request.path_params["media_id"])
        reply = await page.call(
            session, "GetMediaResults", gateway_pb2.GetMediaResultsRequest(media_id=media_id)
        )
        found = await find_project(page.call, session, reply.media.project_id)
        may_decide = found is not None and found.role in DECIDING_ROLES
        video = reply.media.kind == common_pb2.MEDIA_KIND_VIDEO
        return page.render(
            request,
            "media.html",
            session,
            media_id=media_id,
            # a name an erasure blanked (or none given): the media id
            filename=reply.filename or media_id,
            project=project_view(found) if found else {"project_id": reply.media.project_id},
            video=video,
            faces=[_face_view(f, reply.decisions, video) for f in reply.media.faces],
            may_decide=may_decide,
            decisions=[{"value": k, "text": DECISION_TEXT[v]} for k, v in DECISIONS.items()],
            confirm_text=CONFIRM_TEXT,
            max_note=MAX_NOTE,
            request_id=secrets.token_urlsafe(16),
        )

    async def preview(request: Request) -> Response:
        session = page.signed_in(request)
        media_id = identifier(request.path_params["media_id"])
        side = PREVIEW_SIDES.get(request.query_params.get("size", "thumbnail"))
        if side is None:
            raise HTTPException(404)
        reply = await page.call(
            session,
            "GetMediaPreview",
            # the page shows the legend once itself, not in every picture
            gateway_pb2.GetMediaPreviewRequest(media_id=media_id, max_side=side, omit_legend=True),
        )
        return Response(reply.image, media_type=reply.content_type or "image/jpeg")

    async def decide(request: Request) -> Response:
        session = page.current(request)
        form = await page.checked_form(request, session)
        session = page.signed_in(request)  # a sign-in form's session has a valid token too
        media_id = identifier(request.path_params["media_id"])
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
            await page.call(
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

    return [
        Route("/media/{media_id}", media),
        Route("/media/{media_id}/preview", preview),
        Route("/media/{media_id}/faces/{face_index:int}/decision", decide, methods=["POST"]),
    ]


def _face_view(
    face: common_pb2.FaceResult,
    decisions: Any,
    video: bool,
) -> dict[str, Any]:
    history = [_decision_view(d) for d in decisions if d.face_index == face.face_index]
    label = enum_text(common_pb2.FaceLabel, face.label, "FACE_LABEL_")
    return {
        "index": face.face_index,
        # UNSPECIFIED: withheld from the caller's role (an uploader's), as everything below it
        "withheld": face.label == common_pb2.FACE_LABEL_UNSPECIFIED,
        # approving it for release needs the person's explicit confirmation
        "needs_confirmation": face.label != common_pb2.FACE_LABEL_CLEARED,
        "label": label,
        "similarity": f"{face.similarity:.2f}",
        "reason": enum_text(common_pb2.LabelReason, face.reason, "LABEL_REASON_"),
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
        "at": when(decision.decided_at),
    }
