"""addin_relay: Outlook add-in checks relayed from the central server to the user's helper

Revision ID: 0002_addin_relay
Revises: 0001
Create Date: 2026-12-02 06:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002_addin_relay'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('addin_relay',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('user', sa.String(length=320), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('request', sa.JSON(), nullable=True),
    sa.Column('status', sa.JSON(), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('addin_seen', sa.Float(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_addin_relay_state'), 'addin_relay', ['state'], unique=False)
    op.create_index(op.f('ix_addin_relay_user'), 'addin_relay', ['user'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_addin_relay_user'), table_name='addin_relay')
    op.drop_index(op.f('ix_addin_relay_state'), table_name='addin_relay')
    op.drop_table('addin_relay')
