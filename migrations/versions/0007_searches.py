"""Hyperparameter searches: the searches table, jobs.search_id and jobs.trial_number (a trial is a job), and
Optuna's own tables (its RDBStorage's schema, at the pinned Optuna's version), so the study of every search
lives in this database: several API processes and workers share it, and the roles that only change rows
never create a table.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 00:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Optuna's tables (optuna.storages._rdb.models); its own version check is skipped (core/db/studies.py), since
# its Alembic would share this database's alembic_version table: a new Optuna schema comes with a revision here.
OPTUNA_TABLES = (
    "version_info",
    "studies",
    "study_directions",
    "study_user_attributes",
    "study_system_attributes",
    "trials",
    "trial_user_attributes",
    "trial_system_attributes",
    "trial_params",
    "trial_values",
    "trial_intermediate_values",
    "trial_heartbeats",
)


def upgrade() -> None:
    op.create_table(
        "searches",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("project_id", sa.String(36), sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("base", sa.JSON(), nullable=False),
        sa.Column("space", sa.JSON(), nullable=False),
        sa.Column("trials", sa.Integer(), nullable=False),
        sa.Column("parallel", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(50), nullable=False),
        sa.Column("direction", sa.String(10), nullable=False),
        sa.Column("pruner", sa.String(20), nullable=False),
        sa.Column("sampler", sa.String(20), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=True),
        sa.Column("register_as", sa.String(200), nullable=True),
        sa.Column("lr_find_job_id", sa.String(36), nullable=True),
        sa.Column("lr_range", sa.JSON(), nullable=True),
        sa.Column("adopt_job_id", sa.String(36), nullable=True),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("by_admin", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_searches_project_id", "searches", ["project_id"])
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("search_id", sa.String(36), nullable=True))
        batch_op.add_column(sa.Column("trial_number", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_jobs_search_id", "searches", ["search_id"], ["id"], ondelete="SET NULL")
        batch_op.create_index("ix_jobs_search_id", ["search_id"])

    from optuna import __version__ as optuna_version
    from optuna.storages._rdb import models as optuna_models

    bind = op.get_bind()
    optuna_models.BaseModel.metadata.create_all(bind)
    bind.execute(
        sa.text("INSERT INTO version_info (version_info_id, schema_version, library_version) VALUES (1, :s, :v)"),
        {"s": optuna_models.SCHEMA_VERSION, "v": optuna_version},
    )


def downgrade() -> None:
    from optuna.storages._rdb import models as optuna_models

    optuna_models.BaseModel.metadata.drop_all(op.get_bind())
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_search_id")
        batch_op.drop_constraint("fk_jobs_search_id", type_="foreignkey")
        batch_op.drop_column("trial_number")
        batch_op.drop_column("search_id")
    op.drop_index("ix_searches_project_id", table_name="searches")
    op.drop_table("searches")
