"""predictions.stored_bytes and feedback.stored_bytes: what a prediction's kept input and mask, and a feedback's
mask, take in the object store, so that they count toward the project's storage quota; webhooks.active: a
disabled webhook gets no delivery; jobs.by_admin: whether an admin key (or the fleet loop) queued the job, since
only those jobs' models are promoted by the gate on their own

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 18:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("predictions", "feedback"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("stored_bytes", sa.BigInteger(), nullable=False, server_default="0"))
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("by_admin", sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("by_admin")
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.drop_column("active")
    for table in ("predictions", "feedback"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("stored_bytes")
