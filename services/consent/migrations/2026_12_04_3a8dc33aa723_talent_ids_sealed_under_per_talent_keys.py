"""talent ids sealed under per-talent keys

The consent vault's tables, and `talent_ref` + `sealed_talent_id` beside the clear `talent_id`
of records and outbox rows, which becomes nullable: the service seals the rows it finds in
clear at start-up (`ConsentLedger.seal_legacy`) and sets their `talent_id` to NULL.

A downgrade cannot unseal (the keys are the service's, not the migration's): it drops the
sealed columns, so rows sealed meanwhile keep a NULL `talent_id` and name no talent (the older
code lists them without one and never finds them by talent). Restore a backup rather than
downgrade past this revision a database that holds consents.

Created 2026-12-04 22:03:28.582498
"""

import sqlalchemy as sa
from alembic import op

from mixip.runtime.db import UtcDateTime

revision = "3a8dc33aa723"
down_revision = "b0620074e9b9"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_talent_keys",
        sa.Column("lookup", sa.LargeBinary(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("sealed_secret", sa.LargeBinary(length=512), nullable=False),
        sa.Column("row_ref", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("lookup"),
        sa.UniqueConstraint("row_ref"),
    )
    with op.batch_alter_table("consent_talent_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_consent_talent_keys_account_id"), ["account_id"], unique=False
        )

    op.create_table(
        "consent_vault_state",
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
    with op.batch_alter_table("consent_outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("talent_ref", sa.LargeBinary(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("sealed_talent_id", sa.LargeBinary(length=256), nullable=True)
        )
        batch_op.alter_column("talent_id", existing_type=sa.VARCHAR(length=128), nullable=True)
        batch_op.drop_index(batch_op.f("ix_consent_outbox_talent"))
        batch_op.create_index(
            "ix_consent_outbox_talent", ["account_id", "talent_ref"], unique=False
        )

    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("talent_ref", sa.LargeBinary(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("sealed_talent_id", sa.LargeBinary(length=256), nullable=True)
        )
        batch_op.alter_column("talent_id", existing_type=sa.VARCHAR(length=128), nullable=True)
        batch_op.drop_index(batch_op.f("ix_consent_timeline"))
        batch_op.create_index(
            "ix_consent_timeline",
            ["account_id", "talent_ref", "scope", "project_id", "sequence"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        batch_op.drop_index("ix_consent_timeline")
        batch_op.create_index(
            batch_op.f("ix_consent_timeline"),
            ["account_id", "talent_id", "scope", "project_id", "sequence"],
            unique=False,
        )
        batch_op.drop_column("sealed_talent_id")
        batch_op.drop_column("talent_ref")

    with op.batch_alter_table("consent_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_consent_outbox_talent")
        batch_op.create_index(
            batch_op.f("ix_consent_outbox_talent"), ["account_id", "talent_id"], unique=False
        )
        batch_op.drop_column("sealed_talent_id")
        batch_op.drop_column("talent_ref")

    op.drop_table("consent_vault_state")
    with op.batch_alter_table("consent_talent_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consent_talent_keys_account_id"))

    op.drop_table("consent_talent_keys")
