"""Run owner and heartbeat; each point's flag evidence.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

A scan killed outright (SIGKILL, power loss) cannot mark its run; with the writing
process's host, pid and start time, `auditor runs` tells a dead writer from a live one and
`scan --resume` refuses to race a live one. Points keep the two z-scores their flags were
decided on (`union_z`, `influence_z`), so that a report shows them as the scan saw them.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("owner_host", sa.String(255)))
        batch.add_column(sa.Column("owner_pid", sa.Integer))
        batch.add_column(sa.Column("owner_start", sa.String(32)))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime))
    with op.batch_alter_table("points") as batch:
        batch.add_column(sa.Column("union_z", sa.Float))
        batch.add_column(sa.Column("influence_z", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("points") as batch:
        batch.drop_column("influence_z")
        batch.drop_column("union_z")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("heartbeat_at")
        batch.drop_column("owner_start")
        batch.drop_column("owner_pid")
        batch.drop_column("owner_host")
