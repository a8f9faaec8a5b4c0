"""Evaluations: detection quality of each ranking against injected faults.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("auditor_version", sa.String(32), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("faults", sa.JSON, nullable=False),
        sa.Column("seeds", sa.JSON, nullable=False),
        sa.Column("summary", sa.JSON),
        sa.Column("timings", sa.JSON),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
    )
    op.create_table(
        "evaluation_results",
        sa.Column("evaluation_id", sa.Integer, nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("ranking", sa.String(32), nullable=False),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("n_train", sa.Integer, nullable=False),
        sa.Column("n_faults", sa.Integer, nullable=False),
        sa.Column("auroc", sa.Float),
        sa.Column("average_precision", sa.Float),
        sa.Column("found", sa.JSON),
        sa.Column("curve", sa.JSON),
        sa.Column("fix", sa.JSON),
        sa.ForeignKeyConstraint(
            ["evaluation_id"],
            ["evaluations.id"],
            name=op.f("fk_evaluation_results_evaluation_id_evaluations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
            name=op.f("fk_evaluation_results_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "evaluation_id", "seed", "ranking", name=op.f("pk_evaluation_results")
        ),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("evaluation_results")
    op.drop_table("evaluations")
