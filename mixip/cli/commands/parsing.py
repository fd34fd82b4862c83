"""The types every command module shares: the `mixip` parser's subcommands and a command."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeAlias

from mixip.cli.output import Output
from mixip.runtime.connection import Connection

# What `add_subparsers` returns (generic only to the type checker).
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
# What `set_defaults(run=...)` names: the parsed arguments in, the exit code out.
Command: TypeAlias = Callable[[argparse.Namespace, Connection, Output], int]
