"""Drift alarms: predictions.inputs (each image's cheap statistic, core.engine.drift.input_stats), drift_states (a
served model's last check: its scores and open alarm) and drift_points (its scores over time)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 22:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("inputs", sa.JSON(), nullable=True))
    op.create_index("ix_predictions_model_created", "predictions", ["model_id", "created_at"], unique=False)
    op.create_index("ix_predictions_created", "predictions", ["created_at"], unique=False)
    op.create_table(
        "drift_states",
        sa.Column("model_id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_size", sa.Integer(), nullable=False),
        sa.Column("newest", sa.String(length=36), nullable=True),
        sa.Column("newest_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("reference_items", sa.Integer(), nullable=True),
        sa.Column("alarm", sa.JSON(), nullable=True),
        sa.Column("alarm_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("alarms", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("model_id"),
    )
    op.create_index(op.f("ix_drift_states_project_id"), "drift_states", ["project_id"], unique=False)
    op.create_table(
        "drift_points",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_drift_points_model_at", "drift_points", ["model_id", "at"], unique=False)
    op.create_index("ix_drift_points_at", "drift_points", ["at"], unique=False)
    op.create_index(op.f("ix_drift_points_project_id"), "drift_points", ["project_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_drift_points_project_id"), table_name="drift_points")
    op.drop_index("ix_drift_points_at", table_name="drift_points")
    op.drop_index("ix_drift_points_model_at", table_name="drift_points")
    op.drop_table("drift_points")
    op.drop_index(op.f("ix_drift_states_project_id"), table_name="drift_states")
    op.drop_table("drift_states")
    op.drop_index("ix_predictions_created", table_name="predictions")
    op.drop_index("ix_predictions_model_created", table_name="predictions")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_column("inputs")
