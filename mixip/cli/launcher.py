"""`mixip up`: every service as its own process on loopback, with the embedded defaults.

Ports are picked free at start and written with the other facts a client needs to
`<data dir>/mesh.json`. Services talk to each other over mutual TLS with certificates from
`<data dir>/tls` (created on first start), and each checks its callers (mixip.runtime.acl);
the gateway's client-facing port stays plaintext on loopback unless a certificate is set.
Each process logs to `<data dir>/logs/<service>.log`. SIGINT/SIGTERM stops them all (gateway
first, so no new work arrives while the others drain).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mixip.cli.output import CliError
from mixip.runtime.config import SERVICES, variable
from mixip.runtime.tls import channel_credentials, init_certs

# Start order: the services others call first; the gateway last. Stop order is the reverse.
START_ORDER = ("audit", "consent", "matcher", "retention", "gateway")
MODULES = {name: f"services.{name}" for name in SERVICES} | {"gateway": "gateway"}


def available_services() -> list[str]:
    """The services this checkout has (each runs as `python -m <module>`)."""
    return [s for s in START_ORDER if importlib.util.find_spec(f"{MODULES[s]}.__main__")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Mesh:
    data_dir: Path
    gateway_port: int = 0
    tls: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    services: list[str] = field(default_factory=available_services)
    addresses: dict[str, str] = field(default_factory=dict)
    # Ports that are not services of their own (the gateway's internal port).
    internal_addresses: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def mesh_file(self) -> Path:
        return self.data_dir / "mesh.json"

    @property
    def tls_dir(self) -> Path | None:
        return self.data_dir / "tls" if self.tls else None

    def credentials(self, name: str) -> grpc.ChannelCredentials | None:
        """How the launcher itself reaches service `name` (for health checks)."""
        if self.tls_dir is None or name == "gateway":
            return None
        return channel_credentials(self.tls_dir, "operator")

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["MIXIP_DATA_DIR"] = str(self.data_dir)
        for name, address in (self.addresses | self.internal_addresses).items():
            env[variable(name, "ADDRESS")] = address
            env[variable(name, "LISTEN")] = address
        if self.tls_dir is not None:
            env["MIXIP_TLS_DIR"] = str(self.tls_dir)
        env.update(self.extra_env)
        return env

    def start(self, ready_timeout: float = 120.0) -> None:
        if self.mesh_file.exists() and _pid_alive(json.loads(self.mesh_file.read_text())):
            raise CliError(f"a mesh is already running on {self.data_dir} (see {self.mesh_file})")
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        if self.tls_dir is not None and not (self.tls_dir / "ca.pem").exists():
            init_certs(self.tls_dir)
        for name in self.services:
            port = self.gateway_port if name == "gateway" and self.gateway_port else free_port()
            self.addresses[name] = f"127.0.0.1:{port}"
        if "gateway" in self.services:  # its internal port, which the retention service calls
            self.internal_addresses["gateway_internal"] = f"127.0.0.1:{free_port()}"
        for name in self.services:
            self._spawn(name)
        try:
            self._wait_ready(self.services, ready_timeout)
        except BaseException:
            self.stop()
            raise
        self.mesh_file.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "data_dir": str(self.data_dir),
                    "services": self.addresses,
                    "tls_dir": str(self.tls_dir) if self.tls_dir else None,
                    "started_at": time.time(),
                },
                indent=2,
            )
        )

    def _spawn(self, name: str) -> None:
        with open(self.data_dir / "logs" / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", MODULES[name]],
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches `mixip up`, which stops them in order
            )

    def restart(self, name: str, ready_timeout: float = 60.0) -> None:
        """Starts service `name` again on its address (after it stopped or was killed)."""
        if self.processes[name].poll() is None:
            raise CliError(f"{name} is still running")
        self._spawn(name)
        self._wait_ready([name], ready_timeout)

    def _wait_ready(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(names)
        while pending:
            name = pending[0]
            process = self.processes[name]
            if process.poll() is not None:
                raise CliError(
                    f"{name} exited with code {process.returncode} during start-up: "
                    f"{self.log_tail(name)}"
                )
            if serving(self.addresses[name], self.credentials(name)):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise CliError(
                    f"{name} did not become ready in {timeout:.0f} s: {self.log_tail(name)}"
                )
            time.sleep(0.1)

    def log_tail(self, name: str) -> str:
        path = self.data_dir / "logs" / f"{name}.log"
        lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        return lines[-1] if lines else "(no output)"

    def watch(self, stop: threading.Event) -> str | None:
        """Blocks until `stop` is set or a service dies; returns the dead service's name."""
        while not stop.wait(0.5):
            for name, process in self.processes.items():
                if process.poll() is not None:
                    return name
        return None

    def stop(self, grace: float = 15.0) -> None:
        for name in reversed([s for s in START_ORDER if s in self.processes]):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(grace)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if (
            self.mesh_file.exists()
            and json.loads(self.mesh_file.read_text()).get("pid") == os.getpid()
        ):
            self.mesh_file.unlink()


def serving(address: str, credentials: grpc.ChannelCredentials | None) -> bool:
    channel = (
        grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    )
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _pid_alive(document: dict) -> bool:
    pid = document.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_on_signals() -> threading.Event:
    """An event set by Ctrl-C/SIGTERM; installed before the mesh starts, so a signal during
    start-up still stops every service instead of killing the launcher and orphaning them."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def run_until_signalled(mesh: Mesh, stop: threading.Event) -> int:
    """Holds the mesh up until `stop` is set (exit 0) or a service dies (exit 1)."""
    died = mesh.watch(stop)
    mesh.stop()
    if died:
        raise CliError(f"{died} stopped unexpectedly: {mesh.log_tail(died)}")
    return 0
