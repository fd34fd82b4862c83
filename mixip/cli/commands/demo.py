"""`mixip demo`: the scripted scenario, start to end (mixip/cli/demo.py), or only its sample
photos."""

from __future__ import annotations

import argparse
from pathlib import Path

from mixip.cli.commands.parsing import Subparsers
from mixip.cli.output import Output
from mixip.runtime.connection import Connection


def demo(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    from mixip.cli.demo import run_demo, write_samples

    if args.samples:
        return write_samples(Path(args.samples), out)
    return run_demo(Path(args.out), out)


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """`mixip demo`."""
    p = sub.add_parser("demo", parents=[common], help="the scripted scenario, start to end")
    p.add_argument("--out", default="var/demo", help="where to write the demo's images")
    p.add_argument(
        "--samples",
        metavar="DIR",
        help="only write the sample photos (face.jpg: one face; group.jpg: two) to DIR and exit",
    )
    p.set_defaults(run=demo)
