"""Schema upgrades (issue 6): a database written at the first Alembic revision (0001)
opens with the current code, is upgraded to head, and keeps every run, point and pair score.

The fixture ``fixtures/rev0001.sqlite`` was written by ``fixtures/make_rev0001_db.py``;
it is read here with plain ``sqlite3`` before and after the upgrade, independently of
the code under test.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from auditor.cli import cli
from auditor.config import FlagRule, ScanConfig
from auditor.pipeline.scan import scan
from auditor.store import migrate, open_db, pairs, points, runs
from tests.helpers import robust_z_reference

FIXTURE = Path(__file__).parent / "fixtures" / "rev0001.sqlite"
TABLES = {"runs": "id", "points": "run_id, split, idx", "pair_scores": "run_id, test_idx"}


def dump(path: Path) -> dict[str, tuple[list[str], list[tuple]]]:
    """Every row of the three tables, as stored: ``{table: (columns, rows)}``."""
    with closing(sqlite3.connect(path)) as conn:
        out = {}
        for table, order in TABLES.items():
            cursor = conn.execute(f"select * from {table} order by {order}")
            out[table] = ([d[0] for d in cursor.description], cursor.fetchall())
        return out


def revision(path: Path) -> str:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("select version_num from alembic_version").fetchone()[0]


@pytest.fixture
def upgraded(tmp_path) -> tuple[Path, dict]:
    db = tmp_path / "old.db"
    shutil.copy(FIXTURE, db)
    assert revision(db) == "0001"
    before = dump(db)
    open_db(str(db)).dispose()
    return db, before


def test_upgrade_reaches_head_and_keeps_every_row(upgraded):
    db, before = upgraded
    assert revision(db) == migrate.head_revision()
    after = dump(db)
    for table, (columns, rows) in before.items():
        new_columns, new_rows = after[table]
        assert set(columns) <= set(new_columns), table  # a revision may add columns
        keep = [new_columns.index(c) for c in columns]
        assert [tuple(r[i] for i in keep) for r in new_rows] == rows, table
    assert [r[:2] for r in before["runs"][1]] != []
    statuses = {r[0]: r[before["runs"][0].index("status")] for r in before["runs"][1]}
    assert statuses == {1: "complete", 2: "complete", 3: "interrupted"}


def test_the_upgraded_runs_read_back_through_the_library_and_cli(upgraded, tmp_path):
    db, before = upgraded
    engine = open_db(str(db), create=False)
    n_scores = {r[0]: len(r[2]) // 4 for r in before["pair_scores"][1]}
    for run_id in (1, 2):
        run = runs.get_run(engine, run_id).as_dict()
        scores = pairs.read_pair_scores(engine, run_id)
        assert scores.shape == (run["n_test"], run["n_train"])
        assert scores.shape[1] == n_scores[run_id]
        train = points.read_points(engine, run_id, "train")
        assert sorted(p["rank"] for p in train) == list(range(1, run["n_train"] + 1))
        np.testing.assert_allclose(
            [p["harmfulness"] for p in train], scores.sum(axis=0), rtol=1e-5, atol=1e-9
        )
    runner = CliRunner()
    listing = runner.invoke(cli, ["runs", "--db", str(db)])
    assert listing.exit_code == 0
    assert [line.split()[:2] for line in listing.output.splitlines()[1:]] == [
        ["3", "interrupted"],
        ["2", "complete"],
        ["1", "complete"],
    ]
    assert runner.invoke(cli, ["show", "1", "--test-index", "0", "--db", str(db)]).exit_code == 0
    out = tmp_path / "r.html"
    report = runner.invoke(cli, ["report", "2", "--out", str(out), "--db", str(db)])
    assert report.exit_code == 0, report.output
    html = out.read_text()
    assert html.count("data:image/png;base64,") >= 1  # thumbnails from stored pixels
    # run 2 was flagged on the influence norm (before the log scale): its report says so
    assert "robust z of the influence norm √|self-influence|" in html
    assert "robust z of log |self-influence|" not in html


def test_the_export_of_an_old_run_carries_the_z_scores_its_flags_were_decided_on(upgraded):
    """Runs stored before revision 0003 have no stored z-scores; ``export`` recomputes them
    with the run's own influence scale, as the report does (the flags themselves were decided
    by the rule of their day and are not re-derived)."""
    db, _ = upgraded
    engine = open_db(str(db), create=False)
    for run_id in (1, 2):
        assert all(p["union_z"] is None for p in points.read_points(engine, run_id, "train"))
        result = CliRunner().invoke(cli, ["export", str(run_id), "--db", str(db)])
        assert result.exit_code == 0, result.output
        payload = json.loads(result.output)
        rule = FlagRule.from_dict(payload["run"]["ranking"]["rule"]).resolved(len(payload["train"]))
        assert rule.influence_scale == "sqrt"
        train = payload["train"]
        si = np.array([r["self_influence"] for r in train])
        want = robust_z_reference(np.sqrt(np.abs(si))).tolist()  # the influence norm's z
        assert [r["influence_z"] for r in train] == pytest.approx(want, rel=1e-9, abs=1e-9)
        # the strongest test of that version: z of log loss, of harmfulness, of log |s|
        tests = [[r[k] for r in train] for k in ("loss", "harmfulness", "self_influence")]
        logs = [np.log(np.abs(tests[0])), np.array(tests[1]), np.log(np.abs(tests[2]))]
        union = np.max([robust_z_reference(v) for v in logs], axis=0)
        assert [r["union_z"] for r in train] == pytest.approx(union.tolist(), rel=1e-9, abs=1e-9)


def test_an_interrupted_run_from_revision_0001_resumes_after_the_upgrade(upgraded):
    db, _ = upgraded
    result = CliRunner().invoke(cli, ["scan", "--resume", "3", "--db", str(db)])
    assert result.exit_code == 0, result.output
    engine = open_db(str(db), create=False)
    assert runs.get_run(engine, 3).as_dict()["status"] == "complete"
    # run 1 is the same scan, finished without interruption
    np.testing.assert_array_equal(
        pairs.read_pair_scores(engine, 3), pairs.read_pair_scores(engine, 1)
    )
    # run 1 was ranked by the code of revision 0001; today's ranking of the same scan:
    fresh = scan(engine, ScanConfig.from_dict(runs.get_run(engine, 1).as_dict()["config"])).run_id
    ranks = [
        [(p["rank"], p["flags"]) for p in points.read_points(engine, r, "train")]
        for r in (fresh, 3)
    ]
    assert ranks[0] == ranks[1]
