"""Relay domains (issue 12): Domain.kind, the relay settings of a relay domain, its listed
recipients, and 'relay_domain' lifecycle events.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 14:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("domains") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(length=8), nullable=False, server_default="hosted")
        )
        batch.create_check_constraint(op.f("ck_domains_kind"), "kind IN ('hosted', 'relay')")
    with op.batch_alter_table("lifecycle_events") as batch:
        batch.drop_constraint(op.f("ck_lifecycle_events_entity"), type_="check")
        batch.create_check_constraint(
            op.f("ck_lifecycle_events_entity"),
            "entity IN ('mailbox', 'domain', 'relay_domain')",
        )
    op.create_table(
        "relay_domains",
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("next_hop", sa.String(length=300), nullable=False),
        sa.Column("tls_policy", sa.String(length=16), nullable=False),
        sa.Column("max_queue_age", sa.Integer(), nullable=False),
        sa.Column("held", sa.Boolean(), nullable=False),
        sa.Column("hold_reason", sa.String(length=500), nullable=True),
        sa.Column("recipient_mode", sa.String(length=8), nullable=False),
        sa.Column("callout_cache_seconds", sa.Integer(), nullable=False),
        sa.Column("flush_networks", sa.String(length=2000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "tls_policy IN ('opportunistic', 'required')",
            name=op.f("ck_relay_domains_tls_policy"),
        ),
        sa.CheckConstraint(
            "recipient_mode IN ('list', 'verify', 'any')",
            name=op.f("ck_relay_domains_recipient_mode"),
        ),
        sa.CheckConstraint(
            "max_queue_age > 0", name=op.f("ck_relay_domains_max_queue_age_positive")
        ),
        sa.CheckConstraint(
            "callout_cache_seconds >= 0", name=op.f("ck_relay_domains_callout_cache_nonnegative")
        ),
        sa.ForeignKeyConstraint(
            ["domain_id"],
            ["domains.id"],
            name=op.f("fk_relay_domains_domain_id_domains"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("domain_id", name=op.f("pk_relay_domains")),
    )
    op.create_table(
        "relay_recipients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("local_part", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["domain_id"],
            ["domains.id"],
            name=op.f("fk_relay_recipients_domain_id_domains"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_relay_recipients")),
        sa.UniqueConstraint(
            "domain_id", "local_part", name=op.f("uq_relay_recipients_domain_id")
        ),
        sqlite_autoincrement=True,
    )
    op.create_index(
        op.f("ix_relay_recipients_domain_id"), "relay_recipients", ["domain_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_relay_recipients_domain_id"), table_name="relay_recipients")
    op.drop_table("relay_recipients")
    op.drop_table("relay_domains")
    op.execute("DELETE FROM lifecycle_events WHERE entity = 'relay_domain'")
    with op.batch_alter_table("lifecycle_events") as batch:
        batch.drop_constraint(op.f("ck_lifecycle_events_entity"), type_="check")
        batch.create_check_constraint(
            op.f("ck_lifecycle_events_entity"), "entity IN ('mailbox', 'domain')"
        )
    with op.batch_alter_table("domains") as batch:
        batch.drop_constraint(op.f("ck_domains_kind"), type_="check")
        batch.drop_column("kind")
