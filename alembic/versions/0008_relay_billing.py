"""Relay-domain billing: the customer's price per relay domain (prorated by day like
mailboxes; app/services/billing_relay.py).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 14:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.add_column(
            sa.Column(
                "price_per_relay_domain",
                sa.Numeric(precision=12, scale=4),
                nullable=False,
                server_default="0",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("price_per_relay_domain")
