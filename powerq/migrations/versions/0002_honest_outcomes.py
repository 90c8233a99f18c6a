"""honest outcomes: one node per BMC endpoint, soft delete, acknowledgement and
evidence of commands, batch deadlines, idempotency fingerprints

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
LIVE = sa.text('deleted_at IS NULL')


def _refuse_duplicate_endpoints() -> None:
    """Two live nodes on one BMC endpoint cannot be made unique silently: say which."""
    rows = op.get_bind().execute(sa.text(
        "SELECT lower(bmc_address) AS address, bmc_port, string_agg(name, ', ' ORDER BY name) "
        "FROM nodes GROUP BY lower(bmc_address), bmc_port HAVING count(*) > 1"
    )).all()
    if rows:
        listed = '; '.join(f'{a}:{p} is {names}' for a, p, names in rows)
        raise RuntimeError(
            'these nodes share one BMC endpoint, so powerq cannot keep them from '
            f'receiving two commands at once: {listed}. Delete or re-address all but one '
            'of each, then run the upgrade again.'
        )


def upgrade() -> None:
    _refuse_duplicate_endpoints()
    op.add_column('nodes', sa.Column('deleted_at', TZ, nullable=True))
    op.drop_constraint('uq_nodes_name', 'nodes', type_='unique')
    op.create_index('uq_nodes_name_live', 'nodes', ['name'], unique=True, postgresql_where=LIVE)
    op.create_index(
        'uq_nodes_bmc_endpoint', 'nodes', [sa.text('lower(bmc_address)'), 'bmc_port'],
        unique=True, postgresql_where=LIVE,
    )
    op.add_column('power_requests', sa.Column('command_acked_at', TZ, nullable=True))
    op.add_column('power_requests', sa.Column('evidence', sa.String(32), nullable=True))
    op.add_column('power_requests', sa.Column('start_by', TZ, nullable=True))
    op.create_index(
        'ix_power_requests_start_by', 'power_requests', ['start_by'],
        postgresql_where=sa.text("status = 'pending' AND start_by IS NOT NULL"),
    )
    op.add_column('batches', sa.Column('deadline_at', TZ, nullable=True))
    op.add_column('batches', sa.Column('cancelled_at', TZ, nullable=True))
    op.add_column('idempotent_responses', sa.Column('fingerprint', sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column('idempotent_responses', 'fingerprint')
    op.drop_column('batches', 'cancelled_at')
    op.drop_column('batches', 'deadline_at')
    op.drop_index('ix_power_requests_start_by', table_name='power_requests')
    op.drop_column('power_requests', 'start_by')
    op.drop_column('power_requests', 'evidence')
    op.drop_column('power_requests', 'command_acked_at')
    op.drop_index('uq_nodes_bmc_endpoint', table_name='nodes')
    op.drop_index('uq_nodes_name_live', table_name='nodes')
    op.execute('DELETE FROM nodes WHERE deleted_at IS NOT NULL')
    op.create_unique_constraint('uq_nodes_name', 'nodes', ['name'])
    op.drop_column('nodes', 'deleted_at')
