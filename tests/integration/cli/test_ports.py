"""`mixip up`'s ports: a default port is used when free (bookmarks survive restarts) and falls
back to a free one, said in one line naming the taken port, when something holds it; a picked
port lost to a race before the bind starts the mesh again on fresh ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from mixip.cli import launcher
from mixip.cli.launcher import Mesh, listens_on, port_or_free
from mixip.runtime.config import free_port


def test_a_free_default_port_is_kept_and_a_taken_one_falls_back_saying_so():
    said: list[str] = []
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        chosen = port_or_free(taken, "gateway", said.append)
        assert chosen != taken
        assert said == [f"port {taken} is taken: the gateway listens on 127.0.0.1:{chosen} instead"]
    said.clear()
    assert port_or_free(taken, "gateway", said.append) == taken  # released: the default again
    assert said == []


def test_a_start_whose_picked_port_was_taken_meanwhile_starts_again_on_fresh_ports(
    tmp_path, monkeypatch
):
    """The race CI met: a picked port taken between the pick and the service's bind. The first
    port the launcher picks is one this test holds; the service cannot bind it, and the mesh
    starts on fresh ports instead of failing."""
    said: list[str] = []
    picks: list[int] = []
    real_free_port = launcher.free_port
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]

        def first_one_taken() -> int:
            picks.append(taken if not picks else real_free_port())
            return picks[-1]

        monkeypatch.setattr(launcher, "free_port", first_one_taken)
        mesh = Mesh(tmp_path / "data", services=["audit"], say=said.append)
        mesh.start(ready_timeout=60)
        try:
            assert mesh.listen["audit"] != f"127.0.0.1:{taken}"
            assert len(said) == 1 and "starting again on other ports" in said[0], said
        finally:
            mesh.stop()


def test_free_ports_are_never_handed_out_twice_and_stay_below_the_ephemeral_range():
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(10000 <= port < low for port in ports)


def test_a_review_page_port_taken_before_its_bind_falls_back_to_a_free_one(tmp_path):
    said: list[str] = []
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        mesh = Mesh(
            tmp_path / "data", services=["gateway"], web=True, web_port=taken, default_ports=True
        )
        mesh.say = said.append
        mesh.start(ready_timeout=60)
        try:
            assert mesh.web_url is not None and not mesh.web_url.endswith(f":{taken}")
            assert any("starting again on another port" in line for line in said), said
            assert any(line.startswith(f"port {taken} is taken") for line in said), said
        finally:
            mesh.stop()


def test_a_health_check_answered_on_a_port_counts_only_when_the_started_process_holds_it():
    """Another mesh that took a default port first answers health checks there too: the
    launcher takes a service as up only when its own process listens on the port."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            assert listens_on(os.getpid(), address)
            assert not listens_on(other.pid, address)
        finally:
            other.kill()
            other.wait()
