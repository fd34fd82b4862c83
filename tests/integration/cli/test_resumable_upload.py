"""`mixip match` through a resumable upload session: a client SIGKILLed mid-upload, run again,
sends only what the gateway does not hold durably, and forgets its session once finished."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys

from mixip.cli import resumable
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.runtime.checkpoints import no_checkpoint
from tests.support.gateway_calls import PROJECT, finished_job, group_photo

PART = 64 * 1024  # the `gateway` fixture's segments


class ClientKilled(Exception):
    """Ends the append on the gateway's side where the test killed the client."""


def test_a_killed_match_resumes_from_the_durable_offset_and_sends_only_the_rest(gateway, tmp_path):
    _, meta = gateway.new_account()
    gateway.stub.CreateProject(
        pb.CreateProjectRequest(project_id=PROJECT, display_name="Film One"), metadata=meta
    )
    photo = tmp_path / "group.jpg"
    photo.write_bytes(group_photo())
    size = photo.stat().st_size
    state = tmp_path / "state"
    command = [
        *(sys.executable, "-m", "mixip.cli.main", "--json", "--gateway", gateway.address),
        *("--data-dir", str(tmp_path / "var"), "match", str(photo), "--project", PROJECT),
        *("--resumable-above", "0"),
    ]
    env = os.environ | {
        "MIXIP_API_KEY": meta[0][1].removeprefix("Bearer "),
        "XDG_STATE_HOME": str(state),
    }
    written: list[str] = []

    def kill_after_two_parts(step: str) -> None:
        written.append(step)
        if len(written) == 2:  # two parts are durable: the client dies before a third
            client.kill()
            client.wait()
            raise ClientKilled

    gateway.app.sessions.checkpoint = kill_after_two_parts
    client = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    client.communicate(timeout=120)
    assert client.returncode == -signal.SIGKILL
    [saved] = list((state / "mixip" / "uploads").iterdir())
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600

    gateway.app.sessions.checkpoint = no_checkpoint
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    assert rerun.returncode == 0, rerun.stderr
    document = json.loads(rerun.stdout)
    assert document["upload"] == {"bytes": size - 2 * PART, "resumed_from": 2 * PART}
    assert len(document["faces"]) == 2
    assert list((state / "mixip" / "uploads").iterdir()) == []  # forgotten once finished
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert json.loads(again.stdout)["upload"] == {"bytes": size, "resumed_from": 0}


def test_a_session_finished_by_a_run_killed_before_forgetting_it_gives_back_its_media(
    gateway, tmp_path, monkeypatch
):
    _, meta = gateway.new_account()
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    photo = tmp_path / "group.jpg"
    photo.write_bytes(group_photo())
    state = resumable.SessionState(gateway.address, PROJECT, photo)
    forget = resumable.SessionState.clear
    monkeypatch.setattr(resumable.SessionState, "clear", lambda self: None)  # killed before
    first = resumable.upload(gateway.stub, meta, gateway.address, photo, PROJECT, lambda _: 0)
    assert state.load()  # the finished session is still saved
    monkeypatch.setattr(resumable.SessionState, "clear", forget)
    again = resumable.upload(gateway.stub, meta, gateway.address, photo, PROJECT, lambda _: 0)
    assert again.media.media_id == first.media.media_id  # the same media: nothing sent again
    assert again.media.job_id == first.media.job_id != ""  # and the same job
    assert (again.bytes, again.resumed_from) == (0, photo.stat().st_size)
    assert state.load() == ""  # forgotten now
    assert finished_job(gateway, meta, first.media.job_id).state == pb.JOB_STATE_DONE
    listed = gateway.stub.ListMedia(pb.ListMediaRequest(project_id=PROJECT), metadata=meta)
    assert [m.media_id for m in listed.media] == [first.media.media_id]
