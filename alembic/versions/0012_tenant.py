"""Customer administrators and their login sessions, TOTP credentials with recovery codes,
pending second-factor logins, and the acting customer on audit entries (issue 15).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 14:14:45.807246
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "customer_admins",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_customer_admins_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customer_admins")),
        sa.UniqueConstraint("username", name=op.f("uq_customer_admins_username")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("customer_admins", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_customer_admins_customer_id"), ["customer_id"], unique=False
        )

    op.create_table(
        "login_challenges",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("operator_id", sa.Integer(), nullable=True),
        sa.Column("customer_admin_id", sa.Integer(), nullable=True),
        sa.Column("next_url", sa.String(length=2000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(operator_id IS NULL) <> (customer_admin_id IS NULL)",
            name=op.f("ck_login_challenges_one_owner"),
        ),
        sa.ForeignKeyConstraint(
            ["customer_admin_id"],
            ["customer_admins.id"],
            name=op.f("fk_login_challenges_customer_admin_id_customer_admins"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["operator_id"],
            ["operators.id"],
            name=op.f("fk_login_challenges_operator_id_operators"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_login_challenges")),
    )
    with op.batch_alter_table("login_challenges", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_login_challenges_expires_at"), ["expires_at"], unique=False
        )

    op.create_table(
        "tenant_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("customer_admin_id", sa.Integer(), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("remote_addr", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_admin_id"],
            ["customer_admins.id"],
            name=op.f("fk_tenant_sessions_customer_admin_id_customer_admins"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_tenant_sessions")),
    )
    with op.batch_alter_table("tenant_sessions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_tenant_sessions_customer_admin_id"), ["customer_admin_id"], unique=False
        )

    op.create_table(
        "totp_credentials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("operator_id", sa.Integer(), nullable=True),
        sa.Column("customer_admin_id", sa.Integer(), nullable=True),
        sa.Column("secret", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_step", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "(operator_id IS NULL) <> (customer_admin_id IS NULL)",
            name=op.f("ck_totp_credentials_one_owner"),
        ),
        sa.ForeignKeyConstraint(
            ["customer_admin_id"],
            ["customer_admins.id"],
            name=op.f("fk_totp_credentials_customer_admin_id_customer_admins"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["operator_id"],
            ["operators.id"],
            name=op.f("fk_totp_credentials_operator_id_operators"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_totp_credentials")),
        sa.UniqueConstraint(
            "customer_admin_id", name=op.f("uq_totp_credentials_customer_admin_id")
        ),
        sa.UniqueConstraint("operator_id", name=op.f("uq_totp_credentials_operator_id")),
    )
    op.create_table(
        "totp_recovery_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("credential_id", sa.Integer(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["credential_id"],
            ["totp_credentials.id"],
            name=op.f("fk_totp_recovery_codes_credential_id_totp_credentials"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_totp_recovery_codes")),
    )
    with op.batch_alter_table("totp_recovery_codes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_totp_recovery_codes_credential_id"), ["credential_id"], unique=False
        )

    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("customer_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_audit_log_customer_id"), ["customer_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_customer_id"))
        batch_op.drop_column("customer_id")

    with op.batch_alter_table("totp_recovery_codes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_totp_recovery_codes_credential_id"))

    op.drop_table("totp_recovery_codes")
    op.drop_table("totp_credentials")
    with op.batch_alter_table("tenant_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tenant_sessions_customer_admin_id"))

    op.drop_table("tenant_sessions")
    with op.batch_alter_table("login_challenges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_login_challenges_expires_at"))

    op.drop_table("login_challenges")
    with op.batch_alter_table("customer_admins", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_customer_admins_customer_id"))

    op.drop_table("customer_admins")
