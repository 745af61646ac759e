"""Login throttle: budgets with attempts in flight (login_counters) and the client networks
known to each account (login_known_addresses) replace the finished-failure counters
(auth_failures). The old counters are dropped, not converted: they hold at most 15 minutes
of transient penalty and their meaning (finished failures only) differs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 08:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "login_counters",
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("charged", sa.Integer(), nullable=False),
        sa.Column("drained_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_login_counters")),
    )
    op.create_index(
        op.f("ix_login_counters_drained_at"), "login_counters", ["drained_at"], unique=False
    )
    op.create_table(
        "login_known_addresses",
        sa.Column("account_key", sa.String(length=400), nullable=False),
        sa.Column("network", sa.String(length=64), nullable=False),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_key", "network", name=op.f("pk_login_known_addresses")),
    )
    op.create_index(
        op.f("ix_login_known_addresses_last_success_at"),
        "login_known_addresses",
        ["last_success_at"],
        unique=False,
    )
    op.drop_table("auth_failures")


def downgrade() -> None:
    op.create_table(
        "auth_failures",
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_auth_failures")),
    )
    op.drop_index(
        op.f("ix_login_known_addresses_last_success_at"), table_name="login_known_addresses"
    )
    op.drop_table("login_known_addresses")
    op.drop_index(op.f("ix_login_counters_drained_at"), table_name="login_counters")
    op.drop_table("login_counters")
