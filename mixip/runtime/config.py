"""Configuration from `MIXIP_*` environment variables, with the embedded defaults.

Every variable is listed in docs/configuration.md. A bad value is a start-up error
naming the variable, never a traceback.
"""

from __future__ import annotations

import builtins
import os
import random
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mixip.runtime.limits import MAX_MESSAGE_BYTES, MAX_REQUEST_BYTES, MiB

SERVICES = ("gateway", "matcher", "consent", "audit", "retention")
# Listen ports when a service runs alone; `mixip up` picks free ports and writes mesh.json.
DEFAULT_PORTS = {
    "gateway": 50051,
    "matcher": 50052,
    "consent": 50053,
    "audit": 50054,
    "retention": 50055,
    # The gateway's internal (mutual-TLS, caller-ruled) port: MIXIP_GATEWAY_INTERNAL_LISTEN and,
    # for its callers, MIXIP_GATEWAY_INTERNAL_ADDRESS. Not a service of its own.
    "gateway_internal": 50056,
}


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


class Env:
    """Typed reads of environment variables (a mapping, so tests can pass their own)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def str(self, name: str, default: str) -> str:
        return self.environ.get(name, default).strip() or default

    def optional(self, name: builtins.str) -> builtins.str | None:
        value = self.environ.get(name, "").strip()
        return value or None

    def int(
        self, name: builtins.str, default: builtins.int, *, minimum: builtins.int = 0
    ) -> builtins.int:
        raw = self.environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer") from None
        if value < minimum:
            raise ConfigError(f"{name}={value} must be at least {minimum}")
        return value

    def float(self, name: builtins.str, default: float, *, minimum: float | None = None) -> float:
        raw = self.environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if minimum is not None and value < minimum:
            raise ConfigError(f"{name}={value} must be at least {minimum}")
        return value

    def bool(self, name: builtins.str, default: bool) -> bool:
        raw = self.environ.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in {"1", "true", "yes", "on"}:
            return True
        if raw in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name}={raw!r} is not a boolean (true/false)")

    def choice(
        self, name: builtins.str, default: builtins.str, choices: tuple[builtins.str, ...]
    ) -> builtins.str:
        value = self.str(name, default).lower()
        if value not in choices:
            raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")
        return value


# The gateway's admin key, kept in the data directory (0600) when MIXIP_GATEWAY_ADMIN_KEY is unset.
ADMIN_KEY_FILE = "gateway-admin.key"


# Ports free_port() handed out in this process: never twice, so two services of one mesh are not
# given the same port before either has bound it.
_handed_out: set[int] = set()
_handing_out = threading.Lock()
_picker = random.Random()  # its own seed: tests that seed `random` must not align two workers


def free_port() -> int:
    """A loopback port nothing listens on now (for services that must know each other's address
    before they start), never one this process handed out before.

    Picked below the kernel's ephemeral range (`ip_local_port_range`, where every outgoing
    connection takes its source port): a port the kernel hands to `bind(0)` is also one any
    client socket may take between this pick and the service's own bind, which CI saw as
    EADDRINUSE at start-up. The launcher still retries a start that lost such a race."""
    low, high = _pick_range()
    with _handing_out:
        for _ in range(256):
            port = _picker.randint(low, high)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
        while True:  # the range is crowded: whatever the kernel gives
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = int(probe.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port


def _pick_range() -> tuple[int, int]:
    """Ports 10000 up to just below the ephemeral range (32767 with Linux's default)."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    return 10000, max(ephemeral_low - 1, 11000)


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def data_dir(env: Env) -> Path:
    return Path(env.str("MIXIP_DATA_DIR", "var")).expanduser().resolve()


def key_dir(env: Env) -> Path:
    """Where key material lives: MIXIP_KEY_DIR, default `<data dir>-keys` beside the data
    directory (never inside it), so a copy of the data directory is not a copy of its keys."""
    default = data_dir(env)
    return Path(env.str("MIXIP_KEY_DIR", str(default.with_name(default.name + "-keys"))))


# Where key material used to live inside the data directory (a folder's files, or a file) ->
# where it lives now, relative to the key directory. `mixip up` moves it there once; a service
# started on a data directory that still holds key files refuses, rather than make new keys.
LEGACY_KEY_PLACES = {"keys": "", "tls": "tls", ADMIN_KEY_FILE: ADMIN_KEY_FILE}


# Read for every service NAME as MIXIP_<NAME>_<SETTING>.
PER_SERVICE_SETTINGS = ("ADDRESS", "LISTEN", "DATABASE_URL", "WORKERS", "METRICS_LISTEN")


def variable(name: str, setting: str) -> str:
    return f"MIXIP_{name.upper()}_{setting}"


def service_address(name: str, env: Env) -> str:
    """Where a client reaches service `name`: MIXIP_<NAME>_ADDRESS, default loopback port."""
    return env.str(variable(name, "ADDRESS"), f"127.0.0.1:{DEFAULT_PORTS[name]}")


@dataclass(frozen=True)
class ServerConfig:
    """What every service's server needs, read for service `name`."""

    name: str
    data_dir: Path
    key_dir: Path
    listen: str
    database_url: str
    tls_dir: Path | None
    max_message_bytes: int
    workers: int
    grace_seconds: float
    metrics_listen: str = ""  # "host:port" of the Prometheus endpoint; "" for none
    # The request limit of the methods that declare none (ServiceApp.request_limits)
    max_request_bytes: int = MAX_REQUEST_BYTES

    @classmethod
    def load(cls, name: str, env: Env | None = None) -> ServerConfig:
        env = env or Env()
        root = data_dir(env)
        tls = env.optional("MIXIP_TLS_DIR")
        return cls(
            name=name,
            data_dir=root,
            key_dir=key_dir(env).expanduser().resolve(),
            listen=env.str(variable(name, "LISTEN"), f"127.0.0.1:{DEFAULT_PORTS[name]}"),
            database_url=env.str(
                variable(name, "DATABASE_URL"), f"sqlite:///{root / (name + '.db')}"
            ),
            tls_dir=Path(tls).expanduser().resolve() if tls else None,
            max_message_bytes=env.int(
                "MIXIP_MAX_MESSAGE_BYTES", MAX_MESSAGE_BYTES, minimum=4 * MiB
            ),
            workers=env.int(variable(name, "WORKERS"), 16, minimum=1),
            grace_seconds=env.float("MIXIP_SHUTDOWN_GRACE_SECONDS", 5.0, minimum=0.0),
            metrics_listen=env.str(variable(name, "METRICS_LISTEN"), ""),
            max_request_bytes=env.int(
                "MIXIP_MAX_REQUEST_BYTES", MAX_REQUEST_BYTES, minimum=64 * 1024
            ),
        )
