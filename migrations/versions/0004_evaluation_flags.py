"""Each evaluation result's flags: how many points the rule flagged and how many of them
are faults.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

The scan's flags (on the ``combined`` row) and the confident-learning baseline's label
issues (on its row) are scored as sets: count, faults among them, precision and recall.
Rows written before stay ``NULL``.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evaluation_results") as batch:
        batch.add_column(sa.Column("flags", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("evaluation_results") as batch:
        batch.drop_column("flags")
