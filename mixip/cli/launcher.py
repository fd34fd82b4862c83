"""`mixip up`: every service as its own process on loopback, with the embedded defaults.

The gateway's client port and the review page keep stable defaults (`DEFAULT_GATEWAY_PORT`,
`DEFAULT_WEB_PORT`; another free port, said on stderr, when one is taken); the internal ports
are picked free at start; all are written with the other facts a client needs to
`<data dir>/mesh.json`. Key material lives apart from the data, in the key directory
(MIXIP_KEY_DIR, default `<data dir>-keys` beside it): the services' key-encryption keys, the
gateway's admin credential and the mesh's TLS certificates (`<key dir>/tls`, created on first
start), so a copy of the data directory is not a copy of its keys; what an older `mixip up`
kept in the data directory (`keys/`, `tls/`, `gateway-admin.key`) is moved there once.
Services talk to each other over mutual TLS, and each checks its callers (mixip.runtime.acl);
the gateway's client-facing port stays plaintext on loopback unless a certificate is set. Each
process logs to `<data dir>/logs/<instance>.log`. SIGINT/SIGTERM/SIGHUP stops them all (gateway
first, so no new work arrives while the others drain).

One mesh per data directory: `mixip up` holds the directory's `mixip-up` lock and each service
its instance's (mixip.runtime.statelock); a second `mixip up` on a directory where either is held
refuses, naming the PIDs. The services die with `mixip up` however it dies: each asks for
SIGTERM at its parent's death (mixip.runtime.supervision), so a `kill -9` of the launcher stops
them too.

`replicas` runs several instances of a service (`matcher`, `matcher-2`, ...), each on its own
port; the others reach them all through one `ipv4:127.0.0.1:p1,127.0.0.1:p2` target, balanced
round_robin (mixip.runtime.client). The first instance of every service starts (and creates
what its replicas share, such as keys) before the extra ones.

The supervisor (`Mesh.supervise`) restarts an instance that exits, after a backoff doubling with
each crash in a row, and says so; the rest of the mesh keeps serving meanwhile.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
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
from mixip.runtime import statelock
from mixip.runtime.config import (
    LEGACY_KEY_PLACES,
    SERVICES,
    Env,
    free_port,
    key_dir,
    variable,
)
from mixip.runtime.connection import SUPERVISOR_LOCK
from mixip.runtime.files import open_private, private_dir, write_private
from mixip.runtime.supervision import SUPERVISOR_VARIABLE
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
# The lock `mixip up` holds on its data directory (each service holds its instance's):
# SUPERVISOR_LOCK, from mixip.runtime.connection (a command waits while a mesh starts).
# Where `mixip up` serves clients unless told otherwise (bookmarks and scripts survive restarts).
DEFAULT_GATEWAY_PORT = 50051
DEFAULT_WEB_PORT = 8080
# A start where a service could not bind its picked port (something else took it between the
# pick and the bind) starts again on fresh ports, up to START_ATTEMPTS times in all.
START_ATTEMPTS = 3
PORT_TAKEN = ("address already in use", "failed to bind")  # in its start-up output, any case


class PortRaced(CliError):
    """A service exited at start-up because its picked port was taken meanwhile."""


def port_or_free(port: int, what: str, say: Callable[[str], None]) -> int:
    """`port` when nothing listens on it on loopback, else a free port (said once on stderr)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return port
        except OSError:
            pass
    chosen = free_port()
    say(f"port {port} is taken: the {what} listens on 127.0.0.1:{chosen} instead")
    return chosen


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


