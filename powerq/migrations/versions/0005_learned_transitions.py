"""learned transitions: a partial index on the success events that record how long
a verified on/off took, so a claim reads a node's last ten without scanning the
rest of its history

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_power_events_learned",
        "power_events",
        ["node_id", "created_at"],
        postgresql_where=sa.text("kind = 'succeeded' AND detail ? 'took_s'"),
    )


def downgrade() -> None:
    op.drop_index("ix_power_events_learned", table_name="power_events")
