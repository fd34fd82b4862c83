"""`mixip up`: every service as its own process on loopback, with the embedded defaults.

Ports are picked free at start and written with the other facts a client needs to
`<data dir>/mesh.json`. Services talk to each other over mutual TLS with certificates from
`<data dir>/tls` (created on first start), and each checks its callers (mixip.runtime.acl);
the gateway's client-facing port stays plaintext on loopback unless a certificate is set.
Each process logs to `<data dir>/logs/<instance>.log`. SIGINT/SIGTERM stops them all (gateway
first, so no new work arrives while the others drain).

`replicas` runs several instances of a service (`matcher`, `matcher-2`, ...), each on its own
port; the others reach them all through one `ipv4:127.0.0.1:p1,127.0.0.1:p2` target, balanced
round_robin (mixip.runtime.client). The first instance of every service starts (and creates
what is shared in the data directory, such as keys) before the extra ones.

The supervisor (`Mesh.supervise`) restarts an instance that exits, after a backoff doubling with
each crash in a row, and says so; the rest of the mesh keeps serving meanwhile.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mixip.cli.output import CliError
from mixip.runtime.config import SERVICES, free_port, variable
from mixip.runtime.files import open_private, private_dir, write_private
from mixip.runtime.tls import channel_credentials, init_certs

# Start order: the services others call first; the gateway last. Stop order is the reverse.
START_ORDER = ("audit", "consent", "matcher", "retention", "gateway")
MODULES = {name: f"services.{name}" for name in SERVICES} | {"gateway": "gateway"}
# The review page (mixip/web): an HTTP process on loopback next to the gateway, started after
# it and stopped before it, supervised like the services.
WEB = "web"
MODULES[WEB] = "mixip.web"
# The supervisor's backoff: the first restart after FIRST_BACKOFF seconds, doubling with each
# crash in a row up to MAX_BACKOFF; an instance up for STABLE_SECONDS starts over.
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
STABLE_SECONDS = 60.0


def service_of(instance: str) -> str:
    """ "matcher-2" -> "matcher" (service names hold no hyphen)."""
    return instance.partition("-")[0]


def target(addresses: list[str]) -> str:
    """One gRPC target reaching every address (balanced by the channel's round_robin)."""
    return addresses[0] if len(addresses) == 1 else "ipv4:" + ",".join(addresses)


def parse_replicas(spec: str) -> dict[str, int]:
    """`matcher=2,gateway=2` -> {"matcher": 2, "gateway": 2}; a CliError (exit 2) if malformed."""
    replicas: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition("=")
        if name not in START_ORDER or not count.isdigit() or not 1 <= int(count) <= 8:
            raise CliError(
                f"--replicas: {item!r} must be SERVICE=N with SERVICE one of "
                f"{', '.join(START_ORDER)} and N from 1 to 8",
                exit_code=2,
            )
        replicas[name] = int(count)
    return replicas


def available_services() -> list[str]:
    """The services this checkout has (each runs as `python -m <module>`)."""
    return [s for s in START_ORDER if importlib.util.find_spec(f"{MODULES[s]}.__main__")]


@dataclass
class Mesh:
    data_dir: Path
    gateway_port: int = 0
    tls: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    services: list[str] = field(default_factory=available_services)
    replicas: dict[str, int] = field(default_factory=dict)
    # service -> the target reaching all its instances; instance -> its own address
    addresses: dict[str, str] = field(default_factory=dict)
    listen: dict[str, str] = field(default_factory=dict)
    # instance -> where it serves Prometheus metrics
    metrics: dict[str, str] = field(default_factory=dict)
    # Ports that are not services of their own (the gateway's internal port): name -> target,
    # and each gateway instance's own internal listen address.
    internal_addresses: dict[str, str] = field(default_factory=dict)
    internal_listen: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    # Whether to serve the review page (with the gateway); its address: "http://HOST:PORT".
    web: bool = False
    web_url: str | None = None

    def instances(self, name: str) -> list[str]:
        return [name] + [f"{name}-{i}" for i in range(2, self.replicas.get(name, 1) + 1)]

    @property
    def mesh_file(self) -> Path:
        return self.data_dir / "mesh.json"

    @property
    def tls_dir(self) -> Path | None:
        return self.data_dir / "tls" if self.tls else None

    def credentials(self, name: str) -> grpc.ChannelCredentials | None:
        """How the launcher itself reaches instance `name` (for health checks)."""
        if self.tls_dir is None or service_of(name) == "gateway":
            return None
        return channel_credentials(self.tls_dir, "operator")

    def environment(self, instance: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["MIXIP_DATA_DIR"] = str(self.data_dir)
        for name, address in (self.addresses | self.internal_addresses).items():
            env[variable(name, "ADDRESS")] = address
            env[variable(name, "LISTEN")] = self.listen.get(name, address)
        if instance is not None:
            env[variable(service_of(instance), "LISTEN")] = self.listen[instance]
            if instance in self.metrics:  # the review page serves no metrics
                env[variable(service_of(instance), "METRICS_LISTEN")] = self.metrics[instance]
            if instance in self.internal_listen:
                env[variable("gateway_internal", "LISTEN")] = self.internal_listen[instance]
            if instance != service_of(instance):  # replicas keep their own job-store rows
                env["MIXIP_RETENTION_REPLICA_ID"] = instance
        if self.tls_dir is not None:
            env["MIXIP_TLS_DIR"] = str(self.tls_dir)
        else:  # `mixip up --insecure`: the explicit development flag (loopback only)
            env["MIXIP_INSECURE_DEV"] = "true"
        env.update(self.extra_env)
        return env

    def start(self, ready_timeout: float = 120.0) -> None:
        if self.mesh_file.exists() and _pid_alive(json.loads(self.mesh_file.read_text())):
            raise CliError(f"a mesh is already running on {self.data_dir} (see {self.mesh_file})")
        private_dir(self.data_dir)  # databases, keys, logs and media live here: owner only
        private_dir(self.data_dir / "logs")
        if self.tls_dir is not None and not (self.tls_dir / "ca.pem").exists():
            init_certs(self.tls_dir)
        for name in self.services:
            for instance in self.instances(name):
                fixed = instance == "gateway" and self.gateway_port
                self.listen[instance] = f"127.0.0.1:{self.gateway_port if fixed else free_port()}"
                self.metrics[instance] = f"127.0.0.1:{free_port()}"
            self.addresses[name] = target([self.listen[i] for i in self.instances(name)])
        if "gateway" in self.services:  # its internal port, which the retention service calls
            for instance in self.instances("gateway"):
                self.internal_listen[instance] = f"127.0.0.1:{free_port()}"
            self.internal_addresses["gateway_internal"] = target(
                [self.internal_listen[i] for i in self.instances("gateway")]
            )
        extra = [i for name in self.services for i in self.instances(name)[1:]]
        try:
            for batch in (self.services, extra):
                for instance in batch:
                    self._spawn(instance)
                self._wait_ready(batch, ready_timeout)
            if self.web and "gateway" in self.services:
                self._start_web(ready_timeout)
        except BaseException:
            self.stop()
            raise
        write_private(
            self.mesh_file,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "data_dir": str(self.data_dir),
                    "services": self.addresses,
                    "instances": self.listen,
                    "metrics": self.metrics,
                    "tls_dir": str(self.tls_dir) if self.tls_dir else None,
                    "web": self.web_url,
                    "started_at": time.time(),
                },
                indent=2,
            ),
        )

    def _start_web(self, ready_timeout: float) -> None:
        """The review page on MIXIP_WEB_LISTEN (loopback only), else a free loopback port."""
        listen = os.environ.get(variable(WEB, "LISTEN"), "").strip()
        self.listen[WEB] = listen or f"127.0.0.1:{free_port()}"
        self._spawn(WEB)
        self._wait_ready([WEB], ready_timeout)
        self.web_url = f"http://{self.listen[WEB]}"

    def _spawn(self, name: str) -> None:
        log_fd = open_private(self.data_dir / "logs" / f"{name}.log", append=True)
        with os.fdopen(log_fd, "ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", MODULES[service_of(name)]],
                env=self.environment(name),
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
            up = (
                web_serving(self.listen[name])
                if name == WEB
                else serving(self.listen[name], self.credentials(name))
            )
            if up:
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

    def supervise(
        self,
        stop: threading.Event,
        say: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Restarts what exits (see `Supervisor`), checking every 0.1 s until `stop` is set."""
        supervisor = Supervisor(self, say, clock())
        while not stop.wait(0.1):
            supervisor.tick(clock())

    def stop(self, grace: float = 15.0) -> None:
        order = [WEB] + [i for s in reversed(START_ORDER) for i in self.instances(s)]
        for name in [i for i in order if i in self.processes]:
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


class Supervisor:
    """An instance that exited is started again on its address after FIRST_BACKOFF seconds,
    doubling with each crash in a row up to MAX_BACKOFF (an instance up for STABLE_SECONDS
    starts over); `say` tells each exit and each restart. `tick(now)` does one pass, so tests
    drive it with their own clock."""

    def __init__(self, mesh: Mesh, say: Callable[[str], None], now: float) -> None:
        self.mesh = mesh
        self.say = say
        self.crashes: dict[str, int] = {}
        self.due: dict[str, float] = {}
        self.started = dict.fromkeys(mesh.processes, now)

    def tick(self, now: float) -> None:
        for name, process in list(self.mesh.processes.items()):
            if process.poll() is None:
                if now - self.started[name] >= STABLE_SECONDS:
                    self.crashes[name] = 0
                continue
            if name not in self.due:
                count = self.crashes.get(name, 0)
                self.crashes[name] = count + 1
                delay = min(FIRST_BACKOFF * 2**count, MAX_BACKOFF)
                self.due[name] = now + delay
                self.say(
                    f"{name} exited with code {process.returncode} "
                    f"({self.mesh.log_tail(name)}); restarting it in {delay:g} s "
                    f"(crash {count + 1} in a row)"
                )
            elif now >= self.due[name]:
                del self.due[name]
                self.mesh._spawn(name)
                self.started[name] = now
                self.say(f"{name} restarted (pid {self.mesh.processes[name].pid})")


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


def web_serving(address: str) -> bool:
    """Whether the review page answers on `address` (its stylesheet, which needs no session)."""
    try:
        with urllib.request.urlopen(f"http://{address}/static/app.css", timeout=1.0) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


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
    """Holds the mesh up, restarting what dies (said on stderr), until `stop` is set."""
    mesh.supervise(stop, lambda text: print(f"mixip: {text}", file=sys.stderr, flush=True))
    mesh.stop()
    return 0