def say_on_stderr(text: str) -> None:
    print(f"mixip: {text}", file=sys.stderr, flush=True)


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
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    log_offsets: dict[str, int] = field(default_factory=dict)  # instance -> its log's size at spawn
    # Whether to serve the review page (with the gateway); its address: "http://HOST:PORT".
    web: bool = False
    web_url: str | None = None
    # The review page's port (0: a free one); MIXIP_WEB_LISTEN, when set, wins.
    web_port: int = 0
    # Whether gateway_port / web_port are `mixip up`'s defaults, which move to a free port when
    # taken before the bind; a port the user chose is used as given or the start fails.
    default_ports: bool = False
    # Where key material lives: MIXIP_KEY_DIR (from extra_env or the environment), by default
    # `<data dir>-keys` beside the data directory.
    key_dir: Path = field(init=False)
    say: Callable[[str], None] = say_on_stderr
    lock: statelock.StateLock | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        env = Env(os.environ | self.extra_env | {"MIXIP_DATA_DIR": str(self.data_dir)})
        self.key_dir = key_dir(env).expanduser().resolve()

    def instances(self, name: str) -> list[str]:
        return [name] + [f"{name}-{i}" for i in range(2, self.replicas.get(name, 1) + 1)]

    @property
    def mesh_file(self) -> Path:
        return self.data_dir / "mesh.json"

    @property
    def tls_dir(self) -> Path | None:
        return self.key_dir / "tls" if self.tls else None

    def credentials(self, name: str) -> grpc.ChannelCredentials | None:
        """How the launcher itself reaches instance `name` (for health checks)."""
        if self.tls_dir is None or service_of(name) == "gateway":
            return None
        return channel_credentials(self.tls_dir, "operator")

    def environment(self, instance: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["MIXIP_DATA_DIR"] = str(self.data_dir)
        env[SUPERVISOR_VARIABLE] = str(os.getpid())  # each service dies with `mixip up`
        env["MIXIP_KEY_DIR"] = str(self.key_dir)
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
            env["MIXIP_INSTANCE"] = instance  # which lock of the data directory it holds
        if self.tls_dir is not None:
            env["MIXIP_TLS_DIR"] = str(self.tls_dir)
        else:  # `mixip up --insecure`: the explicit development flag (loopback only)
            env["MIXIP_INSECURE_DEV"] = "true"
        env.update(self.extra_env)
        return env

    def start(self, ready_timeout: float = 120.0) -> None:
        if self.key_dir.is_relative_to(self.data_dir.resolve()):
            raise CliError(
                f"MIXIP_KEY_DIR={self.key_dir} is inside the data directory {self.data_dir}: "
                "keys must live apart from the data they seal",
                exit_code=2,
            )
        private_dir(self.data_dir)  # databases, logs and media live here: owner only
        self.lock = self._claim()
        try:
            private_dir(self.key_dir)  # key files and certificates: owner only
            self._adopt_old_keys()
            self._start(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _claim(self) -> statelock.StateLock:
        """The data directory's `mixip-up` lock, refused (naming the PIDs) while another
        `mixip up` or any service still runs on it."""
        try:
            lock = statelock.acquire(self.data_dir, SUPERVISOR_LOCK)
        except statelock.StateInUse:
            lock = None
        running = statelock.holders(self.data_dir)
        if lock is not None:
            del running[SUPERVISOR_LOCK]  # ours
            if not running:
                return lock
            lock.release()  # services of an earlier mesh still run (still stopping)
        first = sorted(running, key=lambda name: name != SUPERVISOR_LOCK)  # mixip up, then all
        listed = ", ".join(f"{name} pid {running[name] or '?'}" for name in first)
        raise CliError(
            f"a mesh already runs on {self.data_dir} ({listed}): stop it (Ctrl-C where it "
            "runs, or kill -TERM its mixip-up pid) before starting another"
        )

    def _adopt_old_keys(self) -> None:
        """Moves key material an older `mixip up` kept in the data directory to the key
        directory, once; refuses when both places hold the same file."""
        for old_name, new_name in LEGACY_KEY_PLACES.items():
            old, new = self.data_dir / old_name, self.key_dir / new_name
            if old.is_dir():
                moves = [(path, new / path.name) for path in sorted(old.iterdir())]
            else:
                moves = [(old, new)] if old.exists() else []
            both = [str(target) for _, target in moves if target.exists()]
            if both:
                raise CliError(
                    f"{old} and {', '.join(both)} both exist: keys live in {self.key_dir} now; "
                    f"keep the right copy there and remove {old}"
                )
            for path, target in moves:
                private_dir(target.parent)
                shutil.move(path, target)
            if old.is_dir():
                old.rmdir()
            if moves:
                self.say(f"moved the key material in {old} to {new} (keys live apart from data)")

    def _start(self, ready_timeout: float) -> None:
        private_dir(self.data_dir / "logs")
        if self.tls_dir is not None and not (self.tls_dir / "ca.pem").exists():
            init_certs(self.tls_dir)
        for attempt in range(1, START_ATTEMPTS + 1):
            self._pick_addresses()
            try:
                extra = [i for name in self.services for i in self.instances(name)[1:]]
                for batch in (self.services, extra):
                    for instance in batch:
                        self._spawn(instance)
                    self._wait_ready(batch, ready_timeout)
                break
            except PortRaced as raced:
                # Something else took a picked port between the pick and the bind (another
                # `mixip up` may have probed the same default port free): start again on fresh
                # ports, the default gateway port kept only while it is still free.
                self._stop_processes()
                self.processes.clear()
                if attempt == START_ATTEMPTS:
                    raise
                self.say(f"{raced}; starting again on other ports")
                if self.gateway_port and self.default_ports:
                    self.gateway_port = port_or_free(self.gateway_port, "gateway", self.say)
        if self.web and "gateway" in self.services:
            self._start_web(ready_timeout)
        write_private(
            self.mesh_file,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "data_dir": str(self.data_dir),
                    "key_dir": str(self.key_dir),
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

    def _pick_addresses(self) -> None:
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

    def _start_web(self, ready_timeout: float) -> None:
        """The review page on MIXIP_WEB_LISTEN (loopback only), else `web_port` on loopback (a
        free port when 0)."""
        listen = os.environ.get(variable(WEB, "LISTEN"), "").strip()
        for attempt in range(1, START_ATTEMPTS + 1):
            self.listen[WEB] = listen or f"127.0.0.1:{self.web_port or free_port()}"
            self._spawn(WEB)
            try:
                self._wait_ready([WEB], ready_timeout)
                break
            except PortRaced as raced:  # as in _start
                if listen or attempt == START_ATTEMPTS:
                    raise
                self.say(f"{raced}; starting again on another port")
                if self.web_port and self.default_ports:
                    self.web_port = port_or_free(self.web_port, "review page", self.say)
        self.web_url = f"http://{self.listen[WEB]}"

    def _spawn(self, name: str) -> None:
        log_fd = open_private(self.data_dir / "logs" / f"{name}.log", append=True)
        self.log_offsets[name] = os.fstat(log_fd).st_size  # where this start's output begins
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
                said = self._said_since_spawn(name).lower()
                error = PortRaced if any(m in said for m in PORT_TAKEN) else CliError
                raise error(
                    f"{name} exited with code {process.returncode} during start-up: "
                    f"{self.log_tail(name)}"
                )
            up = (
                web_serving(self.listen[name])
                if name == WEB
                else serving(self.listen[name], self.credentials(name))
            ) and listens_on(process.pid, self.listen[name])
            if up:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise CliError(
                    f"{name} did not become ready in {timeout:.0f} s: {self.log_tail(name)}"
                )
            time.sleep(0.1)

    def _said_since_spawn(self, name: str) -> str:
        path = self.data_dir / "logs" / f"{name}.log"
        with path.open("rb") as log:
            log.seek(self.log_offsets.get(name, 0))
            return log.read().decode(errors="replace")

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
        self._stop_processes(grace)
        if self.lock is not None:  # the mesh file and the lock are this mesh's
            self.mesh_file.unlink(missing_ok=True)
            self.lock.release()
            self.lock = None

    def _stop_processes(self, grace: float = 15.0) -> None:
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
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def listens_on(pid: int, address: str) -> bool:
    """Whether process `pid` holds the listening socket of `address`'s port, so that a health
    check answered there is ours, not another mesh's that took a default port first. Read from
    /proc (Linux); true where there is no /proc to read."""
    port = int(address.rsplit(":", 1)[1])
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            return True
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(fields[9])
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # the process is gone
        return False
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def web_serving(address: str) -> bool:
    """Whether the review page answers on `address` (its stylesheet, which needs no session)."""
    try:
        with urllib.request.urlopen(f"http://{address}/static/app.css", timeout=1.0) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def stop_on_signals() -> threading.Event:
    """An event set by Ctrl-C/SIGTERM/SIGHUP (the terminal closing under `mixip up &`);
    installed before the mesh starts, so a signal during start-up still stops every service
    instead of killing the launcher and orphaning them."""
    stop = threading.Event()

    def stopping(signum: int, _frame: object) -> None:
        if not stop.is_set():  # said at once: stopping every service takes a few seconds
            say_on_stderr(f"{signal.Signals(signum).name}: stopping the mesh ...")
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stopping)
    return stop


def run_until_signalled(mesh: Mesh, stop: threading.Event) -> int:
    """Holds the mesh up, restarting what dies (said on stderr), until `stop` is set."""
    mesh.supervise(stop, mesh.say)
    mesh.stop()
    mesh.say("mesh stopped")
    return 0
