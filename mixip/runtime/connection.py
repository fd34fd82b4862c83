"""How the command line and the review page reach the gateway: its address from --gateway or
mesh.json, the account's key from MIXIP_API_KEY or the data directory's dev key, the admin key
from MIXIP_ADMIN_KEY or the key directory (mesh.json's, else MIXIP_KEY_DIR's)."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mixip.runtime.config import ADMIN_KEY_FILE, Env, key_dir
from mixip.runtime.files import write_private
from mixip.runtime.usererror import UserError

if TYPE_CHECKING:  # imported when a command calls, not to parse its arguments
    import grpc

    from mixip.gateway.v1 import admin_pb2_grpc, gateway_pb2_grpc

DEV_KEY_FILE = "dev-api-key"
SUPERVISOR_LOCK = "mixip-up"  # the lock `mixip up` holds (mixip.cli.launcher)
# The services of the gateway's client port (for the channel's retry policy).
GATEWAY_SERVICES = ["mixip.gateway.v1.GatewayService", "mixip.gateway.v1.AdminService"]
# How long a command waits for a `mixip up` that is still starting on its data directory.
STARTING_MESH_WAIT_SECONDS = 180.0
DEV_KEY_WAIT_SECONDS = 15.0
# A call's metadata: the key as a bearer token.
Metadata = tuple[tuple[str, str], ...]


@dataclass
class Connection:
    data_dir: Path
    gateway_address: str | None = None
    # --insecure: plaintext to a gateway beyond loopback (API keys would travel in clear).
    insecure: bool = False

    def address(self) -> str:
        if self.gateway_address:
            return self.gateway_address
        mesh_file = self.data_dir / "mesh.json"
        said = False
        deadline = time.monotonic() + STARTING_MESH_WAIT_SECONDS
        while True:
            try:
                return str(json.loads(mesh_file.read_text())["services"]["gateway"])
            except (OSError, ValueError, KeyError):
                pass
            if not self._mesh_starting() or time.monotonic() > deadline:
                raise UserError(
                    f"no running mesh found ({mesh_file} missing): start one with `mixip up`, "
                    "or pass --gateway HOST:PORT",
                    exit_code=2,
                )
            if not said:  # `mixip up &` then a command at once: wait for it to be ready
                print("mixip: waiting for `mixip up` to be ready ...", file=sys.stderr, flush=True)
                said = True
            time.sleep(0.2)

    def _mesh_starting(self) -> bool:
        """Whether a `mixip up` holds this data directory's lock (it writes mesh.json once
        every service is ready)."""
        from mixip.runtime import statelock

        return SUPERVISOR_LOCK in statelock.holders(self.data_dir)

    def key_dir(self) -> Path:
        """The running mesh's key directory (mesh.json), else MIXIP_KEY_DIR's or the default
        beside the data directory."""
        try:
            return Path(json.loads((self.data_dir / "mesh.json").read_text())["key_dir"])
        except (OSError, ValueError, KeyError):
            return key_dir(Env(os.environ | {"MIXIP_DATA_DIR": str(self.data_dir)}))

    def channel(self) -> grpc.Channel:
        """TLS trusting MIXIP_GATEWAY_CA's certificate, or plaintext to a loopback gateway
        (`mixip up`); plaintext beyond loopback only with --insecure (keys travel in clear)."""
        import grpc

        from mixip.runtime.addresses import is_loopback
        from mixip.runtime.client import open_channel

        ca = os.environ.get("MIXIP_GATEWAY_CA", "").strip()
        address = self.address()
        credentials = None
        if ca:
            try:
                credentials = grpc.ssl_channel_credentials(Path(ca).read_bytes())
            except OSError as exc:
                raise UserError(
                    f"MIXIP_GATEWAY_CA: cannot read {ca} ({exc.strerror})", exit_code=2
                ) from None
        elif not is_loopback(address) and not self.insecure:
            raise UserError(
                f"refusing plaintext to {address}: API keys would travel in clear; set "
                "MIXIP_GATEWAY_CA to the gateway's CA certificate (TLS), or pass --insecure",
                exit_code=2,
            )
        return open_channel(address, GATEWAY_SERVICES, timeout_seconds=30, credentials=credentials)

    def api_key(self) -> str:
        key = os.environ.get("MIXIP_API_KEY", "").strip()
        if key:
            return key
        path = self.data_dir / DEV_KEY_FILE
        if not path.exists() and self._mesh_starting():
            self.address()  # a starting `mixip up` writes the key just after mesh.json
            deadline = time.monotonic() + DEV_KEY_WAIT_SECONDS
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        if path.exists():
            return path.read_text().strip()
        raise UserError(f"no API key: set MIXIP_API_KEY, or run `mixip up` (it writes {path})")

    def admin_key(self) -> str:
        key = os.environ.get("MIXIP_ADMIN_KEY", "").strip()
        if key:
            return key
        path = self.key_dir() / ADMIN_KEY_FILE
        if not path.exists():
            raise UserError(f"no admin credential at {path}: the gateway creates it at first start")
        return path.read_text().strip()

    def gateway(self) -> tuple[gateway_pb2_grpc.GatewayServiceStub, Metadata]:
        from mixip.gateway.v1 import gateway_pb2_grpc

        return gateway_pb2_grpc.GatewayServiceStub(self.channel()), _bearer(self.api_key())

    def admin(self) -> tuple[admin_pb2_grpc.AdminServiceStub, Metadata]:
        from mixip.gateway.v1 import admin_pb2_grpc

        return admin_pb2_grpc.AdminServiceStub(self.channel()), _bearer(self.admin_key())


def _bearer(key: str) -> Metadata:
    return (("authorization", f"Bearer {key}"),)


def write_secret(path: Path, text: str) -> None:
    """A credential file only its owner can read."""
    write_private(path, text + "\n")
