"""Content scanning policy: per-customer and per-domain overrides of the platform's scanning
defaults, the per-domain allow and block lists (app/services/scan_policy.py), and the latest
rejections per domain (app/services/scan_log.py).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 14:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "scan_policies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=True),
        sa.Column("domain_id", sa.Integer(), nullable=True),
        sa.Column("reject_score", sa.Float(), nullable=True),
        sa.Column("tag_score", sa.Float(), nullable=True),
        sa.Column("subject_tag", sa.String(length=40), nullable=True),
        sa.Column("greylisting", sa.Boolean(), nullable=True),
        sa.CheckConstraint(
            "(customer_id IS NULL) <> (domain_id IS NULL)",
            name=op.f("ck_scan_policies_one_scope"),
        ),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_scan_policies_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["domain_id"],
            ["domains.id"],
            name=op.f("fk_scan_policies_domain_id_domains"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scan_policies")),
        sa.UniqueConstraint("customer_id", name=op.f("uq_scan_policies_customer_id")),
        sa.UniqueConstraint("domain_id", name=op.f("uq_scan_policies_domain_id")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "scan_list_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("list_name", sa.String(length=8), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("value", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "list_name IN ('allow', 'block')", name=op.f("ck_scan_list_entries_list_name")
        ),
        sa.CheckConstraint(
            "kind IN ('sender', 'domain', 'network')", name=op.f("ck_scan_list_entries_kind")
        ),
        sa.ForeignKeyConstraint(
            ["domain_id"],
            ["domains.id"],
            name=op.f("fk_scan_list_entries_domain_id_domains"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scan_list_entries")),
        sa.UniqueConstraint(
            "domain_id", "list_name", "value", name=op.f("uq_scan_list_entries_domain_id")
        ),
        sqlite_autoincrement=True,
    )
    op.create_index(
        op.f("ix_scan_list_entries_domain_id"), "scan_list_entries", ["domain_id"], unique=False
    )
    op.create_table(
        "scan_rejections",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("queue_id", sa.String(length=32), nullable=False),
        sa.Column("client_ip", sa.String(length=64), nullable=False),
        sa.Column("sender", sa.String(length=320), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("symbols", sa.String(length=300), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["domain_id"],
            ["domains.id"],
            name=op.f("fk_scan_rejections_domain_id_domains"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scan_rejections")),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_scan_rejections_domain_time",
        "scan_rejections",
        ["domain_id", "occurred_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_scan_rejections_domain_time", table_name="scan_rejections")
    op.drop_table("scan_rejections")
    op.drop_index(op.f("ix_scan_list_entries_domain_id"), table_name="scan_list_entries")
    op.drop_table("scan_list_entries")
    op.drop_table("scan_policies")
