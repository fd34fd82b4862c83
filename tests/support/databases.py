"""The databases the suite runs on: SQLite always, PostgreSQL when MIXIP_TEST_DATABASE_URL
names a server (CI always sets it)."""

from __future__ import annotations

import os
import uuid

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

PG_ADMIN_URL = os.environ.get("MIXIP_TEST_DATABASE_URL", "")
BACKENDS = ["sqlite", "postgresql"] if PG_ADMIN_URL else ["sqlite"]


def fresh_schema_url(database: URL, service: str) -> str:
    """A new, empty schema in `database`, as a URL that selects it through search_path."""
    schema = f"{service}_{uuid.uuid4().hex[:10]}"
    engine = create_engine(database, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    url = database.update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)
