"""A service's database as an attacker holding the disk or a backup sees it (issue 17): every
byte it keeps on disk, to look for a talent's bytes after an erasure, and a copy as a backup
holds it, to restore after a vault rotation."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, MetaData, insert, select, text
from sqlalchemy.engine import URL, make_url

from mixip.runtime import migrations
from mixip.runtime.db import Database
from mixip.runtime.keys import LocalKeyWrapper, SealError
from mixip.runtime.vault import TalentKey, Vault, VaultKeys
from tests.support.databases import fresh_schema_url


def relation_files(connection: Connection, schemas: Sequence[str]) -> list[Path]:
    """Every file (all forks and segments) of every relation of these PostgreSQL schemas: their
    tables and indexes, the tables' TOAST tables and TOAST indexes; after a CHECKPOINT wrote what
    the server holds in memory out to them. The connection must be in AUTOCOMMIT, and the
    server's data directory readable (the suite runs as root next to the server)."""
    connection.execute(text("CHECKPOINT"))
    root = Path(connection.scalar(text("SHOW data_directory")))
    relations = connection.scalars(
        text(
            "WITH own AS (SELECT c.oid, c.reltoastrelid FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY(:schemas)),"
            " toast AS (SELECT reltoastrelid AS oid FROM own WHERE reltoastrelid <> 0)"
            " SELECT pg_relation_filepath(oid) FROM own"
            " UNION SELECT pg_relation_filepath(oid) FROM toast"
            " UNION SELECT pg_relation_filepath(indexrelid) FROM pg_index"
            " WHERE indrelid IN (SELECT oid FROM toast)"
        ),
        {"schemas": list(schemas)},
    ).all()
    listings: dict[Path, list[Path]] = {}
    files = []
    for relative in filter(None, relations):
        base = root / relative
        if base.parent not in listings:
            listings[base.parent] = list(base.parent.iterdir())
        files += [
            path
            for path in listings[base.parent]
            if path.name == base.name or path.name.startswith((f"{base.name}.", f"{base.name}_"))
        ]
    assert files, "no relation file found (else a scan of them proves nothing)"
    return files


def schema_dump(database: URL, schemas: Iterable[str]) -> bytes:
    """`pg_dump --data-only` of these schemas of the database."""
    pg_dump = shutil.which("pg_dump")
    assert pg_dump, "pg_dump is needed to read a dump"
    uri = database.set(drivername="postgresql", query={}).render_as_string(hide_password=False)
    command = [pg_dump, "--data-only", *[f"--schema={schema}" for schema in schemas], uri]
    return subprocess.run(command, capture_output=True, check=True).stdout


def database_bytes(db: Database) -> list[tuple[str, bytes]]:
    """Every byte of the database as it lies on disk, as (file name, bytes). SQLite: the database
    file and its -wal and -shm (those that exist). PostgreSQL: the relation files of the schema
    the database's URL selects, and its `pg_dump --data-only`."""
    if db.dialect == "sqlite":
        path = Path(str(make_url(db.url).database))
        files = [Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm")]
        return [(str(f), f.read_bytes()) for f in files if f.exists()]
    with db.engine.connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        schema = connection.scalar(text("SELECT current_schema()"))
        files = relation_files(connection, [schema])
    dump = schema_dump(db.engine.url, [schema])
    assert b"COPY" in dump, "the dump holds the schema's rows"
    return [(str(f), f.read_bytes()) for f in files] + [("pg_dump", dump)]


def found_in(chunks: list[tuple[str, bytes]], *needles: str | bytes) -> list[str]:
    """Which needles (strings as UTF-8) lie in which of the (name, bytes) chunks, as
    "'needle' in name"."""
    return [
        f"{needle!r} in {name}"
        for name, data in chunks
        for needle in needles
        if (needle.encode() if isinstance(needle, str) else needle) in data
    ]


def backup(
    db: Database,
    service: str,
    metadata: MetaData,
    tmp_path: Path,
    pg_test_database: URL | None,
    *,
    sequences: Sequence[tuple[str, str]] = (),
) -> Database:
    """A copy of the service's database as a backup holds it. SQLite: the online backup of the
    file. PostgreSQL: a fresh schema migrated to the same revision with every table's rows
    copied, and the (table, column) serial sequences set to go on after the copied rows, as a
    restored dump does."""
    if db.dialect == "sqlite":
        target = tmp_path / f"{service}-backup.db"
        source = db.engine.raw_connection()
        try:
            with sqlite3.connect(target) as copy:
                source.driver_connection.backup(copy)
        finally:
            source.close()
        return Database(f"sqlite:///{target}", metadata)
    assert pg_test_database is not None
    copy = Database(fresh_schema_url(pg_test_database, "backup"), metadata)
    migrations.upgrade(copy.url, service)
    with db.read() as source, copy.write() as session:
        for table in metadata.sorted_tables:
            rows = [dict(row) for row in source.execute(select(table)).mappings()]
            if rows:
                session.execute(insert(table), rows)
        for table_name, column in sequences:
            last = f"SELECT coalesce(max({column}), 0) + 1 FROM {table_name}"  # noqa: S608
            sequence = f"pg_get_serial_sequence('{table_name}', '{column}')"
            session.execute(text(f"SELECT setval({sequence}, ({last}), false)"))
    return copy


def keys_in_copy(
    copy: Database, vault: Vault, state_model: Any, key_model: Any, key_dir: Path
) -> dict[bytes, TalentKey]:
    """Every data key of a copy (a backup) that opens with what an attacker holding the copy
    and today's key directory has: the live vault's sealing key, or a sealing key of the copy's
    key version that some key file unwraps. By row ref, the ref the copy's rows carry. Every
    key row is tried, not only a guessed talent's: no lookup is needed to find them."""
    with copy.read() as session:
        state = session.get_one(state_model, 1)
        secrets = session.execute(select(key_model.lookup, key_model.sealed_secret)).all()
    sealing = [vault._keys.sealing]
    for path in sorted(key_dir.iterdir()):
        try:
            wrapper = LocalKeyWrapper(path)
            sealing.append(
                wrapper.unwrap(state.wrapped_sealing_key, vault._sealing_context(state.version))
            )
        except SealError:
            continue
    keys: dict[bytes, TalentKey] = {}
    for lookup, blob in secrets:
        for candidate in sealing:
            try:
                secret, _ = vault._open_sealed(
                    VaultKeys(state.version, candidate, b""), blob, lookup
                )
            except SealError:
                continue
            keys[TalentKey(secret).ref] = TalentKey(secret)
    return keys
