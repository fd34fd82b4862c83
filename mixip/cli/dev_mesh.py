"""A local mesh with its `dev` account: what `mixip up` and `mixip demo` start."""

from __future__ import annotations

from pathlib import Path

from mixip.cli.launcher import Mesh
from mixip.gateway.v1 import admin_pb2
from mixip.runtime.connection import DEV_KEY_FILE, Connection, write_secret


def ensure_dev_account(conn: Connection) -> str:
    """The `dev` account of a fresh data directory, its key kept in the directory (0600)."""
    key_file = conn.data_dir / DEV_KEY_FILE
    if not key_file.exists():
        stub, meta = conn.admin()
        reply = stub.CreateAccount(
            admin_pb2.CreateAccountRequest(name="dev", request_id="mixip-up-dev-account"),
            metadata=meta,
        )
        token = reply.api_key
        if not token:  # a replay mints no key: the first one was lost with its file
            token = stub.CreateApiKey(
                admin_pb2.CreateApiKeyRequest(account_id=reply.account.account_id),
                metadata=meta,
            ).api_key
            if reply.api_key_id:  # nobody holds the lost key any more: no reason to keep it
                stub.RevokeApiKey(
                    admin_pb2.RevokeApiKeyRequest(api_key_id=reply.api_key_id), metadata=meta
                )
        write_secret(key_file, token)
    return str(key_file)


def start_mesh(
    data_dir: Path,
    gateway_port: int = 0,
    *,
    tls: bool = True,
    replicas: dict[str, int] | None = None,
    web: bool = True,
    key_dir: Path | None = None,
    web_port: int = 0,
    default_ports: bool = False,
) -> Mesh:
    """A started mesh; its keys in `key_dir` if given, else as MIXIP_KEY_DIR says."""
    mesh = Mesh(
        data_dir,
        gateway_port=gateway_port,
        tls=tls,
        replicas=replicas or {},
        web=web,
        web_port=web_port,
        default_ports=default_ports,
        extra_env={"MIXIP_KEY_DIR": str(key_dir)} if key_dir else {},
    )
    mesh.start()
    if "gateway" in mesh.addresses:
        ensure_dev_account(Connection(data_dir, mesh.addresses["gateway"]))
    return mesh
