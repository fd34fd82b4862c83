"""`mixip up --background` and `mixip down`: the mesh as a background process of its own, for a
shell that goes on with other commands (the README's steps, scripts).

`up --background` starts `mixip up` detached (its own session, so a Ctrl-C in the terminal does
not reach it; its output in `<data dir>/logs/up.log`) and returns once the mesh is ready (its
`mesh.json` and the dev account's key written), printing what `mixip up` prints; if that mesh
fails to start, it says why and exits 1. `down` stops the mesh running on the data directory
(SIGTERM to the pid in `mesh.json`, as Ctrl-C does) and returns once it is gone."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mixip.cli.output import CliError, Output
from mixip.runtime import statelock
from mixip.runtime.connection import DEV_KEY_FILE, SUPERVISOR_LOCK, Connection
from mixip.runtime.files import open_private, private_dir

READY_TIMEOUT_SECONDS = 180.0
STOP_TIMEOUT_SECONDS = 60.0


def start_in_background(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    private_dir(conn.data_dir)
    private_dir(conn.data_dir / "logs")
    command = [sys.executable, "-m", "mixip.cli.main", "--data-dir", str(conn.data_dir), "up"]
    for option, value in (
        ("--gateway-port", args.gateway_port),
        ("--web-port", args.web_port),
        ("--replicas", args.replicas or None),
    ):
        if value is not None:
            command += [option, str(value)]
    if args.insecure:
        command.append("--insecure")
    log_path = conn.data_dir / "logs" / "up.log"
    mesh_file = conn.data_dir / "mesh.json"
    with os.fdopen(open_private(log_path, append=True), "ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in this terminal is not for it: `mixip down` is
        )
    out.note(f"starting the mesh in {conn.data_dir} (output in {log_path}) ...")
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while not (_ours(mesh_file, process.pid) and (conn.data_dir / DEV_KEY_FILE).exists()):
        if process.poll() is not None:
            raise CliError(f"mixip up exited with code {process.returncode}: {_tail(log_path)}")
        if time.monotonic() > deadline:
            raise CliError(
                f"the mesh was not ready in {READY_TIMEOUT_SECONDS:.0f} s: see {log_path}"
            )
        time.sleep(0.1)
    mesh = json.loads(mesh_file.read_text())
    document = {"event": "ready", "pid": process.pid, "log": str(log_path)} | {
        key: mesh[key] for key in ("data_dir", "services", "web")
    }
    between = "mutual TLS" if mesh.get("tls_dir") else "PLAINTEXT (--insecure)"
    lines = [
        f"mesh ready in the background (pid {process.pid}; output in {log_path}); client port: "
        f"plaintext on loopback; between services: {between}"
    ]
    lines += [f"  {name:10} {address}" for name, address in mesh["services"].items()]
    if mesh.get("web"):
        lines.append(f"review page: {mesh['web']} (sign in with an API key)")
    lines.append("`mixip down` stops it.")
    out.result(document, lines)
    return 0


def down(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    mesh_file = conn.data_dir / "mesh.json"
    try:
        pid = int(json.loads(mesh_file.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        raise CliError(f"no running mesh found ({mesh_file} missing)", exit_code=2) from None
    with contextlib.suppress(ProcessLookupError):  # gone already: its lock says so below
        os.kill(pid, signal.SIGTERM)
    out.note(f"stopping the mesh in {conn.data_dir} (pid {pid}) ...")
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while SUPERVISOR_LOCK in statelock.holders(conn.data_dir):
        if time.monotonic() > deadline:
            raise CliError(f"the mesh (pid {pid}) did not stop in {STOP_TIMEOUT_SECONDS:.0f} s")
        time.sleep(0.1)
    out.result({"event": "stopped", "pid": pid}, "mesh stopped")
    return 0


def _ours(mesh_file: Path, pid: int) -> bool:
    try:
        return bool(json.loads(mesh_file.read_text())["pid"] == pid)
    except (OSError, ValueError, KeyError):
        return False


def _tail(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return lines[-1] if lines else "(no output)"
