"""The clearance report's CSV and PDF, from a report as ListClearanceReport gives it: one CSV row
per face, no cell a spreadsheet would run, and "advisory" on every page of the PDF."""

from __future__ import annotations

import csv
import io

from pypdf import PdfReader

from mixip.common.v1 import common_pb2 as common
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.runtime import clearance_report
from mixip.runtime.clearance_report import Report


def sample(media_count: int) -> Report:
    face = pb.ClearanceReportFace(
        result=common.FaceResult(
            face_index=0,
            label=common.FACE_LABEL_POSSIBLE,
            reason=common.LABEL_REASON_NO_PROJECT_CONSENT,
            similarity=0.71,
            talent_id="talent-7",
        ),
        decision=pb.ReviewDecisionRecord(
            decision=common.REVIEW_DECISION_NEEDS_RELEASE_FORM,
            decided_by_name="Rita Reviewer",
            note='=HYPERLINK("http://x")',
        ),
        release_form=pb.RELEASE_FORM_STATUS_MISSING,
    )
    media = [
        pb.ClearanceReportMedia(
            media=pb.MediaSummary(media_id=f"med_{i}", filename=f"Café scène {i}.jpg"),
            faces=[face] if i else [],
        )
        for i in range(media_count)
    ]
    return Report(pb.Project(project_id="film-1", display_name="Film One"), media)


def test_the_csv_has_a_row_per_face_and_no_formula():
    rows = list(csv.DictReader(io.StringIO(clearance_report.to_csv(sample(2)).decode())))
    assert list(rows[0]) == clearance_report.COLUMNS
    assert [(r["file_name"], r["face"], r["label"]) for r in rows] == [
        ("Café scène 0.jpg", "", ""),  # a media without a face still has its row
        ("Café scène 1.jpg", "0", "POSSIBLE"),
    ]
    row = rows[1]
    assert (row["decision"], row["decided_by"], row["release_form"]) == (
        "needs release form",
        "Rita Reviewer",
        "missing",
    )
    assert row["reason"] == "no project consent" and row["similarity"] == "0.71"
    assert row["note"].startswith("'=")  # written as text, never run


def test_every_page_of_a_long_pdf_says_the_labels_are_advisory():
    pages = PdfReader(io.BytesIO(clearance_report.to_pdf(sample(12), lambda _: None))).pages
    assert len(pages) > 1
    assert all("advisory" in page.extract_text() for page in pages)
    text = "\n".join(page.extract_text() for page in pages)
    assert "Film One" in text and "Café scène 11.jpg" in text and "Rita Reviewer" in text
