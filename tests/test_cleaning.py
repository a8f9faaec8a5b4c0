"""The cleaning loop: decisions -> auditor apply -> rescan -> auditor compare."""

import json
import shlex

from click.testing import CliRunner

from auditor.cli import cli
from auditor.store import open_db, points, runs
from tests.helpers import write_remove_decisions


def test_removing_the_toy_outliers_lowers_the_test_loss(tmp_path):
    runner = CliRunner()
    db = str(tmp_path / "a.db")
    assert runner.invoke(cli, ["scan", "--train", "toy-linear", "--db", db]).exit_code == 0
    engine = open_db(db)
    flagged = write_remove_decisions(engine, 1, tmp_path / "d.json")
    out = tmp_path / "clean"
    result = runner.invoke(
        cli, ["apply", "1", str(tmp_path / "d.json"), "--out", str(out), "--db", db]
    )
    assert result.exit_code == 0, result.output
    rescan = shlex.split(result.stdout.strip().splitlines()[-1])
    assert rescan[:2] == ["auditor", "scan"]
    result = runner.invoke(cli, rescan[1:])
    assert result.exit_code == 0, result.output
    after = runs.get_run(engine, 2)
    assert after["n_train"] == 20 - len(flagged)
    assert {p["point_id"] for p in points.read_points(engine, 2, "train")}.isdisjoint({"x=-4.5"})
    before = runs.get_run(engine, 1)
    assert after["metrics"]["test_loss"] < before["metrics"]["test_loss"] / 10
    result = runner.invoke(cli, ["compare", "1", "2", "--db", db])
    assert result.exit_code == 0
    assert "test loss" in result.output and "different test points" not in result.output


def test_decisions_for_another_run_are_refused(tmp_path):
    runner = CliRunner()
    db = str(tmp_path / "a.db")
    runner.invoke(cli, ["scan", "--train", "toy-linear", "--db", db])
    (tmp_path / "d.json").write_text(json.dumps({"run": 9, "decisions": []}))
    result = runner.invoke(
        cli, ["apply", "1", str(tmp_path / "d.json"), "--out", str(tmp_path / "o"), "--db", db]
    )
    assert result.exit_code == 1 and "not run 1" in result.output
    (tmp_path / "d.json").write_text(
        json.dumps({"run": 1, "decisions": [{"index": 99, "action": "remove"}]})
    )
    result = runner.invoke(
        cli, ["apply", "1", str(tmp_path / "d.json"), "--out", str(tmp_path / "o"), "--db", db]
    )
    assert result.exit_code == 1 and "index 99" in result.output
