"""real BMCs: Redfish system path and TLS options, IPMI cipher suite, privilege and
Kg per node; boot device requests; validate and boot actions

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
LIVE = sa.text('deleted_at IS NULL')


def upgrade() -> None:
    # New actions. PostgreSQL 12+ allows this in a transaction; the values are
    # not used before the migration commits.
    op.execute("ALTER TYPE power_action ADD VALUE IF NOT EXISTS 'validate'")
    op.execute("ALTER TYPE power_action ADD VALUE IF NOT EXISTS 'boot'")
    op.add_column('nodes', sa.Column('bmc_system', sa.String(255), nullable=True))
    op.add_column(
        'nodes', sa.Column('verify_tls', sa.Boolean(), nullable=False, server_default=sa.true())
    )
    op.add_column('nodes', sa.Column('ca_bundle', sa.Text(), nullable=True))
    op.add_column(
        'nodes',
        sa.Column('ipmi_cipher_suite', sa.String(8), nullable=False, server_default='auto'),
    )
    op.add_column(
        'nodes',
        sa.Column('ipmi_privilege', sa.String(16), nullable=False, server_default='administrator'),
    )
    op.add_column('nodes', sa.Column('ipmi_kg_encrypted', sa.LargeBinary(), nullable=True))
    # One machine, one operation: a Redfish BMC may manage several systems, so the
    # endpoint is (address, port, system path).
    op.drop_index('uq_nodes_bmc_endpoint', table_name='nodes')
    op.create_index(
        'uq_nodes_bmc_endpoint', 'nodes',
        [sa.text('lower(bmc_address)'), 'bmc_port', sa.text("coalesce(bmc_system, '')")],
        unique=True, postgresql_where=LIVE,
    )
    op.add_column('power_requests', sa.Column('boot_device', sa.String(16), nullable=True))
    op.add_column(
        'power_requests',
        sa.Column('boot_persistent', sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column('power_requests', sa.Column('boot_set_at', TZ, nullable=True))


def downgrade() -> None:
    op.drop_column('power_requests', 'boot_set_at')
    op.drop_column('power_requests', 'boot_persistent')
    op.drop_column('power_requests', 'boot_device')
    op.drop_index('uq_nodes_bmc_endpoint', table_name='nodes')
    op.create_index(
        'uq_nodes_bmc_endpoint', 'nodes', [sa.text('lower(bmc_address)'), 'bmc_port'],
        unique=True, postgresql_where=LIVE,
    )
    for column in (
        'ipmi_kg_encrypted', 'ipmi_privilege', 'ipmi_cipher_suite', 'ca_bundle', 'verify_tls',
        'bmc_system',
    ):
        op.drop_column('nodes', column)
    # PostgreSQL cannot drop enum values: 'validate' and 'boot' stay in power_action,
    # unused (requests using them are deleted so 0002's code never reads one).
    op.execute("DELETE FROM power_requests WHERE action::text IN ('validate', 'boot')")
