"""lane leases: agents (one per host, with a heartbeat) and the lease each lane's
consumer holds (owner, fencing number, expiry), so that no lane has two
consumers and a dead host's lanes are taken over; on power_requests, the lane
and lane fence of the worker that last claimed each request

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("incarnation", UUID(as_uuid=True), nullable=False),
        sa.Column("auto", sa.Boolean(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "lane_leases",
        sa.Column("lane", sa.Integer(), primary_key=True),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("incarnation", UUID(as_uuid=True), nullable=False),
        sa.Column("fence", sa.BigInteger(), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("lane >= 0", name="ck_lane_leases_lane"),
    )
    op.add_column("power_requests", sa.Column("lane", sa.Integer(), nullable=True))
    op.add_column("power_requests", sa.Column("lane_fence", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("power_requests", "lane_fence")
    op.drop_column("power_requests", "lane")
    op.drop_table("lane_leases")
    op.drop_table("agents")
