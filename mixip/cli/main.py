"""`mixip [--data-dir DIR] [--json] [--gateway HOST:PORT] COMMAND ...`

Every command prints one JSON object with --json; errors are one line on stderr and a
non-zero exit code (1 failure, 2 usage or configuration, 3 audit log does not verify), never a
traceback.

Start-up stays fast (`mixip --version` and `--help` in well under 0.3 s): building the parser
imports only the command modules, which keep what is heavy (gRPC channels, OpenCV, NumPy,
SQLAlchemy, the services' code) inside the functions that use it;
tests/unit/cli/test_startup.py keeps it so.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixip.cli.output import CliError, Output
from mixip.runtime.config import ConfigError

if TYPE_CHECKING:  # the commands are imported when the parser is built, not for --version
    from mixip.cli.commands.parsing import Command
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
        conn.data_dir, gateway_port, tls=not args.insecure, replicas=replicas, web_port=web_port
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


def completion(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    """E.g. `eval "$(mixip completion bash)"` in ~/.bashrc."""
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("mixip-mesh")
    except importlib.metadata.PackageNotFoundError:  # running from a tree that is not installed
        return "unknown"


class _Version(argparse.Action):
    """`--version`, reading the installed version only when asked."""

    def __init__(
        self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any
    ) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        print(f"mixip {_version()}")
        parser.exit()


def demo(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    from mixip.cli.demo import run_demo, write_samples

    if args.samples:
        return write_samples(Path(args.samples), out)
    return run_demo(Path(args.out), out)


def _common_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--data-dir",
        default=default if suppress else "var",
        help="data directory of the mesh (default ./var)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print one JSON object",
    )
    parser.add_argument(
        "--gateway",
        default=default,
        metavar="HOST:PORT",
        help="gateway address (default: from DATA_DIR/mesh.json)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="development only: `up` runs the services plaintext on loopback (any local "
        "caller accepted); other commands may talk plaintext to a non-loopback gateway",
    )


def build_parser() -> argparse.ArgumentParser:
    from mixip.cli import commands

    parser = argparse.ArgumentParser(prog="mixip", description="Mix-IP clearance mesh")
    parser.add_argument("--version", action=_Version, help="print the version")
    _common_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, suppress=True)  # the same options, accepted after the command
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    p = sub.add_parser("completion", help="print a shell completion script")
    p.add_argument("shell", choices=["bash", "zsh", "tcsh"], help="the shell to complete in")
    p.set_defaults(run=completion)

    p = sub.add_parser("demo", parents=[common], help="the scripted scenario, start to end")
    p.add_argument("--out", default="var/demo", help="where to write the demo's images")
    p.add_argument(
        "--samples",
        metavar="DIR",
        help="only write the sample photos (face.jpg: one face; group.jpg: two) to DIR and exit",
    )
    p.set_defaults(run=demo)
    commands.register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv) == ["--version"]:  # without building the parser
        print(f"mixip {_version()}")
        return 0
    args = build_parser().parse_args(argv)
    out = Output(args.json)
    conn = Connection(Path(args.data_dir).expanduser().resolve(), args.gateway, args.insecure)
    try:
        from mixip.runtime import logs

        logs.settings()  # a bad log setting is a configuration error, for every command
        run: Command = args.run
        return run(args, conn, out)
    except CliError as exc:
        print(f"mixip: {exc}", file=sys.stderr)
        return exc.exit_code
    except ConfigError as exc:
        print(f"mixip: configuration: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        grpc = sys.modules.get("grpc")  # imported by whatever made the call, if any did
        if grpc is None or not isinstance(exc, grpc.RpcError):
            raise
        from mixip.cli.errors import rpc_error_line

        print(f"mixip: {rpc_error_line(exc, conn)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mixip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
