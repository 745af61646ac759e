"""Dashboard charts: hourly traffic counters (received, refused, retrieved) and a daily
snapshot of storage per customer (app/hourly.py, app/services/charts.py).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 14:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hourly_stats",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("hour", "metric", name=op.f("pk_hourly_stats")),
    )
    op.create_table(
        "customer_storage_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.Column("mailboxes", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", "customer_id", name=op.f("pk_customer_storage_daily")),
    )


def downgrade() -> None:
    op.drop_table("customer_storage_daily")
    op.drop_table("hourly_stats")
