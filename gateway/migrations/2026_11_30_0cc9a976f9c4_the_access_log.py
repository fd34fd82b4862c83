"""the access log

gateway_access_log: one row per call to the client port (gateway/access_log.py), numbered by
an auto-incrementing sequence, with indexes to list an account's entries (as caller and as
owner) and to purge the oldest first. No row exists before this revision.

Created 2026-11-30 03:19:40.917097
"""

import sqlalchemy as sa
from alembic import op

from mixip.runtime.db import UtcDateTime

revision = "0cc9a976f9c4"
down_revision = "c11fcb72e8e3"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_access_log",
        sa.Column(
            "sequence",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("owner_account_id", sa.String(length=64), nullable=False),
        sa.Column("api_key_id", sa.String(length=32), nullable=False),
        sa.Column("peer", sa.String(length=128), nullable=False),
        sa.Column("rpc", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=128), nullable=False),
        sa.Column("media_id", sa.String(length=128), nullable=False),
        sa.Column("status_code", sa.String(length=32), nullable=False),
        sa.Column("occurred_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sequence"),
    )
    with op.batch_alter_table("gateway_access_log", schema=None) as batch_op:
        batch_op.create_index(
            "ix_gateway_access_log_account", ["account_id", "sequence"], unique=False
        )
        batch_op.create_index(
            "ix_gateway_access_log_owner", ["owner_account_id", "sequence"], unique=False
        )
        batch_op.create_index(
            "ix_gateway_access_log_time", ["occurred_at", "sequence"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("gateway_access_log", schema=None) as batch_op:
        batch_op.drop_index("ix_gateway_access_log_time")
        batch_op.drop_index("ix_gateway_access_log_owner")
        batch_op.drop_index("ix_gateway_access_log_account")

    op.drop_table("gateway_access_log")
