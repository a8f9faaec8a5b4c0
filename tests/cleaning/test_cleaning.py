"""The cleaning loop: decisions -> auditor apply -> rescan -> auditor compare."""

import json
import shlex
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from auditor.cli import cli
from auditor.config import ScanConfig
from auditor.sources.idx import read_pair, write_idx
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
    after = runs.get_run(engine, 2).as_dict()
    assert after["n_train"] == 20 - len(flagged)
    assert {p["point_id"] for p in points.read_points(engine, 2, "train")}.isdisjoint({"x=-4.5"})
    before = runs.get_run(engine, 1).as_dict()
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


def invoke(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, list(args))
    if ok:
        assert result.exit_code == 0, result.output
    return result


def apply_and_rescan(tmp_path, db: str, decisions: dict, run: str = "1") -> list[str]:
    """``auditor apply`` then the rescan command it printed; returns that command."""
    path = tmp_path / "decisions.json"
    path.write_text(json.dumps(decisions))
    result = invoke("apply", run, str(path), "--out", str(tmp_path / "clean"), "--db", db)
    rescan = shlex.split(result.stdout.strip().splitlines()[-1])
    invoke(*rescan[1:])
    return rescan


def test_a_split_toy_run_is_written_back_with_the_same_test_points(tmp_path):
    db = str(tmp_path / "a.db")
    invoke("scan", "--train", "toy-linear", "--test-split", "0.2", "--db", db)
    train = points.read_points(open_db(db), 1, "train")
    apply_and_rescan(tmp_path, db, {"decisions": [{"index": 0, "action": "remove"}]})
    engine = open_db(db)
    before, after = runs.get_run(engine, 1).as_dict(), runs.get_run(engine, 2).as_dict()
    assert after["n_train"] == before["n_train"] - 1
    assert after["metrics"]["test_fingerprint"] == before["metrics"]["test_fingerprint"]
    kept = [p["point_id"] for p in points.read_points(engine, 2, "train")]
    assert len(kept) == len(train) - 1


def test_a_split_idx_folder_with_two_pairs_keeps_its_held_out_points(tmp_path, mnist_dir):
    """The folder's t10k pair is not the run's test data (the split is): the rescan must
    test on the held-out points, not on a copy of the t10k pair."""
    pixels, labels = read_pair(
        mnist_dir / "t10k-images-idx3-ubyte.gz", mnist_dir / "t10k-labels-idx1-ubyte.gz"
    )
    src = tmp_path / "src"
    src.mkdir()
    for prefix, part in (("train", slice(0, 300)), ("t10k", slice(300, 400))):
        write_idx(src / f"{prefix}-images-idx3-ubyte", pixels[part])
        write_idx(src / f"{prefix}-labels-idx1-ubyte", labels[part])
    db = str(tmp_path / "a.db")
    args = ["--classes", "1,7", "--test-split", "0.25", "--solver", "exact", "--db", db]
    invoke("scan", "--train", str(src), *args)
    apply_and_rescan(tmp_path, db, {"decisions": []})
    engine = open_db(db)
    before, after = runs.get_run(engine, 1).as_dict(), runs.get_run(engine, 2).as_dict()
    assert (after["n_train"], after["n_test"]) == (before["n_train"], before["n_test"])
    assert after["metrics"]["test_fingerprint"] == before["metrics"]["test_fingerprint"]
    assert "different test points" not in invoke("compare", "1", "2", "--db", db).output


