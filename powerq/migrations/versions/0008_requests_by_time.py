"""requests by time: an index on power_requests (created_at DESC, id DESC), the
order of GET /v1/requests, so a page of the newest requests without a node filter
reads the index's first rows instead of sorting the whole history (the only other
index by time, ix_power_requests_node_created, leads with node_id)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from alembic import op
import sqlalchemy as sa

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_power_requests_created",
        "power_requests",
        [sa.text("created_at DESC"), sa.text("id DESC")],
    )


def downgrade() -> None:
    op.drop_index("ix_power_requests_created", table_name="power_requests")
