"""`mixip db upgrade [--service NAME]`: migrate the services' databases (an init step; services
also upgrade their own at start). Each database is found as its service finds it:
MIXIP_<SERVICE>_DATABASE_URL, else `<data dir>/<service>.db`, the data dir being --data-dir as for
`mixip up`."""

from __future__ import annotations

import argparse
import os

from mixip.cli.commands.parsing import Subparsers
from mixip.cli.output import CliError, Output
from mixip.runtime.config import SERVICES, ConfigError, Env, ServerConfig, variable
from mixip.runtime.connection import Connection


def database_urls(names: list[str], env: Env) -> dict[str, str]:
    """Every service's URL, all read before any is touched: a bad one changes nothing."""
    from sqlalchemy.exc import ArgumentError  # imported here: the rest of the CLI starts fast

    from mixip.runtime.db import database_url

    urls = {}
    for name in names:
        url = ServerConfig.load(name, env).database_url
        try:
            backend = database_url(url).get_backend_name()
        except ArgumentError:
            raise ConfigError(f"{variable(name, 'DATABASE_URL')} is not a database URL") from None
        if backend not in ("sqlite", "postgresql"):
            raise ConfigError(
                f"{variable(name, 'DATABASE_URL')}: {backend} is not supported "
                "(sqlite:// or postgresql://)"
            )
        urls[name] = url
    return urls


def upgrade(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    from sqlalchemy.exc import DBAPIError

    from mixip.runtime import migrations

    if args.service and args.service not in SERVICES:
        raise CliError(f"unknown service {args.service!r}: one of {', '.join(SERVICES)}", 2)
    names = [args.service] if args.service else list(SERVICES)
    env = Env({**os.environ, "MIXIP_DATA_DIR": str(conn.data_dir)})
    report, lines = {}, []
    for name, url in database_urls(names, env).items():
        try:
            applied = migrations.upgrade(url, name)
        except DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            raise CliError(f"{name} database: {reason}") from None
        except OSError as exc:  # a SQLite file that cannot be made or opened
            raise CliError(f"{name} database: {exc.strerror}: {exc.filename}") from None
        head = migrations.revisions(name)[-1]
        report[name] = {"revision": head, "applied": applied}
        done = f"applied {', '.join(applied)}" if applied else "already there"
        lines.append(f"{name:10} at {head} ({done})")
    out.result({"services": report}, lines)
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    db = sub.add_parser("db", help="the services' databases").add_subparsers(
        dest="action", required=True
    )
    p = db.add_parser(
        "upgrade", parents=[common], help="migrate the databases to the latest schema"
    )
    p.add_argument("--service", metavar="NAME", help=f"only this one ({', '.join(SERVICES)})")
    p.set_defaults(run=upgrade)
