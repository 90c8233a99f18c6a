"""batch members: one row per node of a batch, in the batch's order (``position``),
instead of the list in ``batches.selector["linked"]`` and ``created_at`` spaced
by a microsecond per position

Revision ID: 0004
Revises: 0003
Create Date: 2027-01-10
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

# A batch's own requests, in the order the old code kept (created_at spaced per position).
_OWN = """
INSERT INTO batch_members (batch_id, position, node_id, request_id, outcome)
SELECT batch_id, row_number() OVER (PARTITION BY batch_id ORDER BY created_at, id) - 1,
       node_id, id, 'created'
FROM power_requests WHERE batch_id IS NOT NULL
"""
# Reused and refused nodes (selector["linked"]), after the batch's own requests.
_LINKED = """
INSERT INTO batch_members (batch_id, position, node_id, request_id, outcome, detail)
SELECT b.id,
       (SELECT count(*) FROM power_requests own WHERE own.batch_id = b.id) + l.ord - 1,
       r.node_id, r.id, l.link->>'outcome', l.link->>'detail'
FROM batches b
CROSS JOIN LATERAL jsonb_array_elements(
    CASE jsonb_typeof(b.selector->'linked') WHEN 'array' THEN b.selector->'linked' ELSE '[]' END
) WITH ORDINALITY AS l(link, ord)
JOIN power_requests r ON r.id::text = l.link->>'request_id'
ON CONFLICT DO NOTHING
"""
# Back to the old shape: the list in the selector, created_at spaced by position.
_RELINK = """
UPDATE batches b SET selector = b.selector || jsonb_build_object('linked', l.linked)
FROM (
    SELECT m.batch_id,
           jsonb_agg(jsonb_build_object('node', n.name, 'outcome', m.outcome,
                                        'request_id', m.request_id::text, 'detail', m.detail)
                     ORDER BY m.position) AS linked
    FROM batch_members m JOIN nodes n ON n.id = m.node_id
    WHERE m.outcome <> 'created'
    GROUP BY m.batch_id
) l
WHERE b.id = l.batch_id
"""
_RESPACE = """
UPDATE power_requests r SET created_at = b.created_at + m.position * interval '1 microsecond'
FROM batch_members m JOIN batches b ON b.id = m.batch_id
WHERE m.request_id = r.id AND m.outcome = 'created'
"""


def upgrade() -> None:
    op.create_table(
        'batch_members',
        sa.Column('batch_id', UUID(as_uuid=True), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('node_id', sa.Integer(), nullable=False),
        sa.Column('request_id', UUID(as_uuid=True), nullable=False),
        sa.Column('outcome', sa.String(16), nullable=False),
        sa.Column('detail', sa.Text(), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('created', 'existing', 'refused')", name='ck_batch_members_outcome'
        ),
        sa.ForeignKeyConstraint(
            ['batch_id'], ['batches.id'], name='fk_batch_members_batch_id_batches',
            ondelete='CASCADE',
        ),
        sa.ForeignKeyConstraint(
            ['request_id'], ['power_requests.id'],
            name='fk_batch_members_request_id_power_requests', ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('batch_id', 'position', name='pk_batch_members'),
    )
    op.create_index('uq_batch_members_node', 'batch_members', ['batch_id', 'node_id'], unique=True)
    op.create_index('ix_batch_members_request', 'batch_members', ['request_id'])
    op.execute(_OWN)
    op.execute(_LINKED)
    op.execute("UPDATE batches SET selector = selector - 'linked' WHERE selector ? 'linked'")


def downgrade() -> None:
    op.execute(_RELINK)
    op.execute(_RESPACE)
    op.drop_table('batch_members')
