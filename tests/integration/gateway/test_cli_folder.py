"""`mixip match DIR`: a folder of stills against a real gateway and mesh, run by a real `mixip`
process that is SIGKILLed mid-run and run again: the rerun skips the files it finished, gets
back the job of the file it had started (same request id: no second upload), and the results
file has each file once.

The kill is deterministic: the gateway's job worker calls the test's checkpoint when it claims
the third job; by then the client (one file at a time) has finished two files, and the test
waits for their two lines before it kills the client."""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import threading

import numpy as np

from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.runtime.checkpoints import no_checkpoint
from tests.support import faces
from tests.support.gateway_calls import PROJECT


def _folder(tmp_path):
    shoot = tmp_path / "shoot"
    (shoot / "day-2").mkdir(parents=True)
    (shoot / "a.jpg").write_bytes(faces.encode(faces.astronaut(), ".jpg"))
    (shoot / "b.jpg").write_bytes(faces.encode(faces.grace_hopper(), ".jpg"))
    (shoot / "day-2" / "c.jpg").write_bytes(faces.encode(np.fliplr(faces.astronaut()), ".jpg"))
    (shoot / "day-2" / "d.jpg").write_bytes(faces.encode(faces.astronaut(), ".jpg", quality=80))
    (shoot / "notes.txt").write_text("call sheet")
    return shoot


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _upload_calls(gateway, meta) -> int:
    entries = gateway.stub.ListAccessLog(
        pb.ListAccessLogRequest(project_id=PROJECT, page_size=1000), metadata=meta
    ).entries
    return sum(1 for e in entries if e.rpc.endswith("UploadMedia"))


