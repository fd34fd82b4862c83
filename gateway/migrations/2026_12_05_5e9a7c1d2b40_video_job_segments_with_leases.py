"""video job segments with leases

Created 2026-12-05 04:40:00

A new table (gateway/jobs.py, docs/jobs.md#segments): a video job's time segments, each
analysed by one matcher call under its own lease. Its downgrade drops it; a job running then
plans its segments again on its next attempt (or runs whole on the older code).
"""

import sqlalchemy as sa
from alembic import op

from mixip.runtime.db import UtcDateTime

revision = "5e9a7c1d2b40"
down_revision = "653f41e1c819"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_job_segments",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("segment_index", sa.Integer(), nullable=False),
        sa.Column("start_seconds", sa.Float(), nullable=False),
        sa.Column("end_seconds", sa.Float(), nullable=False),
        sa.Column("frames_expected", sa.BigInteger(), nullable=False),
        sa.Column("frames_done", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.SmallInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("replica", sa.String(length=128), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "segment_index"),
    )


def downgrade() -> None:
    op.drop_table("gateway_job_segments")
