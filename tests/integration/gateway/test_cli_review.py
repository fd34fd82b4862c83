"""The producer's review from the command line against a real gateway (in-process `mixip`):
projects and collaborators, a project's media, a review decision and its history, a preview,
the access log; bad input exits 2 and records nothing."""

from __future__ import annotations

import csv
import io
import json
import os
import stat

import cv2
import numpy as np
import pytest
from pypdf import PdfReader

from mixip.cli.main import main
from mixip.runtime import clearance_report
from tests.support.gateway_calls import group_photo, upload

PROJECT = "film-1"


@pytest.fixture
def cli(gateway, studio, monkeypatch, tmp_path, capsys):
    """Runs `mixip --gateway <the fixture's gateway> ARGS` as the studio (or MIXIP_API_KEY)."""
    _, meta = studio
    monkeypatch.setenv("MIXIP_API_KEY", meta[0][1].removeprefix("Bearer "))
    monkeypatch.delenv("MIXIP_GATEWAY_CA", raising=False)

    def run(*args: str, key: str | None = None) -> tuple[int, str, str]:
        if key is not None:
            monkeypatch.setenv("MIXIP_API_KEY", key)
        try:
            code = main(["--data-dir", str(tmp_path / "cli"), "--gateway", gateway.address, *args])
        finally:
            monkeypatch.setenv("MIXIP_API_KEY", meta[0][1].removeprefix("Bearer "))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_review_flow_projects_media_decision_preview_and_access_log(cli, gateway, studio, tmp_path):
    owner, meta = studio
    code, out, _ = cli("projects", "create", PROJECT, "--name", "Film One", "--json")
    assert code == 0 and json.loads(out)["role"] == "owner"
    media = upload(gateway, meta, group_photo(), project=PROJECT)
    reviewer, reviewer_meta = gateway.new_account("reviewer")
    reviewer_key = reviewer_meta[0][1].removeprefix("Bearer ")
    code, out, _ = cli("projects", "invite", PROJECT, reviewer, "--role", "reviewer", "--json")
    assert code == 0 and json.loads(out)["role"] == "reviewer"
    code, out, _ = cli("projects", "list", "--json", key=reviewer_key)
    assert json.loads(out)["projects"][0]["pending"] is True
    code, out, _ = cli("projects", "accept", PROJECT, "--owner", owner, "--json", key=reviewer_key)
    assert code == 0 and json.loads(out)["pending"] is False
    code, out, _ = cli("projects", "collaborators", PROJECT, "--json")
    assert [c["account_id"] for c in json.loads(out)["collaborators"]] == [reviewer]

    # the reviewer sees the project and its undecided media, and decides one face
    code, out, _ = cli("projects", "list", "--json", key=reviewer_key)
    [seen] = json.loads(out)["projects"]
    assert (seen["project_id"], seen["role"], seen["owner_account_id"]) == (
        PROJECT,
        "reviewer",
        owner,
    )
    code, out, _ = cli(
        "media", "list", "--project", PROJECT, "--undecided", "--json", key=reviewer_key
    )
    [listed] = json.loads(out)["media"]
    assert listed["media_id"] == media.media_id and listed["undecided"] == len(media.faces) == 2
    code, out, _ = cli(
        "review",
        media.media_id,
        "0",
        "--decision",
        "needs-release",
        "--note",
        "ask the agent",
        "--json",
        key=reviewer_key,
    )
    decision = json.loads(out)
    assert code == 0 and decision["decision"] == "needs_release_form"
    assert decision["decided_by_account_id"] == reviewer
    assert decision["decided_by_name"] == "reviewer"
    # face 0 is UNKNOWN: approving it needs --force
    code, out, err = cli("review", media.media_id, "0", "--decision", "approve")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "UNKNOWN" in err and "--force" in err
    assert len(json.loads(cli("media", "show", media.media_id, "--json")[1])["decisions"]) == 1
    code, out, _ = cli("review", media.media_id, "0", "--decision", "approve", "--force")
    assert code == 0 and "approved_for_release" in out

    # the history: both decisions, oldest first; the label is unchanged
    code, out, _ = cli("media", "show", media.media_id, "--json")
    shown = json.loads(out)
    assert [d["decision"] for d in shown["decisions"]] == [
        "needs_release_form",
        "approved_for_release",
    ]
    assert [f["label"] for f in shown["faces"]] == [
        f["label"] for f in json.loads(cli("media", "show", media.media_id, "--json")[1])["faces"]
    ]
    code, out, _ = cli("media", "list", "--project", PROJECT, "--undecided", "--json")
    assert json.loads(out)["media"][0]["undecided"] == 1

    # a preview: a JPEG, written 0600, never over a file without --force
    target = tmp_path / "preview.jpg"
    code, out, _ = cli("media", "preview", media.media_id, "-o", str(target), "--max-side", "320")
    assert code == 0 and stat.S_IMODE(os.stat(target).st_mode) == 0o600
    image = cv2.imdecode(np.frombuffer(target.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and max(image.shape[:2]) == 320
    code, _, err = cli("media", "preview", media.media_id, "-o", str(target))
    assert code == 2 and "--force" in err

    # the clearance report: CSV and PDF, written 0600, never over a file without --force
    table = tmp_path / "report.csv"
    code, out, _ = cli("report", PROJECT, "--format", "csv", "-o", str(table), "--json")
    assert code == 0 and json.loads(out)["faces"] == 2
    assert stat.S_IMODE(os.stat(table).st_mode) == 0o600
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert list(rows[0]) == clearance_report.COLUMNS
    assert [(r["face"], r["label"], r["decision"], r["decided_by"]) for r in rows] == [
        ("0", "UNKNOWN", "approved for release", "studio"),
        ("1", "CLEARED", "none yet", ""),
    ]
    code, _, err = cli("report", PROJECT, "--format", "csv", "-o", str(table))
    assert code == 2 and "--force" in err
    document = tmp_path / "report.pdf"
    code, out, _ = cli("report", PROJECT, "-o", str(document), key=reviewer_key)
    assert code == 0 and stat.S_IMODE(os.stat(document).st_mode) == 0o600
    pages = [p.extract_text() for p in PdfReader(document).pages]
    assert "Film One" in pages[0] and "UNKNOWN" in pages[0]
    assert all("advisory" in p for p in pages)

    # the owner's access log shows the reviewer's calls on its project, and its own
    code, out, _ = cli("access-log", "list", "--project", PROJECT, "--json")
    entries = json.loads(out)["entries"]
    assert {"ListMedia", "RecordReviewDecision"} <= {
        e["rpc"] for e in entries if e["account_id"] == reviewer
    }
    assert {e["project_id"] for e in entries} == {PROJECT}
    # removed, the reviewer finds nothing: out of scope is NOT_FOUND, like unknown
    code, out, _ = cli("projects", "remove", PROJECT, reviewer, "--json")
    assert code == 0 and json.loads(out)["removed"]["account_id"] == reviewer
    code, _, err = cli("media", "show", media.media_id, key=reviewer_key)
    assert code == 1 and "not found" in err


def test_bad_review_input_exits_2_and_records_nothing(cli, gateway, studio):
    _, meta = studio
    media = upload(gateway, meta, group_photo(), project=PROJECT)
    code, _, err = cli("review", media.media_id, "-1", "--decision", "block")
    assert code == 2 and "FACE" in err
    with pytest.raises(SystemExit) as usage:
        cli("review", media.media_id, "0", "--decision", "maybe")
    assert usage.value.code == 2
    code, _, err = cli("access-log", "list", "--since", "yesterday")
    assert code == 2 and "ISO 8601" in err
    code, _, err = cli("review", media.media_id, "9", "--decision", "block")
    assert code == 1 and "not found" in err  # no such face
    code, out, _ = cli("media", "show", media.media_id, "--json")
    assert json.loads(out)["decisions"] == []
