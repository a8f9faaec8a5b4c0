"""Table definitions (SQLAlchemy Core). The schema itself is created only by Alembic
revisions in ``migrations/``; a test checks that the two agree.

Layout (see docs/operations.md, "Storage"): one row per run, one row per point, and one row per
(run, test point) holding that test point's scores against every training point as a
float32 little-endian BLOB of length ``n_train``. DESIGN.md measured this at 20 M pairs/s
and 4.1 bytes/pair against 0.31 M pairs/s and 22 bytes/pair for a row per pair.
"""

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("status", String(16), nullable=False),  # running | complete | failed | interrupted
    Column("phase", String(32)),  # the phase reached (for incomplete runs)
    Column("auditor_version", String(32), nullable=False),
    Column("config", JSON, nullable=False),
    Column("dataset", Text, nullable=False),
    Column("task", String(16), nullable=False),
    Column("model", String(32), nullable=False),
    Column("n_train", Integer, nullable=False),
    Column("n_test", Integer, nullable=False),
    Column("n_params", Integer),
    Column("data_fingerprint", String(64), nullable=False),
    Column("class_names", JSON),
    Column("sources", JSON),  # SourceInfo of train and test, for `auditor apply`
    Column("image_shape", JSON),
    Column("metrics", JSON),
    Column("solver", JSON),
    Column("ranking", JSON),
    Column("timings", JSON),
    Column("warnings", JSON),
    Column("error", Text),
    Column("theta", LargeBinary),
    # the process writing a running run (revision 0003): host name, pid, and its start
    # time (so that a reused pid is not taken for the writer), and its last write
    Column("owner_host", String(255)),
    Column("owner_pid", Integer),
    Column("owner_start", String(32)),
    Column("heartbeat_at", DateTime),
)

points = Table(
    "points",
    metadata,
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("split", String(5), primary_key=True),  # train | test
    Column("idx", Integer, primary_key=True),
    Column("point_id", Text, nullable=False),
    Column("label", Float, nullable=False),
    Column("predicted", Float),
    Column("probability", Float),
    Column("loss", Float),
    Column("self_influence", Float),
    Column("harmfulness", Float),
    Column("suspicion", Float),
    Column("rank", Integer),
    Column("flags", JSON),
    # the flag rule's evidence (revision 0003): the strongest test's z and the influence z
    Column("union_z", Float),
    Column("influence_z", Float),
    Column("image", LargeBinary),  # raw uint8 pixels, shape in runs.image_shape
    Column("features", LargeBinary),  # float32, only for low-dimensional data
    sqlite_with_rowid=False,
)

pair_scores = Table(
    "pair_scores",
    metadata,
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("test_idx", Integer, primary_key=True),
    Column("scores", LargeBinary, nullable=False),
    sqlite_with_rowid=False,
)

evaluations = Table(
    "evaluations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime, nullable=False),
    Column("auditor_version", String(32), nullable=False),
    Column("config", JSON, nullable=False),  # the scan configuration (seed 0's)
    Column("faults", JSON, nullable=False),  # FaultSpec
    Column("seeds", JSON, nullable=False),
    Column("summary", JSON),  # ranking -> metric -> [mean, spread]
    Column("timings", JSON),
)

evaluation_results = Table(
    "evaluation_results",
    metadata,
    Column(
        "evaluation_id",
        Integer,
        ForeignKey("evaluations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("seed", Integer, primary_key=True),
    Column("ranking", String(32), primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("n_train", Integer, nullable=False),
    Column("n_faults", Integer, nullable=False),
    Column("auroc", Float),
    Column("average_precision", Float),
    Column("found", JSON),  # {"0.05": share, ...}
    Column("curve", JSON),  # [[share checked, share found], ...]
    Column("fix", JSON),  # [{k, test_loss, test_accuracy, ...}] (combined and random only)
    # (revision 0004) {count, faults, precision, recall} of the scan's flags (combined) and
    # of confident learning's label issues; NULL for the other rankings and older rows
    Column("flags", JSON),
    sqlite_with_rowid=False,
)
