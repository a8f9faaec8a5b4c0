"""Initial schema: runs, points, pair_scores.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("phase", sa.String(32)),
        sa.Column("auditor_version", sa.String(32), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("task", sa.String(16), nullable=False),
        sa.Column("model", sa.String(32), nullable=False),
        sa.Column("n_train", sa.Integer, nullable=False),
        sa.Column("n_test", sa.Integer, nullable=False),
        sa.Column("n_params", sa.Integer),
        sa.Column("data_fingerprint", sa.String(64), nullable=False),
        sa.Column("class_names", sa.JSON),
        sa.Column("sources", sa.JSON),
        sa.Column("image_shape", sa.JSON),
        sa.Column("metrics", sa.JSON),
        sa.Column("solver", sa.JSON),
        sa.Column("ranking", sa.JSON),
        sa.Column("timings", sa.JSON),
        sa.Column("warnings", sa.JSON),
        sa.Column("error", sa.Text),
        sa.Column("theta", sa.LargeBinary),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_table(
        "points",
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("split", sa.String(5), nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("point_id", sa.Text, nullable=False),
        sa.Column("label", sa.Float, nullable=False),
        sa.Column("predicted", sa.Float),
        sa.Column("probability", sa.Float),
        sa.Column("loss", sa.Float),
        sa.Column("self_influence", sa.Float),
        sa.Column("harmfulness", sa.Float),
        sa.Column("suspicion", sa.Float),
        sa.Column("rank", sa.Integer),
        sa.Column("flags", sa.JSON),
        sa.Column("image", sa.LargeBinary),
        sa.Column("features", sa.LargeBinary),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_points_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "split", "idx", name=op.f("pk_points")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "pair_scores",
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("test_idx", sa.Integer, nullable=False),
        sa.Column("scores", sa.LargeBinary, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_pair_scores_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "test_idx", name=op.f("pk_pair_scores")),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("pair_scores")
    op.drop_table("points")
    op.drop_table("runs")
