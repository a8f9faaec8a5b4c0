"""``auditor evaluate`` end to end: CLI table, database rows, and the detection target."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from auditor.cli import cli
from auditor.evaluation.metrics import RANKINGS
from auditor.evaluation.paired import combined_against_each
from auditor.store import open_db, points, runs
from auditor.store.evaluations import read_evaluation, results_for_run
from tests.helpers import separable_csv

MNIST17 = ["--classes", "1,7", "--test-split", "0.2", "--solver", "exact"]


def run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_evaluate_cli_prints_table_and_stores_rows(tmp_path, mnist_dir):
    db = str(tmp_path / "e.db")
    result = run(
        ["evaluate", "--train", str(mnist_dir), *MNIST17, "--weight-decay", "0.001"]
        + ["--faults", "flip", "--rate", "0.1", "--seeds", "0,1", "--db", db]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("evaluation 1: flip 10%, seeds 0,1, 173 faults of 1730")
    table = {line[:20].strip(): line[20:].split() for line in lines[2:8]}
    assert list(table) == list(RANKINGS)
    assert "fix experiment" in result.stdout
    flagged = lines[lines.index("flagged points against the faults") + 2 :][:2]
    assert [line.split("  ")[0] for line in flagged] == [
        "flags (combined)",
        "label issues (confident learning)",
    ]
    assert "combined against each ranking, paired over the seeds" in result.stdout
    assert lines[-1].startswith("runs scanned: ")

    engine = open_db(db)
    evaluation, rows = read_evaluation(engine, 1)
    assert evaluation["seeds"] == [0, 1] and evaluation["faults"]["kind"] == "flip"
    assert len(rows) == 2 * len(RANKINGS)
    by = {(r["seed"], r["ranking"]): r for r in rows}
    for seed in (0, 1):
        run_rows = results_for_run(engine, by[(seed, "combined")]["run_id"])
        assert {r["ranking"] for r in run_rows} == set(RANKINGS)
        # AUROC of training loss, recomputed by brute force from the run's stored points
        train = points.read_points(engine, by[(seed, "combined")]["run_id"], "train")
        loss = np.array([p["loss"] for p in train])
        assert by[(seed, "random")]["n_faults"] == 173
        # the scan's flags, scored as a set against the faults the run's points hold
        flags = by[(seed, "combined")]["flags"]
        assert flags["count"] == sum(bool(p["flags"]) for p in train)
        assert flags["precision"] == pytest.approx(flags["faults"] / flags["count"])
        assert flags["recall"] == pytest.approx(flags["faults"] / 173)
        assert flags["precision"] > 0.9 and flags["recall"] > 0.8
        assert by[(seed, "confident learning")]["flags"]["count"] > 0
        assert by[(seed, "training loss")]["flags"] is None
        assert f"{by[(seed, 'combined')]['run_id']} (seed {seed})" in lines[-1]
        curve = np.array(by[(seed, "combined")]["curve"])
        assert np.all(np.diff(curve[:, 1]) >= 0) and curve[-1, 1] == 1.0
        assert by[(seed, "combined")]["auroc"] > 0.99
        assert 0.35 < by[(seed, "random")]["auroc"] < 0.65
        # the fix experiment ran for combined and random only, one row per checked share
        fix = by[(seed, "combined")]["fix"]
        assert [f["fraction"] for f in fix] == [0.05, 0.1, 0.2]
        assert all(f["fixed"] <= f["k"] for f in fix)
        assert by[(seed, "training loss")]["fix"] is None
        found = by[(seed, "combined")]["found"]
        assert [f["fixed"] / 173 for f in fix] == [found["0.05"], found["0.1"], found["0.2"]]
        # restoring (almost) every fault brings the test loss (almost) back to the clean one
        assert fix[-1]["loss_recovered"] > 0.9
        assert len(loss) == 1730
    # the paired tests printed are those of the stored rows
    for compared in combined_against_each(rows, 0.1):
        verdict = "worse" if compared.worse else "not worse"
        printed = f"{compared.mean_difference:+.4f}"
        assert any(
            line.startswith(compared.other) and printed in line and line.endswith(verdict)
            for line in lines
        )
    # the mean in the summary is the mean of the stored rows
    mean = np.mean([by[(s, "combined")]["auroc"] for s in (0, 1)])
    assert evaluation["summary"]["combined"]["auroc"][0] == pytest.approx(mean)
    assert f"{mean:.4f}" == table["combined"][0]


def test_evaluate_loss_auroc_matches_pair_count(tmp_path, mnist_dir):
    db = str(tmp_path / "e.db")
    result = run(
        ["evaluate", "--train", str(mnist_dir), *MNIST17, "--faults", "class-flip:7>1"]
        + ["--rate", "0.2", "--no-fix", "--db", db]
    )
    assert result.exit_code == 0, result.output
    engine = open_db(db)
    _, rows = read_evaluation(engine, 1)
    row = next(r for r in rows if r["ranking"] == "training loss")
    train = points.read_points(engine, row["run_id"], "train")
    loss = np.array([p["loss"] for p in train])
    # class "7" points now labelled "1" are the faults: recover them from the clean split
    from auditor.config import DataArgs
    from auditor.pipeline.scan import load_data

    clean, _ = load_data(DataArgs(train=str(mnist_dir), classes=["1", "7"], test_split=0.2))
    labels = np.array([p["label"] for p in train])
    is_fault = labels != clean.targets.numpy()
    assert is_fault.sum() == row["n_faults"]
    pos, neg = loss[is_fault], loss[~is_fault]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg)
    )
    assert row["auroc"] == pytest.approx(brute)


def test_evaluate_usage_errors(tmp_path):
    db = str(tmp_path / "e.db")
    result = run(["evaluate", "--train", "toy-linear", "--faults", "flip", "--db", db])
    assert result.exit_code == 1 and "needs class labels" in result.output
    result = run(["evaluate", "--train", "toy-linear", "--faults", "class-flip:7", "--db", db])
    assert result.exit_code == 2 and "class-flip:SOURCE>TARGET" in result.output
    result = run(["evaluate", "--train", "toy-linear", "--seeds", "a", "--db", db])
    assert result.exit_code == 2
    outlier = ["evaluate", "--train", "toy-linear", "--faults", "outlier", "--db", db]
    for option, value, message in [
        ("--seeds", "-1", "--seeds must lie in 0.."),
        ("--seeds", str(2**64), "--seeds must lie in 0.."),
        ("--checked", "0.1,0.1", "--checked must not repeat a fraction"),
    ]:
        result = run([*outlier, option, value])
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
    assert not Path(db).exists() or [r.as_dict() for r in runs.list_runs(open_db(db))] == []


def test_evaluate_toy_regression_outliers(tmp_path):
    db = str(tmp_path / "e.db")
    result = run(
        ["evaluate", "--train", "toy-linear", "--solver", "exact", "--faults", "outlier"]
        + ["--rate", "0.1", "--seeds", "0,1", "--db", db]
    )
    assert result.exit_code == 0, result.output
    _, rows = read_evaluation(open_db(db), 1)
    assert {r["n_faults"] for r in rows} == {2}
    assert all(r["fix"][0]["test_accuracy"] is None for r in rows if r["fix"])


def test_evaluate_prints_each_scans_warnings(tmp_path):
    """A scan's warnings (here: clean separable classes without weight decay) are printed as
    `auditor scan` prints them, once per seed, and not into the --json output."""
    data = separable_csv(tmp_path / "sep.csv")
    db = str(tmp_path / "e.db")
    args = ["evaluate", "--train", data, "--test-split", "0.25", "--weight-decay", "0"]
    result = run([*args, "--faults", "none", "--seeds", "0,1", "--json", "--db", db])
    assert result.exit_code == 0, result.output
    engine = open_db(db)
    for seed, run_id in ((0, 1), (1, 2)):
        stored = runs.get_run(engine, run_id).as_dict()["warnings"]
        assert any(w.startswith("the fit is not at an optimum") for w in stored)
        for warning in stored:
            assert result.stderr.count(f"warning: seed {seed} (run {run_id}): {warning}") == 1
    assert json.loads(result.stdout)


def test_evaluate_json_is_standard_json_without_nan(tmp_path):
    """Regression has no accuracy and clean data no faults to find: those metrics are
    null, not the NaN token that jq, JavaScript and PostgreSQL's json refuse."""
    db = str(tmp_path / "e.db")
    for faults in ("outlier", "none"):
        result = run(
            ["evaluate", "--train", "toy-linear", "--solver", "exact", "--faults", faults]
            + ["--rate", "0.1", "--seeds", "0,1", "--json", "--db", db]
        )
        assert result.exit_code == 0, result.output

        def refuse(token):
            raise AssertionError(f"non-standard JSON token {token}")

        payload = json.loads(result.stdout, parse_constant=refuse)
        assert "null" in result.stdout and payload


