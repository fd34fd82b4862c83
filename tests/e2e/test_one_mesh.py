"""One mesh per data directory (issue 17, #10), with real processes: the services die with
`mixip up` however it dies, SIGHUP stops it like Ctrl-C, and a second `mixip up` or a second
process of a running service refuses to start on the same state, naming the PIDs. And (#2)
`mixip up` on a data directory of an older version moves its keys out once and keeps working."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import pytest

from mixip.cli.launcher import serving
from mixip.runtime import statelock
from mixip.runtime.config import SERVICES
from tests.support import faces

pytestmark = pytest.mark.slow

MIXIP = [sys.executable, "-m", "mixip.cli.main"]
# Each service drains for MIXIP_SHUTDOWN_GRACE_SECONDS (5 s by default) at most.
GONE_WITHIN_SECONDS = 20.0


class Up:
    """`mixip up` as a user runs it, and the processes it started."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.process = subprocess.Popen(
            [*MIXIP, "--data-dir", str(data_dir), "--json", "up"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.children: set[int] = set()
        try:
            self.ready = json.loads(self.process.stdout.readline() or "{}")
            assert self.ready.get("event") == "ready", self.process.stderr.read()
            self.children = _children(self.process.pid)
            # pid -> what it runs: the five services and the review page
            self.modules = {pid: _module(pid) for pid in self.children}
        except BaseException:
            self.close()
            raise

    def pid_of(self, module: str) -> int:
        [pid] = [pid for pid, running in self.modules.items() if running == module]
        return pid

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)
        for pid in self.children:  # a failed test must not leave services behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def up(tmp_path) -> Iterator[Up]:
    mesh = Up(tmp_path / "data")
    yield mesh
    mesh.close()


@pytest.fixture(scope="module")
def shared_up(tmp_path_factory) -> Iterator[Up]:
    """One mesh for the tests that leave it running."""
    mesh = Up(tmp_path_factory.mktemp("shared") / "data")
    yield mesh
    mesh.close()


def _children(pid: int) -> set[int]:
    """The processes `pid`'s main thread started (`mixip up` starts every one from it)."""
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _module(pid: int) -> str:
    """`python -m MODULE` -> MODULE."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return argv[argv.index("-m") + 1]


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting to be reaped has stopped running)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _within(seconds: float, condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_mixip_up_started_the_five_services_and_the_review_page(shared_up):
    expected = {"services.audit", "services.consent", "services.matcher", "services.retention"}
    assert sorted(shared_up.modules.values()) == sorted(expected | {"gateway", "mixip.web"})


def test_a_killed_mixip_up_takes_every_service_and_the_review_page_down_within_seconds(up):
    assert len(up.children) == 6
    up.process.kill()  # SIGKILL: no handler runs in the launcher
    up.process.wait()
    assert _within(GONE_WITHIN_SECONDS, lambda: not any(_alive(p) for p in up.children)), [
        up.modules[p] for p in up.children if _alive(p)
    ]
    assert statelock.holders(up.data_dir) == {}  # every lock released: a new mesh may start


def test_sighup_stops_the_mesh_cleanly_like_ctrl_c(up):
    up.process.send_signal(signal.SIGHUP)  # the terminal of `mixip up &` closed
    assert up.process.wait(60) == 0
    said = up.process.stderr.read().strip().splitlines()
    # said as the signal arrives, before any service is stopped; and when all are
    assert said[-2:] == ["mixip: SIGHUP: stopping the mesh ...", "mixip: mesh stopped"], said
    assert not any(_alive(pid) for pid in up.children)
    assert not (up.data_dir / "mesh.json").exists()
    assert statelock.holders(up.data_dir) == {}
    for name in SERVICES:  # each drained and said so: stopped, not killed
        assert "event=stopped" in (up.data_dir / "logs" / f"{name}.log").read_text(), name


def test_a_second_mixip_up_on_a_running_directory_is_refused_naming_every_pid(shared_up):
    before = (shared_up.data_dir / "mesh.json").read_text()
    second = subprocess.run(
        [*MIXIP, "--data-dir", str(shared_up.data_dir), "up"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1, second.stderr
    message = second.stderr.strip().splitlines()[-1]
    assert message.startswith(f"mixip: a mesh already runs on {shared_up.data_dir}"), message
    assert f"mixip-up pid {shared_up.process.pid}" in message
    for pid, module in shared_up.modules.items():
        if module != "mixip.web":  # the review page holds no state
            assert f"{module.removeprefix('services.')} pid {pid}" in message
    assert (shared_up.data_dir / "mesh.json").read_text() == before  # the first mesh is untouched
    assert serving(shared_up.ready["services"]["gateway"], None)


def test_a_second_process_of_a_running_service_is_refused_naming_the_holder(shared_up):
    mesh = json.loads((shared_up.data_dir / "mesh.json").read_text())
    env = os.environ | {
        "MIXIP_DATA_DIR": str(shared_up.data_dir),
        "MIXIP_KEY_DIR": mesh["key_dir"],
        "MIXIP_TLS_DIR": mesh["tls_dir"],
        "MIXIP_CONSENT_LISTEN": "127.0.0.1:0",
    }
    second = subprocess.run(
        [sys.executable, "-m", "services.consent"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    holder = shared_up.pid_of("services.consent")
    assert second.returncode == 1, second.stderr
    assert second.stderr.strip().splitlines()[-1] == (
        f"mixip consent: consent: pid {holder} already runs on this state "
        f"({shared_up.data_dir / 'run' / 'consent.lock'} is locked); stop it first"
    )
    assert _alive(holder) and statelock.holders(shared_up.data_dir)["consent"] == holder


def _cli(data_dir: Path, *args: str) -> dict:
    result = subprocess.run(
        [*MIXIP, "--data-dir", str(data_dir), "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_mixip_up_on_an_old_data_dir_moves_its_keys_out_once_and_opens_what_they_sealed(
    tmp_path,
):
    data, keys = tmp_path / "var", tmp_path / "var-keys"
    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), faces.astronaut())
    first = Up(data)
    try:
        _cli(data, "projects", "create", "p1", "--name", "P1")
        _cli(data, "consent", "grant", "old-layout", "--scope", "biometric")
        _cli(data, "consent", "grant", "old-layout", "--scope", "usage", "--project", "p1")
        _cli(data, "enroll", "old-layout", str(photo))
        _cli(data, "match", str(photo), "--project", "p1")  # an audit event, its salt sealed
        vault = _cli(data, "audit", "vault-status")
    finally:
        first.close()
    (data / "keys").mkdir()  # the layout of an older `mixip up`: every key in the data dir
    for path in keys.glob("*.key"):
        path.rename(
            data / path.name if path.name == "gateway-admin.key" else data / "keys" / path.name
        )
    (keys / "tls").rename(data / "tls")
    keys.rmdir()

    second = Up(data)
    try:  # the moved KEK opens the vault; the moved admin credential is the CLI's
        assert _cli(data, "audit", "vault-status") == vault
        assert len(_cli(data, "audit", "list", "--talent", "old-layout")["events"]) == 1
        assert _cli(data, "audit", "verify")["ok"] is True
    finally:
        second.close()
    said = second.process.stderr.read()
    for old, new in ((data / "keys", keys), (data / "tls", keys / "tls")):
        assert f"mixip: moved the key material in {old} to {new}" in said
    assert not {"keys", "tls", "gateway-admin.key"} & {p.name for p in data.iterdir()}
    assert (keys / "gateway-admin.key").exists() and (keys / "tls" / "ca.key").exists()
