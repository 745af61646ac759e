"""Outbound queue history for the dashboard: depth by state and oldest age, sampled
periodically (app/periodic.py).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 18:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "queue_samples",
        sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("queued", sa.Integer(), nullable=False),
        sa.Column("deferred", sa.Integer(), nullable=False),
        sa.Column("held", sa.Integer(), nullable=False),
        sa.Column("oldest_age_seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("sampled_at", name=op.f("pk_queue_samples")),
    )


def downgrade() -> None:
    op.drop_table("queue_samples")
