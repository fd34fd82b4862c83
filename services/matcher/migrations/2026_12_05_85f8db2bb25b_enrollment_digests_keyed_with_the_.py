"""enrollment digests keyed with the talent's key

Created 2026-12-05 01:10:12.382037

An enrollment's retry digest is keyed with the talent's data key (`keyed_digest`). The plain
digests stay, nullable, until the matcher deletes them at start (services/matcher/service.py
`seal_legacy_faces`: the image to key them again is gone). A downgrade deletes the keyed ones,
which an older matcher cannot compare: a retry of such an enrollment is then compared on its
talent.
"""

import sqlalchemy as sa
from alembic import op

revision = "85f8db2bb25b"
down_revision = "e08ba9ad8fde"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("matcher_face_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("keyed_digest", sa.String(length=64), nullable=True))
        batch_op.alter_column("digest", existing_type=sa.VARCHAR(length=64), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM matcher_face_requests WHERE digest IS NULL")
    with op.batch_alter_table("matcher_face_requests", schema=None) as batch_op:
        batch_op.alter_column("digest", existing_type=sa.VARCHAR(length=64), nullable=False)
        batch_op.drop_column("keyed_digest")
