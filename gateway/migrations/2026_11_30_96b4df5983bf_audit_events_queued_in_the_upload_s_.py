"""audit events queued in the upload's commit (outbox)

Created 2026-11-30 03:17:05.232843
"""

import sqlalchemy as sa
from alembic import op

from mixip.runtime.db import UtcDateTime

revision = "96b4df5983bf"
down_revision = "0cc9a976f9c4"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_audit_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("event", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_until", UtcDateTime(), nullable=True),
        sa.Column("last_error", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("gateway_audit_outbox", schema=None) as batch_op:
        batch_op.create_index("ix_gateway_audit_outbox_account", ["account_id", "id"], unique=False)
        batch_op.create_index("ix_gateway_audit_outbox_due", ["lease_until"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("gateway_audit_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_gateway_audit_outbox_due")
        batch_op.drop_index("ix_gateway_audit_outbox_account")

    op.drop_table("gateway_audit_outbox")