def test_the_rescan_repeats_every_stored_option_and_finds_the_test_data_from_anywhere(
    tmp_path, monkeypatch
):
    data = tmp_path / "data"
    data.mkdir()
    rows = [f"{x},{x * x - 1:.3f},{'a' if x < 0.5 else 'b'}" for x in np.linspace(-1, 2, 30)]
    (data / "train.csv").write_text("x1,x2,label\n" + "\n".join(rows) + "\n")
    (data / "test.csv").write_text("x1,x2,label\n" + "\n".join(rows[::3]) + "\n")
    db = str(tmp_path / "a.db")
    monkeypatch.chdir(data)  # relative paths, as typed
    options = ["--model", "mlp", "--hidden", "4", "--solver", "cg", "--damping", "0.05"]
    options += ["--trim", "0", "--outlier-z", "3", "--weight-decay", "0.02", "--seed", "3"]
    invoke("scan", "--train", "train.csv", "--test", "test.csv", *options, "--db", db)
    monkeypatch.chdir(tmp_path)
    rescan = apply_and_rescan(tmp_path, db, {"decisions": [{"index": 2, "action": "remove"}]})
    assert rescan[rescan.index("--test") + 1] == str((data / "test.csv").resolve())
    engine = open_db(db)
    want, got = (ScanConfig.from_dict(runs.get_run(engine, i).as_dict()["config"]) for i in (1, 2))
    assert replace(got, data=want.data) == want  # model, solver, rule, device, chunk
    assert (got.data.seed, got.data.classes) == (want.data.seed, want.data.classes)


def two_class_csv(path: Path) -> Path:
    """Twenty points x = 0.0, 0.1, ... labelled a, b, a, b, ... (one row reads "0.1,b")."""
    path.write_text("x,label\n" + "\n".join(f"{i / 10},{'ab'[i % 2]}" for i in range(20)) + "\n")
    return path


def test_apply_refuses_changed_data_and_a_used_output_folder(tmp_path):
    data = two_class_csv(tmp_path / "train.csv")
    db = str(tmp_path / "a.db")
    invoke("scan", "--train", str(data), "--test-split", "0.25", "--db", db)
    decisions = tmp_path / "d.json"
    decisions.write_text(json.dumps({"decisions": [{"index": 3, "action": "remove"}]}))
    used = tmp_path / "used"
    used.mkdir()
    (used / "old.png").write_bytes(b"stale")
    result = invoke("apply", "1", str(decisions), "--out", str(used), "--db", db, ok=False)
    assert result.exit_code == 1 and "not an empty folder" in result.output
    assert sorted(p.name for p in used.iterdir()) == ["old.png"]
    data.write_text(data.read_text().replace("0.1,b\n", ""))  # a row disappears
    result = invoke(
        "apply", "1", str(decisions), "--out", str(tmp_path / "o"), "--db", db, ok=False
    )
    assert result.exit_code == 1 and "the data changed since the run" in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("decisions", "message"),
    [
        ([{"index": 1, "action": "remove"}, {"index": 1, "action": "keep"}], "already decided"),
        ([{"index": True, "action": "remove"}], "index True is not a training point"),
        ([{"index": 0, "action": "relabel", "label": "1e39"}], "too large for float32"),
    ],
)
def test_ambiguous_or_unreadable_decisions_are_refused(tmp_path, decisions, message):
    db = str(tmp_path / "a.db")
    invoke("scan", "--train", "toy-linear", "--db", db)
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"run": 1, "decisions": decisions}))
    result = invoke("apply", "1", str(path), "--out", str(tmp_path / "o"), "--db", db, ok=False)
    assert result.exit_code == 1 and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_export_refuses_its_database_and_reports_an_unwritable_file_in_one_line(tmp_path):
    db = str(tmp_path / "a.db")
    invoke("scan", "--train", "toy-linear", "--db", db)
    result = invoke("export", "--out", db, "--db", db, ok=False)
    assert result.exit_code == 2 and "is the database itself" in result.output
    assert runs.get_run(open_db(db), 1).as_dict()["status"] == "complete"
    result = invoke("export", "--out", str(tmp_path / "no" / "x.json"), "--db", db, ok=False)
    assert result.exit_code == 1 and "No such file or directory" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_compare_refuses_runs_of_different_tasks(tmp_path):
    db = str(tmp_path / "a.db")
    invoke("scan", "--train", "toy-linear", "--db", db)
    csv = two_class_csv(tmp_path / "c.csv")
    invoke("scan", "--train", str(csv), "--test-split", "0.25", "--db", db)
    result = invoke("compare", "1", "2", "--db", db, ok=False)
    assert result.exit_code == 1 and "do not compare" in result.output


