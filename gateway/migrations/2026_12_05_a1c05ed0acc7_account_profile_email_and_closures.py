"""account profile email and closures

Created 2026-12-05 04:50:00

An account's contact email (sealed under its own data key) and when it was closed; the
closures' journal and receipts (gateway/closures.py). The downgrade drops them: an open closure
is then no longer resumed (its account's keys stay revoked).
"""

import sqlalchemy as sa
from alembic import op

from mixip.runtime.db import UtcDateTime

revision = "a1c05ed0acc7"
down_revision = "5e9a7c1d2b40"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gateway_accounts") as batch:
        batch.add_column(sa.Column("email_ref", sa.LargeBinary(length=32), nullable=True))
        batch.add_column(sa.Column("sealed_email", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("closed_at", UtcDateTime(), nullable=True))
    op.create_table(
        "gateway_account_closures",
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("receipt_id", sa.String(length=32), nullable=False),
        sa.Column("requested_by_key_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("pending_objects", sa.Text(), nullable=True),
        sa.Column("talents_erased", sa.Integer(), nullable=False),
        sa.Column("steps", sa.Text(), nullable=False),
        sa.Column("completed_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("account_id"),
        sa.UniqueConstraint("receipt_id"),
    )


def downgrade() -> None:
    op.drop_table("gateway_account_closures")
    with op.batch_alter_table("gateway_accounts") as batch:
        batch.drop_column("closed_at")
        batch.drop_column("sealed_email")
        batch.drop_column("email_ref")
