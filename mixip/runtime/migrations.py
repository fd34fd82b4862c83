"""Alembic schema migrations: one history per service, since each owns its database.

Each service's revisions live beside its models (`services/<name>/migrations/`,
`gateway/migrations/`); the environment (`mixip/runtime/alembic/env.py`) is shared. `upgrade`
runs at every service start and in `mixip db upgrade`, inside one transaction that holds the
database's migration lock, so replicas starting together apply each revision once. See
docs/migrations.md.

Developer commands (scratch SQLite, never a configured database):
`python -m mixip.runtime.migrations check` (drift between models and revisions, `make lint`) and
`python -m mixip.runtime.migrations revision SERVICE MESSAGE` (`make migration`).
"""

from __future__ import annotations

import importlib
import logging
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.autogenerate.api import AutogenContext
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import Connection, MetaData, inspect, text

from mixip.runtime import logs
from mixip.runtime.db import _SQLITE_BEGIN, UtcDateTime, create_db_engine

logger = logging.getLogger("mixip.migrations")
# Alembic's own INFO lines (dialect, DDL mode, each step) would repeat at every start what the
# one "schema upgraded" line says.
logging.getLogger("alembic").setLevel(logging.WARNING)

# The module holding each service's models (its declarative `Base`); revisions sit beside it.
MODELS = {
    "gateway": "gateway.store",
    "matcher": "services.matcher.store",
    "consent": "services.consent.store",
    "audit": "services.audit.store",
    "retention": "services.retention.store",
}
# Tables in a service's database that its models do not own: each retention replica's
# APScheduler job store (services/retention/schedule.py, job_store_table), and the audit log's
# monthly partitions on PostgreSQL (made and dropped by the service: services/audit/store.py).
NOT_OURS = {"retention": "retention_jobs_", "audit": "audit_events_"}
# pg_advisory_xact_lock key taken by every upgrade (advisory locks are per database).
LOCK_KEY = 4242001
ENVIRONMENT = Path(__file__).with_name("alembic")


def metadata(service: str) -> MetaData:
    found: MetaData = importlib.import_module(MODELS[service]).Base.metadata
    return found


def versions_dir(service: str) -> Path:
    module_file = importlib.import_module(MODELS[service]).__file__
    assert module_file is not None  # a module of ours, loaded from a file
    return Path(module_file).with_name("migrations")


def config(service: str, connection: Connection | None = None, **attributes: Any) -> Config:
    """Alembic's configuration for `service`, in code (no alembic.ini to ship or find)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(ENVIRONMENT))
    cfg.set_main_option("version_locations", str(versions_dir(service)))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(rev)s_%%(slug)s")
    cfg.attributes.update(service=service, connection=connection, **attributes)
    return cfg


def revisions(service: str) -> list[str]:
    """The service's revisions, first to head (one line of history, no branches)."""
    script = ScriptDirectory.from_config(config(service))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def configure(context: EnvironmentContext) -> None:
    """What env.py runs: migrations on the connection the caller holds (never offline)."""
    cfg = context.config
    service, connection = cfg.attributes["service"], cfg.attributes["connection"]
    if connection is None:
        raise RuntimeError("migrations run on a connection: use mixip.runtime.migrations")
    context.configure(
        connection=connection,
        target_metadata=metadata(service),
        render_as_batch=True,  # SQLite alters tables by copying them
        include_name=_include_name(service),
        include_object=_include_object(connection.dialect.name),
        render_item=_render_item,
        on_version_apply=cfg.attributes.get("on_version_apply", ()),
    )
    with context.begin_transaction():
        context.run_migrations()


@contextmanager
def locked(url: str) -> Iterator[Connection]:
    """One transaction holding the database's migration lock: a PostgreSQL advisory lock, or
    SQLite's exclusive lock. Foreign keys are off on SQLite meanwhile, so a table that a batch
    operation copies does not cascade deletes into the tables that reference it."""
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                # Outside any transaction, where SQLite honours it (the pool is ours alone).
                driver = connection.connection.driver_connection
                assert driver is not None  # a checked-out connection
                driver.execute("PRAGMA foreign_keys=OFF")
                connection = connection.execution_options(**{_SQLITE_BEGIN: "EXCLUSIVE"})
            with connection.begin():
                if engine.dialect.name == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY}
                    )
                yield connection
                if engine.dialect.name == "sqlite":
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"a migration broke foreign keys: {broken[:5]}")
    finally:
        engine.dispose()


