"""analysis jobs with leases

Created 2026-12-05 01:26:10.885449

A new table (gateway/jobs.py); its downgrade drops it, and with it the jobs still queued:
their stored bytes become orphans the sweep deletes.
"""

import sqlalchemy as sa
from alembic import op

from mixip.runtime.db import UtcDateTime

revision = "653f41e1c819"
down_revision = "e63e3468348c"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_jobs",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=128), nullable=False),
        sa.Column("media_id", sa.String(length=64), nullable=False),
        sa.Column("started_by_account_id", sa.String(length=64), nullable=False),
        sa.Column("started_by_key_id", sa.String(length=32), nullable=False),
        sa.Column("filename_ref", sa.LargeBinary(length=32), nullable=True),
        sa.Column("sealed_filename", sa.LargeBinary(), nullable=True),
        sa.Column("content_type", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("storage_key", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("digest", sa.String(length=64), nullable=True),
        sa.Column("state", sa.SmallInteger(), nullable=False),
        sa.Column("frames_done", sa.BigInteger(), nullable=False),
        sa.Column("frames_total", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(length=64), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", UtcDateTime(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("job_id"),
        sa.UniqueConstraint("media_id"),
    )
    with op.batch_alter_table("gateway_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_gateway_jobs_due", ["state", "lease_until"], unique=False)
        batch_op.create_index("ix_gateway_jobs_finished", ["finished_at"], unique=False)
        batch_op.create_index(
            "ix_gateway_jobs_project",
            ["account_id", "project_id", "created_at", "job_id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_gateway_jobs_storage_key"), ["storage_key"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("gateway_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gateway_jobs_storage_key"))
        batch_op.drop_index("ix_gateway_jobs_project")
        batch_op.drop_index("ix_gateway_jobs_finished")
        batch_op.drop_index("ix_gateway_jobs_due")

    op.drop_table("gateway_jobs")