def test_decisions_on_test_points_are_applied_to_a_split_runs_test_data(tmp_path, mnist_dir):
    pixels, labels = read_pair(
        mnist_dir / "t10k-images-idx3-ubyte.gz", mnist_dir / "t10k-labels-idx1-ubyte.gz"
    )
    src = tmp_path / "src"
    src.mkdir()
    write_idx(src / "train-images-idx3-ubyte", pixels[:400])
    write_idx(src / "train-labels-idx1-ubyte", labels[:400])
    db = str(tmp_path / "a.db")
    args = ["--classes", "1,7", "--test-split", "0.25", "--solver", "exact", "--db", db]
    invoke("scan", "--train", str(src), *args)
    names = runs.get_run(open_db(db), 1).class_names
    test = [
        {**p, "label": names[int(p["label"])]} for p in points.read_points(open_db(db), 1, "test")
    ]
    relabelled, removed = test[0], test[1]
    new_label = "1" if relabelled["label"] == "7" else "7"
    decisions = [
        {"split": "test", "index": 0, "id": relabelled["point_id"], "action": "relabel",
         "label": new_label},
        {"split": "test", "index": 1, "id": removed["point_id"], "action": "remove"},
        {"index": 0, "action": "keep"},
    ]  # fmt: skip
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"run": 1, "decisions": decisions}))
    result = invoke("apply", "1", str(path), "--out", str(tmp_path / "clean"), "--db", db)
    assert "0 keep, 1 relabel, 1 remove (test points)" in result.stderr
    rescan = shlex.split(result.stdout.strip().splitlines()[-1])
    invoke(*rescan[1:])
    engine = open_db(db)
    # the rewritten idx pair numbers its points anew: compare the labels as a multiset
    after = Counter(names[int(p["label"])] for p in points.read_points(engine, 2, "test"))
    want = Counter(p["label"] for p in test[2:]) + Counter([new_label])
    assert after == want and sum(after.values()) == len(test) - 1
    assert runs.get_run(engine, 2).n_train == runs.get_run(engine, 1).n_train


def test_decisions_on_test_points_write_a_run_with_its_own_test_data_into_two_folders(tmp_path):
    train = two_class_csv(tmp_path / "train.csv")
    test = tmp_path / "test.csv"
    test.write_text("x,label\n0.05,a\n0.15,b\n0.95,a\n")
    db = str(tmp_path / "a.db")
    invoke("scan", "--train", str(train), "--test", str(test), "--db", db)
    decisions = [{"split": "test", "index": 2, "action": "relabel", "label": "b"}]
    rescan = apply_and_rescan(tmp_path, db, {"run": 1, "decisions": decisions})
    clean = tmp_path / "clean"
    assert rescan[rescan.index("--train") + 1] == str(clean / "train" / "train.csv")
    assert rescan[rescan.index("--test") + 1] == str(clean / "test" / "test.csv")
    engine = open_db(db)
    names = runs.get_run(engine, 2).class_names
    got = [names[int(p["label"])] for p in points.read_points(engine, 2, "test")]
    assert got == ["a", "b", "b"]
    assert test.read_text().endswith("0.95,a\n")  # the original is untouched


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"split": "valid", "index": 0, "action": "keep"}, "split must be train or test"),
        ({"split": "test", "index": 99, "action": "keep"}, "index 99 is not a test point"),
        ({"split": "test", "index": 0, "id": "x", "action": "keep"}, "'x' is not test point 0"),
    ],
)
def test_bad_test_point_decisions_are_refused(tmp_path, item, message):
    db = str(tmp_path / "a.db")
    invoke("scan", "--train", str(two_class_csv(tmp_path / "t.csv")), "--test-split", "0.25",
           "--db", db)  # fmt: skip
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"run": 1, "decisions": [item]}))
    result = invoke("apply", "1", str(path), "--out", str(tmp_path / "o"), "--db", db, ok=False)
    assert result.exit_code == 1 and message in result.output, result.output
