"""DKIM signing keys of hosted domains (table dkim_keys; written by hand after app.models,
SQL types only, so the migration never changes when app code does).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 08:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dkim_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("selector", sa.String(length=63), nullable=False),
        sa.Column("algorithm", sa.String(length=16), nullable=False),
        sa.Column("key_bits", sa.Integer(), nullable=False),
        sa.Column("private_key_pem", sa.Text(), nullable=True),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "algorithm IN ('rsa-sha256', 'ed25519-sha256')", name=op.f("ck_dkim_keys_algorithm")
        ),
        sa.CheckConstraint(
            "state IN ('active', 'published', 'retired')", name=op.f("ck_dkim_keys_state")
        ),
        sa.ForeignKeyConstraint(
            ["domain_id"],
            ["domains.id"],
            name=op.f("fk_dkim_keys_domain_id_domains"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dkim_keys")),
        sa.UniqueConstraint("domain_id", "selector", name=op.f("uq_dkim_keys_domain_id")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_dkim_keys_domain_id"), "dkim_keys", ["domain_id"], unique=False)
    op.create_index(
        "uq_dkim_keys_one_active",
        "dkim_keys",
        ["domain_id"],
        unique=True,
        sqlite_where=sa.text("state = 'active'"),
        postgresql_where=sa.text("state = 'active'"),
    )


def downgrade() -> None:
    op.drop_index("uq_dkim_keys_one_active", table_name="dkim_keys")
    op.drop_index(op.f("ix_dkim_keys_domain_id"), table_name="dkim_keys")
    op.drop_table("dkim_keys")