def test_a_killed_folder_run_resumes_without_redoing_a_file(gateway, studio, tmp_path):
    _, meta = studio
    shoot = _folder(tmp_path)
    results = tmp_path / "state" / "mixip" / "folders"
    command = [
        *(sys.executable, "-m", "mixip.cli.main", "--json", "--gateway", gateway.address),
        *("--data-dir", str(tmp_path / "var"), "match", str(shoot), "--project", PROJECT),
    ]
    env = os.environ | {
        "MIXIP_API_KEY": meta[0][1].removeprefix("Bearer "),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    claims: list[str] = []
    two_lines = threading.Event()

    def kill_at_the_third_claim(step: str) -> None:
        if step != "job.claimed":
            return
        claims.append(step)
        if len(claims) == 3:  # two files are done: their lines are being written
            for _ in range(600):
                written = [p for p in results.glob("*.jsonl")]
                if written and len(_lines(written[0])) == 2:
                    two_lines.set()
                    break
                two_lines.wait(0.05)
            client.kill()
            client.wait()

    gateway.app.jobs.checkpoint = kill_at_the_third_claim
    client = subprocess.Popen(
        [*command, "--jobs", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    killed_out, _ = client.communicate(timeout=120)
    assert client.returncode == -signal.SIGKILL, killed_out
    assert two_lines.is_set(), "the client wrote its two lines before it was killed"
    [results_file] = list(results.glob("*.jsonl"))
    assert stat.S_IMODE(results_file.stat().st_mode) == 0o600  # its lines name talents
    first = _lines(results_file)
    assert [d["path"] for d in first] == ["a.jpg", "b.jpg"]
    assert _upload_calls(gateway, meta) == 3  # the third file's job was started

    gateway.app.jobs.checkpoint = no_checkpoint
    csv_path = tmp_path / "results.csv"
    rerun = subprocess.run(
        [*command, "--csv", str(csv_path)], env=env, capture_output=True, text=True, timeout=120
    )

    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary == {
        "results": str(results_file),
        "csv": str(csv_path),
        "files": 4,
        "done_before": 2,
        "matched": 2,
        "failed": 0,
        "skipped": ["notes.txt"],
    }
    lines = _lines(results_file)
    assert sorted(d["path"] for d in lines) == ["a.jpg", "b.jpg", "day-2/c.jpg", "day-2/d.jpg"]
    assert lines[:2] == first  # the finished files' lines are kept as they were
    by_path = {d["path"]: d for d in lines}
    assert [f["talent_id"] for f in by_path["a.jpg"]["faces"]] == ["astronaut"]
    assert [f["label"] for f in by_path["day-2/d.jpg"]["faces"]] == ["cleared"]
    assert [f["label"] for f in by_path["b.jpg"]["faces"]] == ["unknown"]
    assert all(d["job_id"].startswith("job_") and d["media_id"] for d in lines)
    # the finished files were not sent again; the started one got its job back
    assert _upload_calls(gateway, meta) == 3 + 2
    media = gateway.stub.ListMedia(pb.ListMediaRequest(project_id=PROJECT), metadata=meta).media
    assert sorted(m.media_id for m in media) == sorted(d["media_id"] for d in lines)
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["path"] for r in rows} == set(by_path)
    assert {(r["path"], r["talent_id"]) for r in rows if r["label"] == "cleared"} >= {
        ("a.jpg", "astronaut")
    }

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and json.loads(again.stdout)["done_before"] == 4
    assert _upload_calls(gateway, meta) == 5
    assert _lines(results_file) == lines


def test_a_file_that_fails_is_recorded_the_others_run_and_the_exit_is_1(cli, tmp_path):
    shoot = tmp_path / "shoot"
    (shoot / "day-1").mkdir(parents=True)
    (shoot / "a.jpg").write_bytes(faces.encode(faces.astronaut(), ".jpg"))
    (shoot / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a photo")
    faces.make_video(shoot / "day-1" / "take.mp4", [(faces.astronaut(), 1.0)], size=(320, 180))
    results = tmp_path / "results.jsonl"
    code, out, err = cli("match", str(shoot), "--project", PROJECT, "--results", str(results))
    assert code == 1
    assert "1 failed" in out and "broken.jpg: invalid argument" in out
    lines = {d["path"]: d for d in _lines(results)}
    assert lines["a.jpg"]["faces"][0]["talent_id"] == "astronaut"
    [tracked] = lines["day-1/take.mp4"]["faces"]
    assert tracked["talent_id"] == "astronaut" and tracked["ranges"]
    assert "error" in lines["broken.jpg"] and "faces" not in lines["broken.jpg"]
    assert err == ""  # no progress bar without a terminal
    code, out, _ = cli("match", str(shoot), "--project", PROJECT, "--results", str(results))
    assert code == 1 and "2 done before" in out  # the failed file is tried again
    assert sorted(d["path"] for d in _lines(results)) == ["a.jpg", "broken.jpg", "day-1/take.mp4"]
    assert _lines(results)[-1]["attempt"] == 1


def test_folder_options_are_refused_for_one_file_and_one_file_options_for_a_folder(cli, tmp_path):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(faces.encode(faces.astronaut(), ".jpg"))
    code, _, err = cli("match", str(photo), "--project", PROJECT, "--csv", "x.csv")
    assert code == 2 and "--results and --csv are for a folder" in err
    code, _, err = cli("match", str(tmp_path), "--project", PROJECT, "--no-wait")
    assert code == 2 and "not a folder" in err
    code, _, err = cli("match", str(tmp_path), "--project", PROJECT, "--jobs", "0")
    assert code == 2 and "--jobs must be 1-16" in err


def test_when_the_gateway_has_no_watch_to_spare_the_run_polls_its_jobs(cli, gateway, tmp_path):
    shoot = tmp_path / "shoot"
    shoot.mkdir()
    for name, image in (("a.jpg", faces.astronaut()), ("b.jpg", faces.grace_hopper())):
        (shoot / name).write_bytes(faces.encode(image, ".jpg"))
    gateway.app.jobs.watch_slots = threading.BoundedSemaphore(1)
    gateway.app.jobs.watch_slots.acquire()  # every WatchJob: RESOURCE_EXHAUSTED
    results = tmp_path / "results.jsonl"
    code, out, err = cli(
        "match", str(shoot), "--project", PROJECT, "--results", str(results), "--json"
    )
    assert code == 0, err
    assert json.loads(out)["matched"] == 2
    assert {d["path"]: len(d["faces"]) for d in _lines(results)} == {"a.jpg": 1, "b.jpg": 1}
