"""What `mixip match` and `mixip jobs wait` show while a job runs: a tqdm bar over its frames
with the rate and ETA, on a terminal only, never with --json."""

from __future__ import annotations

import io
import sys

import pytest

from mixip.cli.commands.jobs import progress_label
from mixip.cli.output import Output
from mixip.gateway.v1 import gateway_pb2 as pb


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_shows_frames_their_rate_and_the_eta(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)  # in the test: pytest's capture resets it
    running = pb.Job(job_id="job_1", state=pb.JOB_STATE_RUNNING, frames_done=12, frames_total=48)
    with Output(as_json=False).progress("job job_1", unit="frame") as bar:
        bar.restart(48)
        bar.bar.start_t -= 2.0  # two seconds into the attempt
        bar.set(running.frames_done, running.frames_total, progress_label(running))
        shown = str(bar.bar)
    assert shown.startswith("job job_1 running")
    assert "12/48" in shown and "frame/s" in shown
    assert "<00:0" in shown  # the time left: 36 frames at about 6 a second
    assert "job job_1" in terminal.getvalue()


@pytest.mark.parametrize("as_json", [False, True])
def test_without_a_terminal_or_with_json_nothing_is_drawn(monkeypatch, as_json):
    screen = io.StringIO() if not as_json else Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    with Output(as_json=as_json).progress("job job_1", 10, unit="frame") as bar:
        bar.set(5, 10, "job job_1 running")
        bar.restart(10)
        bar.advance(5)
    assert screen.getvalue() == ""


def test_the_label_says_the_job_its_state_and_a_later_attempt():
    queued = pb.Job(job_id="job_1", state=pb.JOB_STATE_QUEUED)
    assert progress_label(queued) == "job job_1 queued"
    retried = pb.Job(job_id="job_1", state=pb.JOB_STATE_RUNNING, attempts=2)
    assert progress_label(retried) == "job job_1 running (attempt 2)"
