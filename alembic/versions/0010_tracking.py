"""Message tracking: one row per message event (app/tracking.py), with the indexes of the
tracking searches (address, queue id, client address, time).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 14:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = {
    "ix_message_events_occurred_at": ["occurred_at"],
    "ix_message_events_queue_id": ["queue_id", "occurred_at"],
    "ix_message_events_sender": ["sender", "occurred_at"],
    "ix_message_events_recipient": ["recipient", "occurred_at"],
    "ix_message_events_mailbox": ["mailbox", "occurred_at"],
    "ix_message_events_client_ip": ["client_ip", "occurred_at"],
    "ix_message_events_message_key": ["message_key"],
}


def upgrade() -> None:
    op.create_table(
        "message_events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True
        ),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("service", sa.String(length=16), nullable=False),
        sa.Column("queue_id", sa.String(length=32), nullable=True),
        sa.Column("client_ip", sa.String(length=45), nullable=True),
        sa.Column("helo", sa.String(length=255), nullable=True),
        sa.Column("sender", sa.String(length=320), nullable=True),
        sa.Column("recipient", sa.String(length=320), nullable=True),
        sa.Column("mailbox", sa.String(length=320), nullable=True),
        sa.Column("remote_host", sa.String(length=255), nullable=True),
        sa.Column("stage", sa.String(length=16), nullable=True),
        sa.Column("reply", sa.String(length=512), nullable=True),
        sa.Column("detail", sa.String(length=512), nullable=True),
        sa.Column("message_key", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_events")),
        sqlite_autoincrement=True,
    )
    for name, columns in _INDEXES.items():
        op.create_index(name, "message_events", columns)


def downgrade() -> None:
    for name in _INDEXES:
        op.drop_index(name, table_name="message_events")
    op.drop_table("message_events")
