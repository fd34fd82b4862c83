"""webhook endpoints and their deliveries

gateway_webhooks: an account's endpoints (URL, event types, sealed signing secrets);
gateway_webhook_deliveries: the events owed to them, an outbox claimed with leases and purged
after the retention period (gateway/webhooks.py). No row exists before this revision.

Created 2026-12-05 01:09:03.226245
"""

import sqlalchemy as sa
from alembic import op

from mixip.runtime.db import UtcDateTime

revision = "2f72e53f31f7"
down_revision = "138e00d72666"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_webhooks",
        sa.Column("webhook_id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("event_types", sa.String(length=256), nullable=False),
        sa.Column("sealed_secret", sa.LargeBinary(), nullable=False),
        sa.Column("sealed_previous_secret", sa.LargeBinary(), nullable=True),
        sa.Column("previous_expires_at", UtcDateTime(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("disabled_at", UtcDateTime(), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("rotation_request_id", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("webhook_id"),
    )
    with op.batch_alter_table("gateway_webhooks", schema=None) as batch_op:
        batch_op.create_index(
            "ix_gateway_webhooks_account", ["account_id", "created_at", "webhook_id"], unique=False
        )
        batch_op.create_index(
            "ix_gateway_webhooks_request", ["account_id", "request_id"], unique=True
        )

    op.create_table(
        "gateway_webhook_deliveries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("message_id", sa.String(length=32), nullable=False),
        sa.Column("webhook_id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("due_at", UtcDateTime(), nullable=True),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.Column("last_outcome", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["webhook_id"], ["gateway_webhooks.webhook_id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("gateway_webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_gateway_webhook_deliveries_due", ["state", "due_at"], unique=False
        )
        batch_op.create_index(
            "ix_gateway_webhook_deliveries_finished", ["finished_at"], unique=False
        )
        batch_op.create_index(
            "ix_gateway_webhook_deliveries_webhook", ["webhook_id", "state"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("gateway_webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_gateway_webhook_deliveries_webhook")
        batch_op.drop_index("ix_gateway_webhook_deliveries_finished")
        batch_op.drop_index("ix_gateway_webhook_deliveries_due")

    op.drop_table("gateway_webhook_deliveries")
    with op.batch_alter_table("gateway_webhooks", schema=None) as batch_op:
        batch_op.drop_index("ix_gateway_webhooks_request")
        batch_op.drop_index("ix_gateway_webhooks_account")

    op.drop_table("gateway_webhooks")