@pytest.mark.slow
def test_combined_ranking_reaches_target_on_mnist_1_vs_7(tmp_path, mnist_dir):
    db = str(tmp_path / "e.db")
    result = run(
        ["evaluate", "--train", str(mnist_dir), *MNIST17, "--weight-decay", "0.001"]
        + ["--faults", "flip", "--rate", "0.1", "--seeds", "0", "--no-fix", "--db", db]
    )
    assert result.exit_code == 0, result.output
    _, rows = read_evaluation(open_db(db), 1)
    by = {r["ranking"]: r for r in rows}
    assert by["combined"]["auroc"] >= 0.998
    assert by["combined"]["found"]["0.1"] >= 0.95


def three_class_csv(path: Path, n: int = 120) -> str:
    """Three well separated classes ``a``, ``b``, ``c`` of 2-D points."""
    rng = np.random.default_rng(0)
    label = np.arange(n) % 3
    x = rng.normal(size=(n, 2)) + 4.0 * np.stack([label == 1, label == 2], axis=1)
    lines = [f"{u!r},{v!r},{'abc'[k]}" for (u, v), k in zip(x.tolist(), label, strict=True)]
    path.write_text("a,b,label\n" + "\n".join(lines) + "\n")
    return str(path)


def test_evaluate_class_flip_cycle_and_pairs_stored(tmp_path):
    data = three_class_csv(tmp_path / "three.csv")
    db = str(tmp_path / "e.db")
    base = ["evaluate", "--train", data, "--test-split", "0.25", "--solver", "exact"]
    for faults in ("class-flip:cycle", "class-flip:a>b,b>a"):
        result = run([*base, "--faults", faults, "--rate", "0.2", "--no-fix", "--db", db])
        assert result.exit_code == 0, result.output
        assert f"{faults.replace(':', ' ')} 20%, seeds 0" in result.stdout
    engine = open_db(db)
    (cycle, cycle_rows), (pairs, pair_rows) = (read_evaluation(engine, i) for i in (1, 2))
    assert cycle["faults"] == {
        "kind": "class-flip",
        "rate": 0.2,
        "source": None,
        "target": None,
        "cycle": True,
    }
    assert pairs["faults"]["pairs"] == [["a", "b"], ["b", "a"]]
    # which points changed, and to what: the stored labels against the clean split
    from auditor.config import DataArgs
    from auditor.pipeline.scan import load_data

    clean, _ = load_data(DataArgs(train=data, test_split=0.25, seed=0))
    before = clean.targets.numpy()
    for rows, mapping in (  # class names a, b, c are labels 0, 1, 2
        (cycle_rows, {0: 1, 1: 2, 2: 0}),
        (pair_rows, {0: 1, 1: 0}),
    ):
        row = rows[0]
        train = points.read_points(engine, row["run_id"], "train")
        after = np.array([p["label"] for p in train]).astype(int)
        moved = np.flatnonzero(after != before)
        assert len(moved) == row["n_faults"]
        assert set(before[moved]) == set(mapping)
        for source, target in mapping.items():
            assert (after[moved][before[moved] == source] == target).all()
            assert (before[moved] == source).sum() == round(0.2 * (before == source).sum())


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        ("class-flip:a>z", "class-flip a>z: class 'z' is not one of ['a', 'b', 'c']"),
        ("class-flip:a>b,a>c", "source class 'a' is listed twice"),
        ("class-flip:b>b", "class-flip b>b: a class cannot be flipped to itself"),
        ("class-flip:a>b;b>a", "expected class-flip:SOURCE>TARGET"),
    ],
)
def test_evaluate_bad_class_flip_is_a_usage_error(tmp_path, faults, message):
    data = three_class_csv(tmp_path / "three.csv")
    db = str(tmp_path / "e.db")
    result = run(
        ["evaluate", "--train", data, "--test-split", "0.25", "--faults", faults, "--db", db]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
