"""`mixip [--data-dir DIR] [--json] [--gateway HOST:PORT] COMMAND ...`

Every command prints one JSON object with --json; errors are one line on stderr and a
non-zero exit code (1 failure, 2 usage or configuration, 3 audit log does not verify), never a
traceback.

Start-up stays fast (`mixip --version` and `--help` in well under 0.3 s): building the parser
imports only the command modules (mixip/cli/commands/, one per noun), which keep what is heavy
(gRPC channels, OpenCV, NumPy, SQLAlchemy, the services' code) inside the functions that use it;
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
from mixip.runtime.connection import Connection

if TYPE_CHECKING:  # the commands are imported when the parser is built, not for --version
    from mixip.cli.commands.parsing import Command


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
