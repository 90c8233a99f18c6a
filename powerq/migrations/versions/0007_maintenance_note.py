"""maintenance note: why a node is in maintenance, who put it there and since when

Nodes already in maintenance keep it, with no reason, actor or time (nothing
recorded them).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("nodes", sa.Column("maintenance_reason", sa.Text(), nullable=True))
    op.add_column("nodes", sa.Column("maintenance_by", sa.Text(), nullable=True))
    op.add_column("nodes", sa.Column("maintenance_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("nodes", "maintenance_since")
    op.drop_column("nodes", "maintenance_by")
    op.drop_column("nodes", "maintenance_reason")
