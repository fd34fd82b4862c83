"""Alembic's environment for every service: see mixip/runtime/migrations.py."""

from alembic import context

from mixip.runtime.migrations import configure

configure(context)
