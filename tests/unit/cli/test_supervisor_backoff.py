"""The supervisor's restart policy, driven by an injected clock (no process, no sleep): the
first restart after 0.5 s, doubling with each crash in a row up to 30 s, and a run of a
minute starts the count over. The real-process test is tests/e2e/test_supervisor.py."""

from __future__ import annotations

from mixip.cli.launcher import MAX_BACKOFF, STABLE_SECONDS, Mesh, Supervisor


class FakeProcess:
    pids = iter(range(1000, 2000))

    def __init__(self) -> None:
        self.pid = next(self.pids)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


class FakeMesh(Mesh):
    def _spawn(self, name: str) -> None:
        self.processes[name] = FakeProcess()


def _mesh(tmp_path) -> FakeMesh:
    mesh = FakeMesh(tmp_path, services=["audit", "gateway"])
    for name in mesh.services:
        mesh._spawn(name)
    return mesh


def test_a_crash_is_restarted_after_a_backoff_that_doubles_then_caps(tmp_path):
    mesh = _mesh(tmp_path)
    said: list[str] = []
    supervisor = Supervisor(mesh, said.append, now=0.0)
    now, delays = 0.0, []
    for _ in range(9):
        mesh.processes["audit"].returncode = -9  # it dies again at once
        supervisor.tick(now)
        delay = supervisor.due["audit"] - now
        delays.append(delay)
        before = mesh.processes["audit"]
        supervisor.tick(now + delay - 0.01)
        assert mesh.processes["audit"] is before  # not before its time
        now += delay
        supervisor.tick(now)
        assert mesh.processes["audit"] is not before and mesh.processes["audit"].poll() is None
    assert delays == [0.5, 1, 2, 4, 8, 16, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF]
    assert said[0].startswith("audit exited with code -9 (") and said[0].endswith(
        "restarting it in 0.5 s (crash 1 in a row)"
    )
    assert said[1].startswith("audit restarted (pid ")
    assert mesh.processes["gateway"].pid == 1001  # the others were never touched


def test_a_minute_of_running_starts_the_backoff_over(tmp_path):
    mesh = _mesh(tmp_path)
    supervisor = Supervisor(mesh, lambda _: None, now=0.0)
    mesh.processes["audit"].returncode = -9
    supervisor.tick(0.0)  # crash 1: 0.5 s
    supervisor.tick(0.5)  # restarted
    mesh.processes["audit"].returncode = 1
    supervisor.tick(1.0)
    assert supervisor.due["audit"] == 2.0  # crash 2 in a row: 1 s
    supervisor.tick(2.0)
    supervisor.tick(2.0 + STABLE_SECONDS)  # up for a minute
    mesh.processes["audit"].returncode = 1
    supervisor.tick(3.0 + STABLE_SECONDS)
    assert supervisor.due["audit"] == 3.5 + STABLE_SECONDS  # 0.5 s again
