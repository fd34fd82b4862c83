"""The review page in a real browser (Debian's chromium driven by Playwright) in front of the real
gateway and mesh: a reviewer signs in, opens a project, sees the advisory labels, records a
decision that survives a reload; no decision is preselected, and approving a face that is not
CLEARED needs an explicit confirmation; the history names the person; the clearance report
downloads as PDF and CSV and says what it must (and an uploader's names no talent); the session
cookie is HttpOnly and SameSite=Strict; a POST without the CSRF token, or from another origin,
is refused and records nothing; a reviewer of another project finds nothing at the media's
address; a person corrects their name on "Your account" (the review history follows) and
downloads their own data as JSON holding nothing of another account.
Screenshots go to test-artifacts/ and /tmp/review-shots/."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from pypdf import PdfReader

from mixip.common.v1 import common_pb2 as common
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.runtime import clearance_report
from mixip.web.app import create_app
from mixip.web.page import SESSION_COOKIE
from tests.support import faces
from tests.support.gateway_calls import consent, enroll, invite, upload
from tests.support.web import serving

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-gpu",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SHOTS = Path("/tmp/review-shots")
P, Q = "film-p", "film-q"


@pytest.fixture(scope="module")
def browser():
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")):
        message = f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run the browser test, never skip it
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def key_of(metadata: tuple) -> str:
    return dict(metadata)["authorization"].removeprefix("Bearer ")


def sign_in(context, base: str, api_key: str):
    context.set_default_timeout(10_000)  # a failure says so in seconds, not half a minute
    page = context.new_page()
    page.goto(base + "/")
    page.fill("#api_key", api_key)
    page.click("button:has-text('Sign in')")
    page.wait_for_url(base + "/projects")
    return page


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])  # the page is the point here, not the database
def test_a_reviewer_records_a_decision_and_a_reviewer_of_another_project_sees_nothing(
    gateway, clock, browser, backend
):
    _, owner = gateway.new_account("owner")
    reviewer_id, reviewer = gateway.new_account("Rita Reviewer")
    outsider_id, outsider = gateway.new_account("reviewer-s")
    uploader_id, uploader = gateway.new_account("Uma Uploader")
    consent(gateway, owner, clock, "astronaut", cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    consent(gateway, owner, clock, "astronaut", cpb.CONSENT_SCOPE_FACE_USAGE, project=P)
    enroll(gateway, owner, "astronaut", faces.astronaut())
    for project_id, name in ((P, "Film P"), (Q, "Film Q")):
        gateway.stub.CreateProject(
            pb.CreateProjectRequest(project_id=project_id, display_name=name), metadata=owner
        )
    for project_id, account_id in ((P, reviewer_id), (Q, outsider_id)):
        invite(gateway, owner, account_id, pb.PROJECT_ROLE_REVIEWER, project=project_id)
    invite(gateway, owner, uploader_id, pb.PROJECT_ROLE_UPLOADER, project=P)
    photo = faces.encode(faces.composite(faces.astronaut(), faces.grace_hopper()))
    media = upload(gateway, owner, photo, project=P, filename="set-photo.jpg")
    own = upload(gateway, uploader, photo, project=P, filename="uploaders-own.jpg")
    by_label = {f.label: f.face_index for f in media.faces}
    assert sorted(by_label) == [common.FACE_LABEL_CLEARED, common.FACE_LABEL_UNKNOWN]
    cleared, unknown = by_label[common.FACE_LABEL_CLEARED], by_label[common.FACE_LABEL_UNKNOWN]
    media_page = f"/media/{media.media_id}"

    def decisions() -> list[pb.ReviewDecisionRecord]:
        reply = gateway.stub.GetMediaResults(
            pb.GetMediaResultsRequest(media_id=media.media_id), metadata=owner
        )
        return list(reply.decisions)

    with serving(create_app(gateway.channel)) as base:
        context = browser.new_context()
        page = sign_in(context, base, key_of(reviewer))

        # the projects the reviewer was invited to, with its role; never the other one
        assert page.locator("td", has_text="Film P").count() == 1
        assert "reviewer" in page.locator("tr", has_text="Film P").inner_text().lower()
        assert page.locator("text=Film Q").count() == 0

        # the project: an annotated thumbnail (a JPEG the gateway drew) and the label counts
        with page.expect_response(re.compile(r"/preview\?size=thumbnail$")) as thumbnail:
            page.click("text=Film P")
        assert thumbnail.value.status == 200
        assert thumbnail.value.headers["content-type"] == "image/jpeg"
        ARTIFACTS.mkdir(exist_ok=True)
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review-project.png"), full_page=True)
        page.screenshot(path=str(SHOTS / "project.png"), full_page=True)
        card = page.locator(".card", has_text="set-photo.jpg").inner_text().lower()
        assert "1 cleared" in card and "1 unknown" in card and "2 undecided" in card
        # a zero count is muted, not a full-colour badge; the legend is once on the page
        zero = page.locator(".card", has_text="set-photo.jpg").locator(".label", has_text="0")
        assert zero.count() == 1 and "zero" in (zero.get_attribute("class") or "")
        assert page.locator(".legend").count() == 1
        assert "advisory" in page.locator(".legend").inner_text()

        # the media: each face with its advisory label, similarity and reason
        with page.expect_response(re.compile(r"/preview\?size=large$")) as large:
            page.click("text=set-photo.jpg")
        assert large.value.status == 200
        assert page.url == base + media_page
        assert page.inner_text("h1") == "set-photo.jpg"  # the file name, not the media id
        astronaut, stranger = page.locator(f"#face-{cleared}"), page.locator(f"#face-{unknown}")
        # safe by default: real radio buttons with labels, none preselected
        assert page.locator("select").count() == 0
        assert page.locator("input[name=decision]").count() == 6
        assert page.locator("input[name=decision]:checked").count() == 0
        # only a face that is not CLEARED asks for the confirmation
        assert stranger.locator("input[name=confirm_not_cleared]").count() == 1
        assert astronaut.locator("input[name=confirm_not_cleared]").count() == 0
        assert "advisory" in astronaut.inner_text().lower()
        assert "cleared" in astronaut.inner_text().lower()
        assert "astronaut" in astronaut.inner_text()
        assert "unknown" in stranger.inner_text().lower()
        assert "advisory" in stranger.inner_text().lower()
        assert "none yet" in stranger.inner_text()

        # the security headers of a page
        headers = page.request.get(base + media_page).headers
        assert "default-src 'self'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert headers["cache-control"] == "no-store"

        page.screenshot(path=str(SHOTS / "media.png"), full_page=True)

        # no decision chosen: the browser asks for one (the radios are required), nothing sent
        stranger.locator("button", has_text="Record decision").click()
        assert page.url == base + media_page and decisions() == []

        # approving the UNKNOWN face without the confirmation records nothing, and says so
        # next to the face; the keyboard reaches the choices (labelled radio buttons)
        stranger.get_by_label("approved for release").focus()
        page.keyboard.press("Space")
        assert stranger.get_by_label("approved for release").is_checked()
        stranger.locator("button", has_text="Record decision").click()
        page.wait_for_url(f"{base}{media_page}#face-{unknown}")
        refused = stranger.locator("[role=alert]")
        assert "Nothing recorded" in refused.inner_text() and "UNKNOWN" in refused.inner_text()
        assert decisions() == []
        page.screenshot(path=str(SHOTS / "refused.png"))

        # a decision with a note: post/redirect/get, so a reload shows it and posts nothing
        stranger.get_by_label("blocked").check()
        stranger.locator("textarea").fill("cut this shot: no release on file")
        stranger.locator("button", has_text="Record decision").click()
        page.wait_for_url(f"{base}{media_page}#face-{unknown}")
        confirmation = stranger.locator("[role=status]")
        assert f"Recorded for face #{unknown}: blocked" in confirmation.inner_text()
        # where the eye is: next to the face, inside the window (not ~800 px above it)
        box = confirmation.bounding_box()
        viewport = page.viewport_size
        assert box is not None and viewport is not None
        assert box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"]
        page.screenshot(path=str(SHOTS / "recorded.png"))
        page.reload()
        stranger = page.locator(f"#face-{unknown}")
        assert "blocked" in stranger.locator(".decision").inner_text()
        assert "cut this shot" in stranger.inner_text()
        assert "Recorded for face" not in page.inner_text("body")  # shown once

        # the approval with the confirmation ticked is recorded
        stranger.get_by_label("approved for release").check()
        stranger.get_by_label(re.compile("I approve for release a face that is not")).check()
        stranger.locator("button", has_text="Record decision").click()
        page.wait_for_url(f"{base}{media_page}#face-{unknown}")
        recorded = decisions()
        assert [(d.face_index, d.decision, d.decided_by_account_id) for d in recorded] == [
            (unknown, common.REVIEW_DECISION_BLOCKED, reviewer_id),
            (unknown, common.REVIEW_DECISION_APPROVED_FOR_RELEASE, reviewer_id),
        ]
        # the history names the person, never an account or key id
        stranger = page.locator(f"#face-{unknown}")
        history = stranger.locator(".history").inner_text()
        assert history.count("Rita Reviewer") == 2
        body = page.inner_text("body")
        assert reviewer_id not in body and recorded[0].decided_by_key_id not in body
        screenshot = ARTIFACTS / "review-page.png"
        page.screenshot(path=str(screenshot), full_page=True)
        page.screenshot(path=str(SHOTS / "history.png"), full_page=True)
        print(f"review page screenshot: {screenshot}")

        # the clearance report, from the project page: a PDF that says what it must
        page.goto(f"{base}/projects/{P}")
        with page.expect_download() as pdf_download:
            page.click("a:has-text('PDF')")
        assert pdf_download.value.suggested_filename == f"clearance-report-{P}.pdf"
        pdf_download.value.save_as(SHOTS / "report.pdf")
        pdf = PdfReader(pdf_download.value.path())
        pages = [p.extract_text() for p in pdf.pages]
        text = "\n".join(pages)
        for expected in ("Film P", "set-photo.jpg", "uploaders-own.jpg", "CLEARED", "UNKNOWN"):
            assert expected in text, expected
        assert "astronaut" in text and "Rita Reviewer" in text and "signed" in text
        assert all("advisory" in p for p in pages), "every page says the labels are advisory"
        assert any(pdf.pages[0].images), "the report shows the media's thumbnails"
        with page.expect_download() as csv_download:
            page.click("a:has-text('CSV')")
        table = list(csv.DictReader(io.StringIO(Path(csv_download.value.path()).read_text())))
        assert list(table[0]) == clearance_report.COLUMNS
        mine = [r for r in table if r["file_name"] == "set-photo.jpg"]
        assert {(r["label"], r["decision"]) for r in mine} == {
            ("CLEARED", "none yet"),
            ("UNKNOWN", "approved for release"),
        }
        assert {r["decided_by"] for r in mine} == {"", "Rita Reviewer"}

        # the session cookie: HttpOnly, SameSite=Strict, the whole site; no key in it
        (cookie,) = [c for c in context.cookies() if c["name"] == SESSION_COOKIE]
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/" and key_of(reviewer) not in cookie["value"]

        # forged POSTs: no token, or the right token from another origin; nothing recorded
        action = f"{base}{media_page}/faces/{cleared}/decision"
        token = page.locator("input[name=csrf_token]").first.get_attribute("value")
        no_token = context.request.post(
            action, form={"decision": "approved_for_release"}, headers={"Origin": base}
        )
        assert no_token.status == 403
        elsewhere = context.request.post(
            action,
            form={"decision": "approved_for_release", "csrf_token": token or ""},
            headers={"Origin": "http://attacker.example"},
        )
        assert elsewhere.status == 403
        assert len(decisions()) == 2
        context.close()

        # a reviewer of project Q: the media of P is not found, and no preview of it loads
        other = browser.new_context()
        page = sign_in(other, base, key_of(outsider))
        assert page.locator("text=Film P").count() == 0
        previews: list[int] = []
        page.on("response", lambda r: previews.append(r.status) if "/preview" in r.url else None)
        response = page.goto(base + media_page)
        assert response is not None and response.status == 404
        assert "Not found" in page.inner_text("h1")
        assert page.locator("img").count() == 0 and previews == []
        assert page.request.get(base + media_page + "/preview").status == 404
        assert page.request.get(f"{base}/projects/{P}/report?format=csv").status == 404
        other.close()

        # an uploader's report: its own upload only, and no talent, label or decision in it
        third = browser.new_context()
        page = sign_in(third, base, key_of(uploader))
        assert page.request.get(f"{base}/projects/{P}").status == 200
        reply = page.request.get(f"{base}/projects/{P}/report?format=pdf")
        assert reply.status == 200 and reply.headers["content-type"] == "application/pdf"
        text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(reply.body())).pages)
        assert "uploaders-own.jpg" in text and "set-photo.jpg" not in text
        assert "astronaut" not in text and "CLEARED" not in text and "advisory" in text
        reply = page.request.get(f"{base}/projects/{P}/report?format=csv")
        assert own.media_id in reply.text() and "astronaut" not in reply.text()
        third.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])  # the page is the point here, not the database
def test_a_person_corrects_their_name_and_downloads_their_own_data(gateway, browser, backend):
    owner_id, owner = gateway.new_account("Olga Owner")
    other_id, other = gateway.new_account("Otto Other")
    for meta, project_id, name in ((owner, P, "Film P"), (other, Q, "Film Q")):
        gateway.stub.CreateProject(
            pb.CreateProjectRequest(project_id=project_id, display_name=name), metadata=meta
        )
    media = upload(gateway, owner, faces.encode(faces.astronaut()), project=P, filename="a.jpg")
    gateway.stub.RecordReviewDecision(
        pb.RecordReviewDecisionRequest(
            media_id=media.media_id,
            face_index=media.faces[0].face_index,
            decision=common.REVIEW_DECISION_BLOCKED,
        ),
        metadata=owner,
    )

    def profile() -> pb.AccountProfile:
        return gateway.stub.GetAccount(pb.GetAccountRequest(), metadata=owner).account

    with serving(create_app(gateway.channel)) as base:
        context = browser.new_context(accept_downloads=True)
        page = sign_in(context, base, key_of(owner))
        page.click("a:has-text('Your account')")
        page.wait_for_url(base + "/account")
        assert page.input_value("#name") == "Olga Owner" and page.input_value("#email") == ""

        # bad input: the gateway's message next to its field, nothing changed
        page.fill("#name", "Olga Fixed")
        page.fill("#email", "not an email")
        page.click("button:has-text('Save')")
        assert '"@"' in page.locator("#email-error").inner_text()  # the gateway's rule
        assert page.locator("#name-error").count() == 0
        assert page.input_value("#name") == "Olga Fixed"  # what was typed stays to correct
        assert (profile().name, profile().email) == ("Olga Owner", "")
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / "account-refused.png"), full_page=True)

        page.fill("#email", "olga@example.com")
        page.click("button:has-text('Save')")
        page.wait_for_url(base + "/account")
        assert "Saved." in page.locator("[role=status]").inner_text()
        assert page.input_value("#name") == "Olga Fixed"
        assert (profile().name, profile().email) == ("Olga Fixed", "olga@example.com")
        page.screenshot(path=str(SHOTS / "account.png"), full_page=True)

        # the review history now names the person by the corrected name
        page.goto(f"{base}/media/{media.media_id}")
        assert "Olga Fixed" in page.locator(".decision").first.inner_text()

        # the export: an attachment, never cached, holding this account's data only
        page.goto(base + "/account")
        with page.expect_download() as download:
            page.click("a:has-text('Download my data')")
        assert download.value.suggested_filename == f"mixip-account-{owner_id}.json"
        document = json.loads(Path(download.value.path()).read_text())
        assert document["account"]["account_id"] == owner_id
        assert document["account"]["name"] == "Olga Fixed"
        assert [p["project_id"] for p in document["projects"]] == [P]
        text = json.dumps(document)
        assert other_id not in text and "Otto Other" not in text and "Film Q" not in text
        reply = page.request.get(base + "/account/export")
        assert reply.headers["cache-control"] == "no-store"
        assert reply.headers["content-type"].startswith("application/json")
        context.close()
