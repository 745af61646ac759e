"""Mailbox self-service: forwarding, auto-replies (and who they answered), mailbox user
sessions for /me, and the queue origins 'forward' and 'autoreply' (issue 15).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 14:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_ORIGINS = "origin IN ('submission', 'relay', 'bounce')"
_NEW_ORIGINS = "origin IN ('submission', 'relay', 'bounce', 'forward', 'autoreply')"


def _mailbox_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["mailbox_id"],
        ["mailboxes.id"],
        name=op.f(f"fk_{table}_mailbox_id_mailboxes"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "mailbox_forwards",
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("keep_copy", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        _mailbox_fk("mailbox_forwards"),
        sa.PrimaryKeyConstraint("mailbox_id", name=op.f("pk_mailbox_forwards")),
    )
    op.create_table(
        "auto_replies",
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("starts_on", sa.Date(), nullable=True),
        sa.Column("ends_on", sa.Date(), nullable=True),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        _mailbox_fk("auto_replies"),
        sa.PrimaryKeyConstraint("mailbox_id", name=op.f("pk_auto_replies")),
    )
    op.create_table(
        "auto_reply_sent",
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("sender", sa.String(length=320), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        _mailbox_fk("auto_reply_sent"),
        sa.PrimaryKeyConstraint("mailbox_id", "sender", name=op.f("pk_auto_reply_sent")),
    )
    op.create_table(
        "mailbox_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        _mailbox_fk("mailbox_sessions"),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_mailbox_sessions")),
    )
    op.create_index(
        op.f("ix_mailbox_sessions_mailbox_id"), "mailbox_sessions", ["mailbox_id"], unique=False
    )
    with op.batch_alter_table("outbound_messages") as batch:
        batch.drop_constraint(op.f("ck_outbound_messages_origin"), type_="check")
        batch.create_check_constraint(op.f("ck_outbound_messages_origin"), _NEW_ORIGINS)


def downgrade() -> None:
    op.execute(
        "DELETE FROM outbound_messages WHERE origin IN ('forward', 'autoreply')"
    )
    with op.batch_alter_table("outbound_messages") as batch:
        batch.drop_constraint(op.f("ck_outbound_messages_origin"), type_="check")
        batch.create_check_constraint(op.f("ck_outbound_messages_origin"), _OLD_ORIGINS)
    op.drop_index(op.f("ix_mailbox_sessions_mailbox_id"), table_name="mailbox_sessions")
    op.drop_table("mailbox_sessions")
    op.drop_table("auto_reply_sent")
    op.drop_table("auto_replies")
    op.drop_table("mailbox_forwards")
