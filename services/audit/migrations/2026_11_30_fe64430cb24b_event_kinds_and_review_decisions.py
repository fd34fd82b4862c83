"""event kinds and review decisions

Each audit event says what it records: `kind` (1 = a match, 2 = a producer's review decision)
and, for a review decision, `decision` (common.proto's ReviewDecision). Events recorded before
read as matches without a decision (the server defaults), and their hashes do not cover either
column (services/audit/domain.py), so every existing chain still verifies. On PostgreSQL the
columns reach every partition of audit_events; a constant default makes ADD COLUMN a catalog
change, not a rewrite.

Created 2026-11-30 03:16:39.153314
"""

import sqlalchemy as sa
from alembic import op

revision = "fe64430cb24b"
down_revision = "7c1d2e9a4b60"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.SmallInteger(), server_default=sa.text("1"), nullable=False)
        )
        batch_op.add_column(
            sa.Column("decision", sa.SmallInteger(), server_default=sa.text("0"), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_column("decision")
        batch_op.drop_column("kind")
