"""`mixip match` as a job and `mixip jobs list|show|wait|cancel` against a real gateway (the
in-process `mixip` of the `cli` fixture), with and without --json."""

from __future__ import annotations

import json

from tests.support import faces


def _photo(tmp_path, name="photo.jpg"):
    photo = tmp_path / name
    photo.write_bytes(faces.encode(faces.astronaut(), ".jpg"))
    return str(photo)


def test_match_waits_for_its_job_and_reports_the_job_id_with_its_results(cli, tmp_path):
    code, out, err = cli("match", _photo(tmp_path), "--project", "film-1", "--json")
    document = json.loads(out)
    assert code == 0 and document["job_id"].startswith("job_")
    assert [f["talent_id"] for f in document["faces"]] == ["astronaut"]
    assert err == ""  # no progress bar without a terminal
    code, out, _ = cli("match", _photo(tmp_path), "--project", "film-1")
    assert code == 0 and "CLEARED" in out


def test_no_wait_prints_the_job_and_the_jobs_commands_follow_it(cli, gateway, clock, tmp_path):
    code, out, _ = cli("match", _photo(tmp_path), "--project", "film-1", "--no-wait", "--json")
    started = json.loads(out)
    assert code == 0 and set(started) == {"job_id", "media_id", "upload"}
    assert started["upload"]["resumed_from"] == 0 and started["upload"]["bytes"] > 0
    job_id = started["job_id"]
    code, out, _ = cli("jobs", "wait", job_id, "--json")
    waited = json.loads(out)
    assert code == 0 and (waited["state"], waited["media_id"]) == ("done", started["media_id"])
    assert waited["percent"] == 100.0 and waited["finished_at"]
    code, out, _ = cli("jobs", "show", job_id, "--json")
    assert code == 0 and json.loads(out) == waited
    code, out, _ = cli("media", "show", started["media_id"], "--json")
    assert code == 0 and json.loads(out)["faces"][0]["talent_id"] == "astronaut"
    gateway.app.jobs.stop()  # the next job stays queued: it can be cancelled
    clock.advance(seconds=1)  # listed newest first
    code, out, _ = cli("match", _photo(tmp_path), "--project", "film-1", "--no-wait")
    assert code == 0 and out.startswith("job job_")
    queued = out.split()[1]
    code, out, _ = cli("jobs", "list", "--project", "film-1", "--json")
    listed = [(j["job_id"], j["state"]) for j in json.loads(out)["jobs"]]
    assert code == 0 and listed == [(queued, "queued"), (job_id, "done")]
    code, out, _ = cli("jobs", "cancel", queued, "--json")
    assert code == 0 and json.loads(out)["state"] == "cancelled"
    code, out, err = cli("jobs", "wait", queued)
    assert code == 1 and f"job {queued} cancelled" in err
    code, out, _ = cli("jobs", "list", "--project", "film-1")
    assert code == 0 and "2 job(s)" in out and "cancelled" in out
    code, _, err = cli("jobs", "show", "job_unknown")
    assert code == 1 and "not found" in err
