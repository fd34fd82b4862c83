"""The review page in a real browser (Debian's chromium driven by Playwright) in front of the real
gateway and mesh: a reviewer signs in, opens a project, sees the advisory labels, records a
decision that survives a reload; the session cookie is HttpOnly and SameSite=Strict; a POST
without the CSRF token, or from another origin, is refused and records nothing; a reviewer of
another project finds nothing at the media's address."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from mixip.common.v1 import common_pb2 as common
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.web.app import SESSION_COOKIE, create_app
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
    reviewer_id, reviewer = gateway.new_account("reviewer-r")
    outsider_id, outsider = gateway.new_account("reviewer-s")
    consent(gateway, owner, clock, "astronaut", cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    consent(gateway, owner, clock, "astronaut", cpb.CONSENT_SCOPE_FACE_USAGE, project=P)
    enroll(gateway, owner, "astronaut", faces.astronaut())
    for project_id, name in ((P, "Film P"), (Q, "Film Q")):
        gateway.stub.CreateProject(
            pb.CreateProjectRequest(project_id=project_id, display_name=name), metadata=owner
        )
    for project_id, account_id in ((P, reviewer_id), (Q, outsider_id)):
        invite(gateway, owner, account_id, pb.PROJECT_ROLE_REVIEWER, project=project_id)
    photo = faces.encode(faces.composite(faces.astronaut(), faces.grace_hopper()))
    media = upload(gateway, owner, photo, project=P, filename="set-photo.jpg")
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
        page.screenshot(path=str(ARTIFACTS / "review-project.png"), full_page=True)
        card = page.locator(".card").first.inner_text().lower()
        assert "1 cleared" in card and "1 unknown" in card and "2 undecided" in card

        # the media: each face with its advisory label, similarity and reason
        with page.expect_response(re.compile(r"/preview\?size=large$")) as large:
            page.click("text=set-photo.jpg")
        assert large.value.status == 200
        assert page.url == base + media_page
        astronaut, stranger = page.locator(f"#face-{cleared}"), page.locator(f"#face-{unknown}")
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

        # a decision with a note: post/redirect/get, so a reload shows it and posts nothing
        stranger.locator("select").select_option("blocked")
        stranger.locator("textarea").fill("cut this shot: no release on file")
        stranger.locator("button", has_text="Record decision").click()
        page.wait_for_url(f"{base}{media_page}#face-{unknown}")
        assert f"Decision recorded for face #{unknown}" in page.inner_text("body")
        page.reload()
        stranger = page.locator(f"#face-{unknown}")
        assert "blocked" in stranger.locator(".decision").inner_text()
        assert "cut this shot" in stranger.inner_text()
        assert "Decision recorded" not in page.inner_text("body")  # shown once
        recorded = decisions()
        assert [(d.face_index, d.decision, d.decided_by_account_id) for d in recorded] == [
            (unknown, common.REVIEW_DECISION_BLOCKED, reviewer_id)
        ]
        screenshot = ARTIFACTS / "review-page.png"
        page.screenshot(path=str(screenshot), full_page=True)
        print(f"review page screenshot: {screenshot}")

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
        assert len(decisions()) == 1
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
        other.close()
