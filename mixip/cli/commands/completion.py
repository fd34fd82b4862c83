"""`mixip completion bash|zsh|tcsh`: a shell completion script for the whole parser."""

from __future__ import annotations

import argparse

from mixip.cli.commands.parsing import Subparsers
from mixip.cli.output import Output
from mixip.runtime.connection import Connection


def completion(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    """E.g. `eval "$(mixip completion bash)"` in ~/.bashrc."""
    import shtab

    from mixip.cli.main import build_parser

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """`mixip completion`."""
    p = sub.add_parser("completion", help="print a shell completion script")
    p.add_argument("shell", choices=["bash", "zsh", "tcsh"], help="the shell to complete in")
    p.set_defaults(run=completion)
