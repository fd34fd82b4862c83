"""The clearance report a producer hands legal and the errors-and-omissions insurer: per project,
every media and every face with its advisory label, similarity, reason, the current review
decision, who decided (by name) and when, and the talent's release form. As CSV (one row per
face) and as a PDF with a thumbnail per media, every page saying that labels are advisory.

Built from the gateway's ListClearanceReport, which shapes everything by the caller's role
(gateway/role_views.py): the report names no talent the caller may not see. Shared by the CLI
(`mixip report`) and the review page (its download links).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from mixip.common.v1 import common_pb2
from mixip.gateway.v1 import gateway_pb2
from mixip.runtime.paging import every_page

ADVISORY = (
    "Labels are advisory: the matcher's suggestion, never a release decision. "
    "A person decides whether media is cleared for use."
)
COLUMNS = [
    "project_id",
    "project_name",
    "media_id",
    "file_name",
    "kind",
    "uploaded_at",
    "face",
    "label",
    "similarity",
    "reason",
    "talent_id",
    "on_screen",
    "decision",
    "decided_by",
    "decided_at",
    "note",
    "release_form",
]
FORMATS = ("csv", "pdf")
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "pdf": "application/pdf"}
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection): such a
# cell (a file name, a note) is written with a leading apostrophe.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
MAX_THUMBNAILS = 500  # beyond this many media, the PDF lists them without pictures
# A Unicode font for file names and notes in any European script, where the system has it
# (Debian's fonts-dejavu-core); else the PDF's built-in Helvetica (Latin-1 only).
UNICODE_FONTS = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"),
)


@dataclass(frozen=True)
class Report:
    project: gateway_pb2.Project
    media: list[gateway_pb2.ClearanceReportMedia]
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def gather(
    fetch: Callable[[str], gateway_pb2.ListClearanceReportResponse],
) -> Report:
    """The whole report: `fetch(page_token)` calls ListClearanceReport for each page."""
    project = gateway_pb2.Project()
    media: list[gateway_pb2.ClearanceReportMedia] = []
    for page in every_page(fetch):
        project = page.project
        media.extend(page.media)
    return Report(project, media)


def file_name(project_id: str, fmt: str) -> str:
    """The name a download of the report suggests."""
    return f"clearance-report-{project_id}.{fmt}"


# -- rows -------------------------------------------------------------------------------------


def _text(enum: Any, value: int, prefix: str) -> str:
    if not value:
        return ""
    try:
        return str(enum.Name(value)).removeprefix(prefix).replace("_", " ").lower()
    except ValueError:
        return "unknown"


def _when(timestamp: Any) -> str:
    if not timestamp.seconds and not timestamp.nanos:
        return ""
    return str(timestamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M UTC"))


def label_text(face: gateway_pb2.ClearanceReportFace) -> str:
    """The face's advisory label, upper case ("" when withheld from the caller's role)."""
    return _text(common_pb2.FaceLabel, face.result.label, "FACE_LABEL_").upper()


def face_row(face: gateway_pb2.ClearanceReportFace) -> dict[str, str]:
    """What the report says of one face (the CSV's face columns)."""
    result, labelled = face.result, bool(face.result.label)
    decided = face.HasField("decision")
    return {
        "face": str(result.face_index),
        "label": label_text(face) or "not shown",
        "similarity": f"{result.similarity:.2f}" if labelled else "",
        "reason": _text(common_pb2.LabelReason, result.reason, "LABEL_REASON_"),
        "talent_id": result.talent_id,
        "on_screen": ", ".join(
            f"{r.start_seconds:.1f}-{r.end_seconds:.1f} s" for r in result.ranges
        ),
        "decision": _text(common_pb2.ReviewDecision, face.decision.decision, "REVIEW_DECISION_")
        if decided
        else ("none yet" if labelled else ""),
        "decided_by": (face.decision.decided_by_name or face.decision.decided_by_account_id)
        if decided
        else "",
        "decided_at": _when(face.decision.decided_at) if decided else "",
        "note": face.decision.note if decided else "",
        "release_form": _text(
            gateway_pb2.ReleaseFormStatus, face.release_form, "RELEASE_FORM_STATUS_"
        ),
    }


def media_row(report: Report, item: gateway_pb2.ClearanceReportMedia) -> dict[str, str]:
    """What the report says of one media (the CSV's leading columns)."""
    media = item.media
    return {
        "project_id": report.project.project_id,
        "project_name": report.project.display_name,
        "media_id": media.media_id,
        "file_name": media.filename,
        "kind": _text(common_pb2.MediaKind, media.kind, "MEDIA_KIND_"),
        "uploaded_at": _when(media.created_at),
    }


def rows(report: Report) -> Iterator[dict[str, str]]:
    """One row per face (a media without a face: one row with empty face columns)."""
    for item in report.media:
        leading = media_row(report, item)
        if not item.faces:
            yield leading | dict.fromkeys(COLUMNS[6:], "")
        for face in item.faces:
            yield leading | face_row(face)


# -- CSV --------------------------------------------------------------------------------------


def _cell(value: str) -> str:
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def to_csv(report: Report) -> bytes:
    """The report as CSV, one row per face, the columns of COLUMNS."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for row in rows(report):
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return out.getvalue().encode("utf-8")


# -- PDF --------------------------------------------------------------------------------------


def to_pdf(report: Report, thumbnail: Callable[[str], bytes | None]) -> bytes:
    """The report as a PDF: a heading, then per media its file name, its annotated thumbnail
    (`thumbnail(media_id)`, a JPEG, or None to leave it out) and a table of its faces. Every
    page's header and footer say that labels are advisory."""
    from reportlab.lib import colors  # loaded only to draw a PDF
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import (
        Image,
        KeepTogether,
        Paragraph,
        SimpleDocTemplate,
        Spacer,
        Table,
        TableStyle,
    )

    regular, bold = _fonts()
    styles = getSampleStyleSheet()
    for name in ("BodyText", "Title", "Heading3"):
        styles[name].fontName = bold if name != "BodyText" else regular
    small = styles["BodyText"].clone("small", fontSize=8, leading=10)
    project = report.project
    title = project.display_name or project.project_id
    generated = report.generated_at.strftime("%Y-%m-%d %H:%M UTC")

    def page_frame(canvas: Any, document: Any) -> None:
        width, height = document.pagesize
        canvas.saveState()
        canvas.setFont(bold, 9)
        canvas.drawString(15 * mm, height - 10 * mm, f"Clearance report: {title}")
        canvas.setFont(regular, 8)
        canvas.drawRightString(width - 15 * mm, height - 10 * mm, f"generated {generated}")
        canvas.drawString(15 * mm, 8 * mm, ADVISORY)
        canvas.drawRightString(width - 15 * mm, 8 * mm, f"page {document.page}")
        canvas.restoreState()

    def para(text: str, style: Any = small) -> Any:
        return Paragraph(escape(text), style)

    faces_total = sum(len(m.faces) for m in report.media)
    story: list[Any] = [
        Paragraph(escape(f"Clearance report: {title}"), styles["Title"]),
        para(
            f"Project {project.project_id} · {len(report.media)} media, {faces_total} faces · "
            f"generated {generated}",
            styles["BodyText"],
        ),
        Spacer(1, 3 * mm),
        para(ADVISORY, styles["BodyText"]),
        Spacer(1, 5 * mm),
    ]
    header = [
        "#",
        "label (advisory)",
        "similarity",
        "reason",
        "talent",
        "decision",
        "decided by",
        "when",
        "release form",
        "note",
    ]
    widths = [8, 24, 18, 30, 30, 28, 28, 28, 22, 50]
    for number, item in enumerate(report.media):
        media = item.media
        name = media.filename or media.media_id
        block: list[Any] = [
            Paragraph(escape(name), styles["Heading3"]),
            para(
                f"{_text(common_pb2.MediaKind, media.kind, 'MEDIA_KIND_')} · media {media.media_id}"
                f" · uploaded {_when(media.created_at)} · {len(item.faces)} face(s)"
            ),
            Spacer(1, 2 * mm),
        ]
        picture = thumbnail(media.media_id) if number < MAX_THUMBNAILS else None
        if picture:
            image = Image(io.BytesIO(picture))
            scale = min(80 * mm / image.imageWidth, 60 * mm / image.imageHeight)
            image.drawWidth, image.drawHeight = image.imageWidth * scale, image.imageHeight * scale
            image.hAlign = "LEFT"
            block += [image, Spacer(1, 2 * mm)]
        if item.faces:
            data = [[para(h) for h in header]]
            for face in item.faces:
                row = face_row(face)
                data.append(
                    [
                        para(row[key])
                        for key in (
                            "face",
                            "label",
                            "similarity",
                            "reason",
                            "talent_id",
                            "decision",
                            "decided_by",
                            "decided_at",
                            "release_form",
                            "note",
                        )
                    ]
                )
            table = Table(data, colWidths=[w * mm for w in widths], repeatRows=1, hAlign="LEFT")
            table.setStyle(
                TableStyle(
                    [
                        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8e8e8")),
                        ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                        ("VALIGN", (0, 0), (-1, -1), "TOP"),
                    ]
                )
            )
            block.append(table)
        else:
            block.append(para("No face was found in this media."))
        story += [KeepTogether(block), Spacer(1, 6 * mm)]
    if not report.media:
        story.append(para("No media in this project.", styles["BodyText"]))
    out = io.BytesIO()
    document = SimpleDocTemplate(
        out,
        pagesize=landscape(A4),
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=16 * mm,
        bottomMargin=14 * mm,
        title=f"Clearance report: {title}",
        author="Mix-IP",
        subject=ADVISORY,
    )
    document.build(story, onFirstPage=page_frame, onLaterPages=page_frame)
    return out.getvalue()


def _fonts() -> tuple[str, str]:
    """The regular and bold fonts' names: DejaVu Sans when the system has it, else Helvetica."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    if not all(path.exists() for path in UNICODE_FONTS):
        return "Helvetica", "Helvetica-Bold"
    if "MixipSans" not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont("MixipSans", str(UNICODE_FONTS[0])))
        pdfmetrics.registerFont(TTFont("MixipSans-Bold", str(UNICODE_FONTS[1])))
    return "MixipSans", "MixipSans-Bold"
