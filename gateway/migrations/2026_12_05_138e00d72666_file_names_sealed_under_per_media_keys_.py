"""file names sealed under per-media keys, keyed retry digests

Created 2026-12-05 01:10:11.600633

A media's file name is sealed under the media's own key (`filename_ref`, `sealed_filename`), and
a review decision's retry digest is keyed (`keyed_digest`). The clear columns stay, nullable: the
gateway seals the names and keys the digests again at start-up, then empties them
(gateway/seals.py; a migration holds no keys). A downgrade cannot open what is sealed: the file
names become blank and the keyed digests go (an older gateway then takes a retry of such a
decision as it stands).
"""

import sqlalchemy as sa
from alembic import op

revision = "138e00d72666"
down_revision = "eaf57bb405d5"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gateway_media", schema=None) as batch_op:
        batch_op.add_column(sa.Column("filename_ref", sa.LargeBinary(length=32), nullable=True))
        batch_op.add_column(sa.Column("sealed_filename", sa.LargeBinary(), nullable=True))
        batch_op.alter_column("filename", existing_type=sa.VARCHAR(length=255), nullable=True)

    with op.batch_alter_table("gateway_review_decisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("keyed_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.execute("UPDATE gateway_media SET filename = '' WHERE filename IS NULL")
    with op.batch_alter_table("gateway_review_decisions", schema=None) as batch_op:
        batch_op.drop_column("keyed_digest")

    with op.batch_alter_table("gateway_media", schema=None) as batch_op:
        batch_op.alter_column("filename", existing_type=sa.VARCHAR(length=255), nullable=False)
        batch_op.drop_column("sealed_filename")
        batch_op.drop_column("filename_ref")
