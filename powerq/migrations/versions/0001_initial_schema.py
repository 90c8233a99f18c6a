"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None

# Each PostgreSQL enum type is created once here and referenced with
# create_type=False, so that tables sharing a type (power_action) and a full
# downgrade/upgrade cycle work.
ENUMS = {
    'power_action': postgresql.ENUM('on', 'off', 'soft_off', 'cycle', 'reset', 'query', name='power_action', create_type=False),
    'driver_kind': postgresql.ENUM('ipmi', 'redfish', 'sim', name='driver_kind', create_type=False),
    'power_state': postgresql.ENUM('on', 'off', 'unknown', name='power_state', create_type=False),
    'desired_power_state': postgresql.ENUM('on', 'off', name='desired_power_state', create_type=False),
    'request_status': postgresql.ENUM('pending', 'running', 'succeeded', 'failed', 'cancelled', name='request_status', create_type=False),
    'request_step': postgresql.ENUM('query', 'send', 'check', name='request_step', create_type=False),
}



def upgrade() -> None:
    bind = op.get_bind()
    for enum_type in ENUMS.values():
        enum_type.create(bind, checkfirst=True)
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_tokens_token_hash'))
    )
    op.create_table('batches',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=True),
    sa.Column('action', ENUMS['power_action'], nullable=False),
    sa.Column('stagger_s', sa.Float(), server_default='0', nullable=False),
    sa.Column('max_in_flight', sa.Integer(), nullable=True),
    sa.Column('selector', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('requested_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_batches'))
    )
    op.create_table('idempotent_responses',
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('path', sa.String(length=512), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('body', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('headers', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('actor', 'key', name=op.f('pk_idempotent_responses'))
    )
    op.create_table('nodes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('driver', ENUMS['driver_kind'], nullable=False),
    sa.Column('bmc_address', sa.String(length=255), nullable=False),
    sa.Column('bmc_port', sa.Integer(), nullable=False),
    sa.Column('bmc_username', sa.String(length=64), nullable=False),
    sa.Column('bmc_password_encrypted', sa.LargeBinary(), nullable=False),
    sa.Column('power_state', ENUMS['power_state'], server_default='unknown', nullable=False),
    sa.Column('power_state_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('desired_power_state', ENUMS['desired_power_state'], nullable=True),
    sa.Column('desired_power_state_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('maintenance', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('power_fault', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('power_fault_reason', sa.Text(), nullable=True),
    sa.Column('power_fault_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('consecutive_failures', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('last_checked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('tags', postgresql.ARRAY(sa.Text()), server_default='{}', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_nodes')),
    sa.UniqueConstraint('name', name=op.f('uq_nodes_name'))
    )
    op.create_index('ix_nodes_tags', 'nodes', ['tags'], unique=False, postgresql_using='gin')
    op.create_table('power_requests',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('action', ENUMS['power_action'], nullable=False),
    sa.Column('status', ENUMS['request_status'], server_default='pending', nullable=False),
    sa.Column('attempt', sa.Integer(), server_default='0', nullable=False),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('next_step', ENUMS['request_step'], server_default='query', nullable=False),
    sa.Column('checks', sa.Integer(), server_default='0', nullable=False),
    sa.Column('transient_errors', sa.Integer(), server_default='0', nullable=False),
    sa.Column('deadline_s', sa.Float(), nullable=False),
    sa.Column('deadline_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('soft_fallback', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('not_before', sa.DateTime(timezone=True), nullable=True),
    sa.Column('held', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('dispatch_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('command_sent', ENUMS['power_action'], nullable=True),
    sa.Column('command_sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('fallback_sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('transition_seen_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('observed_before', ENUMS['power_state'], nullable=True),
    sa.Column('observed_after', ENUMS['power_state'], nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('requested_by', sa.String(length=128), nullable=False),
    sa.Column('batch_id', sa.UUID(), nullable=True),
    sa.Column('idempotency_key', sa.String(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_power_requests_batch_id_batches'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name=op.f('fk_power_requests_node_id_nodes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_power_requests'))
    )
    op.create_index('ix_power_requests_batch', 'power_requests', ['batch_id'], unique=False)
    op.create_index('ix_power_requests_node_created', 'power_requests', ['node_id', 'created_at'], unique=False)
    op.create_index('ix_power_requests_outstanding_dispatch', 'power_requests', ['status', 'dispatched_at'], unique=False, postgresql_where=sa.text("status IN ('pending', 'running')"))
    op.create_index('ix_power_requests_outstanding_lease', 'power_requests', ['lease_expires_at'], unique=False, postgresql_where=sa.text("status = 'running'"))
    op.create_index('uq_power_requests_idempotency', 'power_requests', ['requested_by', 'idempotency_key'], unique=True, postgresql_where=sa.text('idempotency_key IS NOT NULL'))
    op.create_index('uq_power_requests_one_outstanding', 'power_requests', ['node_id'], unique=True, postgresql_where=sa.text("status IN ('pending', 'running')"))
    op.create_table('power_events',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.UUID(), nullable=True),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('message', sa.Text(), nullable=True),
    sa.Column('detail', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name=op.f('fk_power_events_node_id_nodes'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['request_id'], ['power_requests.id'], name=op.f('fk_power_events_request_id_power_requests'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_power_events'))
    )
    op.create_index('ix_power_events_node_created', 'power_events', ['node_id', 'created_at'], unique=False)
    op.create_index('ix_power_events_request', 'power_events', ['request_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_power_events_request', table_name='power_events')
    op.drop_index('ix_power_events_node_created', table_name='power_events')
    op.drop_table('power_events')
    op.drop_index('uq_power_requests_one_outstanding', table_name='power_requests', postgresql_where=sa.text("status IN ('pending', 'running')"))
    op.drop_index('uq_power_requests_idempotency', table_name='power_requests', postgresql_where=sa.text('idempotency_key IS NOT NULL'))
    op.drop_index('ix_power_requests_outstanding_lease', table_name='power_requests', postgresql_where=sa.text("status = 'running'"))
    op.drop_index('ix_power_requests_outstanding_dispatch', table_name='power_requests', postgresql_where=sa.text("status IN ('pending', 'running')"))
    op.drop_index('ix_power_requests_node_created', table_name='power_requests')
    op.drop_index('ix_power_requests_batch', table_name='power_requests')
    op.drop_table('power_requests')
    op.drop_index('ix_nodes_tags', table_name='nodes', postgresql_using='gin')
    op.drop_table('nodes')
    op.drop_table('idempotent_responses')
    op.drop_table('batches')
    op.drop_table('api_tokens')
    bind = op.get_bind()
    for enum_type in ENUMS.values():
        enum_type.drop(bind, checkfirst=True)
