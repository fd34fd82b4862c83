"""consent versions per account

`consent_account_versions`: each account's consent version, which every record and erasure
changes in its own transaction (`ConsentLedger`); the matcher caches answers under it. Every
account that has records gets a fresh version here, so an account without a row has never had
a record (its version is "", under which nothing is cached), and a matcher's answers cached
before a downgrade and this upgrade again never match the new version.

Created 2026-12-05 01:16:50.862620
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "f37ba14d8737"
down_revision = "3a8dc33aa723"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_account_versions",
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("account_id"),
    )
    op.execute(
        sa.text(
            "INSERT INTO consent_account_versions (account_id, version)"
            " SELECT DISTINCT account_id, :version FROM consent_records"
        ).bindparams(version=secrets.token_hex(16))
    )


def downgrade() -> None:
    op.drop_table("consent_account_versions")
