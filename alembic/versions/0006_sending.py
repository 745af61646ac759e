"""Sending controls: the mailbox's "may send" flag, per-customer and per-mailbox sending
limits (NULL inherits the platform default), the "sending limited" flag, and the counters of
the current fixed window per mailbox and customer (app/services/sending.py).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 16:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("mailboxes") as batch:
        batch.add_column(
            sa.Column("may_send", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch.add_column(sa.Column("max_messages_per_hour", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_recipients_per_day", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("sending_limited_since", sa.DateTime(timezone=True), nullable=True)
        )
        batch.add_column(
            sa.Column("sending_limited_until", sa.DateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("sending_limited_reason", sa.String(length=300), nullable=True))
    with op.batch_alter_table("customers") as batch:
        batch.add_column(sa.Column("max_messages_per_hour", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_recipients_per_day", sa.Integer(), nullable=True))
    op.create_table(
        "sending_counters",
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("scope_id", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(length=16), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "scope IN ('mailbox', 'customer')", name=op.f("ck_sending_counters_scope")
        ),
        sa.CheckConstraint(
            "metric IN ('messages_hour', 'recipients_day')",
            name=op.f("ck_sending_counters_metric"),
        ),
        sa.CheckConstraint("count >= 0", name=op.f("ck_sending_counters_count_nonnegative")),
        sa.PrimaryKeyConstraint("scope", "scope_id", "metric", name=op.f("pk_sending_counters")),
    )
    op.create_index(
        op.f("ix_sending_counters_window_start"),
        "sending_counters",
        ["window_start"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_sending_counters_window_start"), table_name="sending_counters")
    op.drop_table("sending_counters")
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("max_recipients_per_day")
        batch.drop_column("max_messages_per_hour")
    with op.batch_alter_table("mailboxes") as batch:
        batch.drop_column("sending_limited_reason")
        batch.drop_column("sending_limited_until")
        batch.drop_column("sending_limited_since")
        batch.drop_column("max_recipients_per_day")
        batch.drop_column("max_messages_per_hour")
        batch.drop_column("may_send")
