"""Idempotency records: the request fingerprint becomes a keyed MAC; old records are deleted.

Until now ``idempotency_records.request_hash`` was an unsalted SHA-256 of the request body,
which for a mailbox create contains the plaintext password: a reader of the database could test
password guesses at SHA-256 speed. The new fingerprint is an HMAC under the server secret
(``app.services.idempotency``); the column keeps its type (64 hex digits either way).

The existing rows are deleted rather than kept: they hold exactly the hashes that leak, they
can never match a new fingerprint (a retry would be refused as "key reused"), and they are
retry records whose useful life is the client's retry window (minutes). The cost: a client
that retries across the upgrade runs its request again, and a create then gets the usual
409 "already exists" instead of a replay; nothing is created twice.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 09:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DELETE FROM idempotency_records")


def downgrade() -> None:
    # Keyed fingerprints mean nothing to the old code (it would refuse every retry as a
    # reused key): drop them on the way down as well.
    op.execute("DELETE FROM idempotency_records")
