"""talent ids and vectors sealed under per-talent keys

Created 2026-12-04 22:01:48.707730

The matcher's vault (its state row and the talents' data keys), and each face's talent id and
vector sealed under its talent's key (`sealed`), found by `talent_ref`. The clear columns stay,
nullable, for the rows enrolled before: the matcher seals those at start and clears them (a
migration holds no keys). Downgrading deletes the sealed faces: their talent ids cannot be
written back in clear, and an older release could not read them.
"""

import sqlalchemy as sa
from alembic import op

from mixip.runtime.db import UtcDateTime

revision = "e08ba9ad8fde"
down_revision = "23af0c4eb29c"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "matcher_talent_keys",
        sa.Column("lookup", sa.LargeBinary(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("sealed_secret", sa.LargeBinary(length=512), nullable=False),
        sa.Column("row_ref", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("lookup"),
        sa.UniqueConstraint("row_ref"),
    )
    with op.batch_alter_table("matcher_talent_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_matcher_talent_keys_account_id"), ["account_id"], unique=False
        )

    op.create_table(
        "matcher_vault_state",
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
    with op.batch_alter_table("matcher_faces", schema=None) as batch_op:
        batch_op.add_column(sa.Column("talent_ref", sa.LargeBinary(length=32), nullable=True))
        batch_op.add_column(sa.Column("sealed", sa.LargeBinary(length=4096), nullable=True))
        batch_op.alter_column("talent_id", existing_type=sa.VARCHAR(length=128), nullable=True)
        batch_op.drop_index(batch_op.f("ix_matcher_faces_talent"))
        batch_op.create_index(
            "ix_matcher_faces_talent_ref", ["account_id", "talent_ref"], unique=False
        )


def downgrade() -> None:
    sealed = "SELECT face_id FROM matcher_faces WHERE talent_id IS NULL"
    op.execute(f"DELETE FROM matcher_face_requests WHERE face_id IN ({sealed})")  # noqa: S608
    op.execute("DELETE FROM matcher_faces WHERE talent_id IS NULL")
    with op.batch_alter_table("matcher_faces", schema=None) as batch_op:
        batch_op.drop_index("ix_matcher_faces_talent_ref")
        batch_op.create_index(
            batch_op.f("ix_matcher_faces_talent"), ["account_id", "talent_id"], unique=False
        )
        batch_op.alter_column("talent_id", existing_type=sa.VARCHAR(length=128), nullable=False)
        batch_op.drop_column("sealed")
        batch_op.drop_column("talent_ref")

    op.drop_table("matcher_vault_state")
    with op.batch_alter_table("matcher_talent_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_matcher_talent_keys_account_id"))

    op.drop_table("matcher_talent_keys")
