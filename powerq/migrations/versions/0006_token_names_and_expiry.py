"""token names and expiry: a live (not revoked) token's name is unique, and a
token may carry an expiry time

Live tokens that already share a name keep the oldest one's name; each later
one is renamed ``<name>#<id>`` (cut to 128 characters), so the index can be
built without revoking anybody. ``#`` is not allowed in a name the API
accepts, so the new name cannot be one that a live token already has. Their holders keep working; only the actor
recorded for them from now on changes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_RENAME_LATER_DUPLICATES = """
UPDATE api_tokens AS t
SET name = left(t.name, 127 - length(t.id::text)) || '#' || t.id
WHERE t.revoked_at IS NULL
  AND EXISTS (
    SELECT 1 FROM api_tokens AS older
    WHERE older.name = t.name AND older.revoked_at IS NULL AND older.id < t.id
  )
"""


def upgrade() -> None:
    op.add_column(
        "api_tokens", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.execute(_RENAME_LATER_DUPLICATES)
    op.create_index(
        "uq_api_tokens_live_name",
        "api_tokens",
        ["name"],
        unique=True,
        postgresql_where=sa.text("revoked_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_api_tokens_live_name", table_name="api_tokens")
    op.drop_column("api_tokens", "expires_at")
