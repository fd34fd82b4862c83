"""The mesh on this machine: `mixip up` (in the foreground or `--background`), `mixip down`,
`mixip certs init` (a private CA for mutual TLS) and `mixip health` (a service's health check)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mixip.cli.commands.parsing import Subparsers
from mixip.cli.output import CliError, Output
from mixip.runtime.connection import Connection


def up(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    if args.background:
        from mixip.cli.background import start_in_background

        return start_in_background(args, conn, out)
    from mixip.cli.dev_mesh import start_mesh
    from mixip.cli.launcher import (
        DEFAULT_GATEWAY_PORT,
        DEFAULT_WEB_PORT,
        parse_replicas,
        port_or_free,
        run_until_signalled,
        say_on_stderr,
        stop_on_signals,
    )

    replicas = parse_replicas(args.replicas)
    stop = stop_on_signals()
    if args.insecure:
        print(
            "mixip: WARNING: --insecure: the services talk plaintext and accept any local "
            "caller without a certificate (development only; never on a shared machine)",
            file=sys.stderr,
            flush=True,
        )
    # An explicit port is used as given (0: a free one); a default falls back when taken.
    gateway_port = args.gateway_port
    if gateway_port is None:
        gateway_port = port_or_free(DEFAULT_GATEWAY_PORT, "gateway", say_on_stderr)
    web_port = args.web_port
    if web_port is None:
        web_port = port_or_free(DEFAULT_WEB_PORT, "review page", say_on_stderr)
    out.note(f"starting the mesh in {conn.data_dir} ...")
    mesh = start_mesh(
        conn.data_dir,
        gateway_port,
        tls=not args.insecure,
        replicas=replicas,
        web_port=web_port,
        default_ports=args.gateway_port is None and args.web_port is None,
    )
    document = {
        "event": "ready",
        "data_dir": str(conn.data_dir),
        "services": mesh.addresses,
        "instances": mesh.listen,
        "mutual_tls": mesh.tls,
        "insecure": not mesh.tls,
    }
    lines = [
        f"mesh ready (data in {conn.data_dir}; logs in {conn.data_dir / 'logs'}); "
        "client port: plaintext on loopback; "
        f"between services: {'mutual TLS' if mesh.tls else 'PLAINTEXT (--insecure)'}"
    ]
    lines += [f"  {name:10} {address}" for name, address in mesh.addresses.items()]
    if mesh.web_url:
        document["web"] = mesh.web_url
        lines.append(f"review page: {mesh.web_url} (sign in with an API key)")
    lines.append("A service that exits is restarted (said here); Ctrl-C stops them all.")
    out.result(document, lines)
    return run_until_signalled(mesh, stop)


def stop_mesh(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    from mixip.cli.background import down

    return down(args, conn, out)


def certs_init(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    from mixip.runtime.tls import init_certs

    directory = Path(args.directory).expanduser().resolve()
    if (directory / "ca.pem").exists() and not args.force:
        raise CliError(f"{directory} already holds a CA; pass --force to replace every file")
    written = init_certs(directory)
    out.result(
        {"directory": str(directory), "files": [p.name for p in written]},
        [
            f"wrote a private CA and {len(written) // 2 - 1} certificates to {directory}",
            "  (keys are mode 0600; point MIXIP_TLS_DIR at this directory)",
        ],
    )
    return 0


def health(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    """Exit 0 when the service at ADDRESS reports SERVING (container health checks)."""
    from mixip.cli.launcher import serving
    from mixip.runtime.config import Env
    from mixip.runtime.tls import channel_credentials

    tls_dir = None if args.plaintext else Env().optional("MIXIP_TLS_DIR")
    credentials = channel_credentials(Path(tls_dir), args.identity) if tls_dir else None
    ok = serving(args.address, credentials)
    out.result(
        {"address": args.address, "serving": ok},
        f"{args.address}: {'SERVING' if ok else 'not serving'}",
    )
    return 0 if ok else 1


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """`mixip up`, `mixip down`, `mixip certs init`, `mixip health`."""
    p = sub.add_parser("up", parents=[common], help="run the whole mesh on this machine")
    p.add_argument(
        "--gateway-port",
        type=int,
        default=None,
        help="the gateway's client port (default 50051, another free port if taken; 0: free)",
    )
    p.add_argument(
        "--web-port",
        type=int,
        default=None,
        help="the review page's port (default 8080, another free port if taken; 0: free)",
    )
    p.add_argument(
        "--replicas",
        default="",
        metavar="SERVICE=N,...",
        help="run N instances of a service, balanced round_robin (e.g. matcher=2,gateway=2)",
    )
    p.add_argument(
        "--background",
        action="store_true",
        help="start the mesh as a background process, return once it is ready (`mixip down` "
        "stops it)",
    )
    p.set_defaults(run=up)
    p = sub.add_parser("down", parents=[common], help="stop the mesh `mixip up` runs")
    p.set_defaults(run=stop_mesh)
    certs = sub.add_parser("certs", help="certificates for mutual TLS").add_subparsers(
        dest="action", required=True
    )
    p = certs.add_parser("init", parents=[common], help="create a private CA and certificates")
    p.add_argument("directory", help="where to write ca.pem and the service certificates")
    p.add_argument("--force", action="store_true", help="replace an existing CA")
    p.set_defaults(run=certs_init)
    p = sub.add_parser("health", parents=[common], help="is a service SERVING? (exit code)")
    p.add_argument("address", metavar="HOST:PORT", help="the service's address")
    p.add_argument(
        "--as",
        dest="identity",
        default="operator",
        help="certificate to present from MIXIP_TLS_DIR (default operator)",
    )
    p.add_argument(
        "--plaintext",
        action="store_true",
        help="no TLS (the gateway's client port); default: mutual TLS when MIXIP_TLS_DIR is set",
    )
    p.set_defaults(run=health)
