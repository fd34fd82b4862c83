"""Alembic's environment for every service: see mixip/runtime/migrations.py."""

from typing import cast

from alembic import context
from alembic.runtime.environment import EnvironmentContext

from mixip.runtime.migrations import configure

configure(cast(EnvironmentContext, context))