def upgrade(url: str, service: str, target: str = "head") -> list[str]:
    """Brings `service`'s database at `url` to `target` under the migration lock; returns the
    revisions applied, oldest first (none when it was there already). A database made by
    `create_all` before migrations existed (its tables, no version) is first stamped at the
    first revision, which is that schema."""
    applied: list[str] = []

    def record(*, step: Any, **_: Any) -> None:
        if not step.is_stamp:
            applied.append(step.up_revision_id)

    with locked(url) as connection:
        cfg = config(service, connection, on_version_apply=record)
        if _made_before_migrations(connection, service):
            command.stamp(cfg, revisions(service)[0])
            logs.log(logger, "schema stamped", service=service, revision=revisions(service)[0])
        command.upgrade(cfg, target)
    if applied:
        logs.log(logger, "schema upgraded", service=service, revisions=",".join(applied))
    return applied


def downgrade(url: str, service: str, target: str) -> None:
    """Takes the database back to revision `target` (tests walk every step both ways)."""
    with locked(url) as connection:
        command.downgrade(config(service, connection), target)


def drift(url: str, service: str) -> list[Any]:
    """What autogenerate would change for the database to match the models (empty: none)."""
    with locked(url) as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "include_name": _include_name(service),
                "include_object": _include_object(connection.dialect.name),
                "render_as_batch": True,
            },
        )
        differences: list[Any] = compare_metadata(context, metadata(service))
        return differences


def _made_before_migrations(connection: Connection, service: str) -> bool:
    if MigrationContext.configure(connection).get_current_revision() is not None:
        return False
    existing = set(inspect(connection).get_table_names())
    return bool(existing & set(metadata(service).tables))


def _include_name(service: str) -> Callable[..., bool]:
    prefix = NOT_OURS.get(service)

    def include(name: str | None, type_: str, parent_names: Any) -> bool:
        return not (type_ == "table" and prefix and name and name.startswith(prefix))

    return include


def _include_object(dialect: str) -> Callable[..., bool]:
    """An index or constraint of the models made on one database only (`ddl_if(dialect=...)`:
    the audit log's keys differ on partitioned PostgreSQL) is compared on that database only."""

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        rule = getattr(obj, "_ddl_if", None)
        if reflected or rule is None or rule.dialect is None:
            return True
        return dialect in ((rule.dialect,) if isinstance(rule.dialect, str) else rule.dialect)

    return include


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Our own column types render as an import of their module, so revisions load."""
    if type_ == "type" and isinstance(obj, UtcDateTime):
        autogen_context.imports.add("from mixip.runtime.db import UtcDateTime")
        return "UtcDateTime()"
    return False


@contextmanager
def _scratch(service: str) -> Iterator[str]:
    """A throwaway SQLite database at the service's head revision."""
    with tempfile.TemporaryDirectory(prefix="mixip-migrations-") as directory:
        url = f"sqlite:///{Path(directory) / (service + '.db')}"
        upgrade(url, service)
        yield url


def check() -> int:
    """Exit status 1 when some service's models differ from its revisions at head."""
    failed = 0
    for service in MODELS:
        with _scratch(service) as url:
            changes = drift(url, service)
        for change in changes:
            print(f"{service}: the models differ from the migrations: {change}", file=sys.stderr)
        failed |= bool(changes)
    if failed:
        print("add a revision: make migration SERVICE=<name> MESSAGE=<what>", file=sys.stderr)
    return int(failed)


def revision(service: str, message: str) -> str:
    """Autogenerates the service's next revision (review it before committing); its path."""
    with _scratch(service) as url, locked(url) as connection:
        cfg = config(service, connection)
        for key, value in {
            "hooks": "ruff_format, ruff_fix",
            "ruff_fix.type": "module",
            "ruff_fix.module": "ruff",
            "ruff_fix.options": "check --fix --quiet REVISION_SCRIPT_FILENAME",
            "ruff_format.type": "module",
            "ruff_format.module": "ruff",
            "ruff_format.options": "format --quiet REVISION_SCRIPT_FILENAME",
        }.items():
            cfg.set_section_option("post_write_hooks", key, value)
        script = command.revision(cfg, message=message, autogenerate=True)
    assert isinstance(script, Script)  # one revision, one script
    return script.path


def main(argv: list[str]) -> int:
    if argv[:1] == ["check"] and len(argv) == 1:
        return check()
    if argv[:1] == ["revision"] and len(argv) == 3 and argv[1] in MODELS and argv[2].strip():
        print(revision(argv[1], argv[2]))
        return 0
    print(
        "usage: python -m mixip.runtime.migrations check | revision SERVICE MESSAGE\n"
        f"  SERVICE: {', '.join(MODELS)}",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
