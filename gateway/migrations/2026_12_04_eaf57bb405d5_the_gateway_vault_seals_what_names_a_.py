"""the gateway vault seals what names a talent

Created 2026-12-04 22:02:23.951217

The clear columns stay (nullable): the gateway seals their rows at start-up and empties them
(gateway/seals.py). A downgrade cannot open what is sealed (the keys are the service's): the
sealed talent ids of results and intents, the notes and the queued audit events are lost (let
the audit outbox empty first: `mixip_gateway_audit_outbox_depth` at 0).
"""

import sqlalchemy as sa
from alembic import op

from mixip.runtime.db import UtcDateTime

revision = "eaf57bb405d5"
down_revision = "96b4df5983bf"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_talent_keys",
        sa.Column("lookup", sa.LargeBinary(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("sealed_secret", sa.LargeBinary(length=512), nullable=False),
        sa.Column("row_ref", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("lookup"),
        sa.UniqueConstraint("row_ref"),
    )
    with op.batch_alter_table("gateway_talent_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_gateway_talent_keys_account_id"), ["account_id"], unique=False
        )

    op.create_table(
        "gateway_vault_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kek_ref", sa.String(length=2048), nullable=False),
        sa.Column("wrapped_sealing_key", sa.LargeBinary(length=2048), nullable=False),
        sa.Column("wrapped_lookup_key", sa.LargeBinary(length=2048), nullable=False),
        sa.Column("rotated_at", UtcDateTime(), nullable=False),
        sa.Column("retired_kek_ref", sa.String(length=2048), nullable=True),
        sa.Column("rotation_due_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("gateway_audit_outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sealed_event", sa.LargeBinary(), nullable=True))
        batch_op.alter_column("event", existing_type=sa.LargeBinary(), nullable=True)

    with op.batch_alter_table("gateway_erasure_intents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("talent_ref", sa.LargeBinary(length=32), nullable=True))
        batch_op.add_column(sa.Column("sealed_talent_id", sa.LargeBinary(), nullable=True))

    with op.batch_alter_table("gateway_media_faces", schema=None) as batch_op:
        batch_op.add_column(sa.Column("talent_ref", sa.LargeBinary(length=32), nullable=True))
        batch_op.add_column(sa.Column("sealed_talent_id", sa.LargeBinary(), nullable=True))
        batch_op.drop_index(batch_op.f("ix_gateway_faces_talent"))
        batch_op.create_index(
            "ix_gateway_faces_talent_ref", ["account_id", "talent_ref"], unique=False
        )

    with op.batch_alter_table("gateway_review_decisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("note_ref", sa.LargeBinary(length=32), nullable=True))
        batch_op.add_column(sa.Column("sealed_note", sa.LargeBinary(), nullable=True))
        batch_op.alter_column("note", existing_type=sa.Text(), nullable=True)


def downgrade() -> None:
    op.execute("UPDATE gateway_review_decisions SET note = '' WHERE note IS NULL")
    op.execute("DELETE FROM gateway_audit_outbox WHERE event IS NULL")
    with op.batch_alter_table("gateway_review_decisions", schema=None) as batch_op:
        batch_op.alter_column("note", existing_type=sa.Text(), nullable=False)
        batch_op.drop_column("sealed_note")
        batch_op.drop_column("note_ref")

    with op.batch_alter_table("gateway_media_faces", schema=None) as batch_op:
        batch_op.drop_index("ix_gateway_faces_talent_ref")
        batch_op.create_index(
            batch_op.f("ix_gateway_faces_talent"), ["account_id", "talent_id"], unique=False
        )
        batch_op.drop_column("sealed_talent_id")
        batch_op.drop_column("talent_ref")

    with op.batch_alter_table("gateway_erasure_intents", schema=None) as batch_op:
        batch_op.drop_column("sealed_talent_id")
        batch_op.drop_column("talent_ref")

    with op.batch_alter_table("gateway_audit_outbox", schema=None) as batch_op:
        batch_op.alter_column("event", existing_type=sa.LargeBinary(), nullable=False)
        batch_op.drop_column("sealed_event")

    op.drop_table("gateway_vault_state")
    with op.batch_alter_table("gateway_talent_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gateway_talent_keys_account_id"))

    op.drop_table("gateway_talent_keys")
