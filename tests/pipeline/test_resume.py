"""``auditor scan --resume`` and the numeric guards, in process on real SQLite files.

The subprocess tests in ``test_crash_resume.py`` kill real scans; these take a finished run
apart in the database the way a crash leaves it (blocks missing, no ranking, no fit) and
check what resuming reuses, what it recomputes, and what it refuses.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import sqlalchemy as sa
from bs4 import BeautifulSoup
from click.testing import CliRunner

from auditor.cli import cli
from auditor.config import DataArgs, ScanConfig, SolverArgs
from auditor.errors import Interrupted, StoreError
from auditor.pipeline.scan import resume, scan
from auditor.store import open_db, pairs, points, runs
from auditor.store.schema import pair_scores
from auditor.store.schema import points as points_table
from tests.helpers import one_error, run_scan


def regression_csv(path, n=40, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = x @ np.array([1.5, -2.0]) + rng.normal(0, 0.1, n)
    x, y = x * scale, y * scale
    path.write_text(
        "a,b,target\n"
        + "".join(f"{r[0]!r},{r[1]!r},{t!r}\n" for r, t in zip(x.tolist(), y.tolist(), strict=True))
    )
    return str(path)


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def scan_in_blocks(data: str, db: str, *solver: str):
    """Scan ``data`` (a quarter held out) in blocks of 2 test points as run 1 of ``db``
    (``--solver exact`` unless ``solver`` options are given); return its engine."""
    result = invoke("scan", "--train", data, "--test-split", "0.25", "--chunk", "2",
                    *(solver or ("--solver", "exact")), "--db", db)  # fmt: skip
    assert result.exit_code == 0, result.output
    return open_db(db)


@pytest.fixture
def finished(tmp_path):
    """A complete run over 30 train and 10 test points, 5 blocks of 2 test points."""
    data = regression_csv(tmp_path / "d.csv")
    db = str(tmp_path / "a.db")
    engine = scan_in_blocks(data, db)
    return (
        engine,
        db,
        data,
        pairs.read_pair_scores(engine, 1),
        points.read_points(engine, 1, "train"),
    )


def crash(engine, *, keep_blocks_below: int, keep_fit: bool = True) -> None:
    """Leave run 1 as a SIGKILL during the pair scores would."""
    with engine.begin() as conn:
        conn.execute(sa.delete(pair_scores).where(pair_scores.c.test_idx >= keep_blocks_below))
        conn.execute(sa.delete(points_table).where(points_table.c.split == "train"))
    fields = {"status": "running", "phase": "pair_scores", "finished_at": None, "ranking": None}
    if not keep_fit:
        fields.update(theta=None, metrics=None, phase="fit")
    runs.update_run(engine, 1, **fields)


def test_resume_scores_only_the_missing_blocks(finished):
    engine, db, _, scores, train = finished
    crash(engine, keep_blocks_below=4)
    # mark the stored blocks: a resume that recomputed them would overwrite the mark
    with engine.begin() as conn:
        for j in range(4):
            blob = (scores[j] * 2).astype("<f4").tobytes()
            conn.execute(
                sa.update(pair_scores).where(pair_scores.c.test_idx == j).values(scores=blob)
            )
    result = invoke("scan", "--resume", "1", "--db", db)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == "1"
    got = pairs.read_pair_scores(engine, 1)
    np.testing.assert_array_equal(got[:4], scores[:4] * 2)  # kept, not recomputed
    np.testing.assert_array_equal(got[4:], scores[4:])  # computed again, bit for bit
    resumed = points.read_points(engine, 1, "train")
    # harmfulness sums the stored scores, marked ones included
    np.testing.assert_allclose([p["harmfulness"] for p in resumed], got.sum(axis=0), rtol=1e-5)
    # (ranks are not compared: the combined suspicion reads harmfulness, which the marks change)
    assert runs.get_run(engine, 1).as_dict()["status"] == "complete"


def test_resume_refits_when_the_fit_was_never_stored(finished):
    engine, db, _, scores, train = finished
    crash(engine, keep_blocks_below=0, keep_fit=False)
    result = invoke("scan", "--resume", "1", "--db", db)
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(pairs.read_pair_scores(engine, 1), scores, rtol=1e-6, atol=1e-9)
    resumed = points.read_points(engine, 1, "train")
    assert [(p["rank"], p["flags"]) for p in resumed] == [(p["rank"], p["flags"]) for p in train]


def test_resume_refuses_changed_data_and_leaves_the_run_alone(finished, tmp_path):
    engine, db, data, _, _ = finished
    crash(engine, keep_blocks_below=2)
    regression_csv(tmp_path / "d.csv", seed=1)  # same file, other numbers
    result = invoke("scan", "--resume", "1", "--db", db)
    assert result.exit_code == 1
    one_error(result.output, "run 1: the data changed since the run started")
    run = runs.get_run(engine, 1).as_dict()
    assert (run["status"], run["phase"]) == ("running", "pair_scores")
    assert pairs.count_pairs(engine, 1) == 2 * 30


def test_resume_refuses_data_whose_classes_were_renamed(tmp_path):
    """Renaming a class keeps features, targets and ids (so the fingerprint) but not the
    labels the run's flags and decisions speak of."""

    def write(names):  # the same numbers every time
        rng = np.random.default_rng(0)
        rows = [(rng.normal(2.0 * (i % 2), 1.0), names[i % 2]) for i in range(24)]
        (tmp_path / "c.csv").write_text("x,label\n" + "".join(f"{x!r},{n}\n" for x, n in rows))

    write(["cat", "dog"])
    db = str(tmp_path / "c.db")
    data = str(tmp_path / "c.csv")
    engine = scan_in_blocks(data, db)
    crash(engine, keep_blocks_below=2)
    write(["cat", "emu"])  # same numbers; "emu" sorts after "cat" as "dog" did
    result = invoke("scan", "--resume", "1", "--db", db)
    assert result.exit_code == 1
    one_error(result.output, "run 1: the data changed since the run started", "'emu'", "'dog'")
    run = runs.get_run(engine, 1).as_dict()
    assert (run["status"], run["phase"], run["class_names"]) == (
        "running",
        "pair_scores",
        ["cat", "dog"],
    )
    write(["cat", "dog"])  # the data as it was: resumed
    result = invoke("scan", "--resume", "1", "--db", db)
    assert result.exit_code == 0, result.output
    assert runs.get_run(engine, 1).as_dict()["status"] == "complete"


def test_resume_finishes_a_failed_run(finished):
    engine, db, _, scores, _ = finished
    crash(engine, keep_blocks_below=6)
    runs.fail_run(engine, 1, "disk full")
    assert invoke("runs", "--db", db).output.splitlines()[1].split()[1] == "failed"
    result = invoke("scan", "--resume", "1", "--db", db)
    assert result.exit_code == 0, result.output
    run = runs.get_run(engine, 1).as_dict()
    assert (run["status"], run["error"]) == ("complete", None)
    np.testing.assert_array_equal(pairs.read_pair_scores(engine, 1), scores)


def test_scores_beyond_float32_are_never_stored(tmp_path):
    data = regression_csv(tmp_path / "huge.csv", scale=1e37)
    db = str(tmp_path / "h.db")
    args = ["scan", "--train", data, "--test-split", "0.25", "--solver", "exact", "--db", db]
    result = invoke(*args, "--dtype", "float64")  # the fit works; the scores overflow float32
    assert result.exit_code == 1
    one_error(result.output, "non-finite pair scores")
    engine = open_db(db)
    assert runs.get_run(engine, 1).as_dict()["status"] == "failed"
    assert pairs.count_pairs(engine, 1) == 0
    result = invoke(*args)  # float32: the fit itself overflows
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "the fit overflowed" in result.output
    assert runs.get_run(engine, 2).as_dict()["status"] == "failed"
    assert pairs.count_pairs(engine, 2) == 0


def test_lissa_divergence_fails_the_run_with_the_scale_that_converges(tmp_path):
    db = str(tmp_path / "l.db")
    data = regression_csv(tmp_path / "d.csv")
    result = invoke("scan", "--train", data, "--test-split", "0.25", "--solver", "lissa",
                    "--scale", "0.01", "--db", db)  # fmt: skip
    assert result.exit_code == 1
    one_error(result.output, "diverged", "--scale")
    engine = open_db(db)
    run = runs.get_run(engine, 1).as_dict()
    assert run["status"] == "failed" and "diverged" in run["error"]
    assert pairs.count_pairs(engine, 1) == 0


def test_a_fit_far_from_an_optimum_is_flagged_in_the_run_and_the_report(tmp_path):
    data = regression_csv(tmp_path / "d.csv", scale=30.0)
    engine, result = run_scan(tmp_path / "f.db", DataArgs(train=data, test_split=0.25), max_iter=1)
    run = runs.get_run(engine, result.run_id).as_dict()
    assert run["metrics"]["grad_norm"] > 1e-3
    far = [w for w in run["warnings"] if "far from an optimum" in w]
    assert far == [w for w in result.warnings if "far from an optimum" in w] and len(far) == 1
    out = tmp_path / "r.html"
    report = invoke("report", "--out", str(out), "--db", str(tmp_path / "f.db"))
    assert report.exit_code == 0, report.output
    soup = BeautifulSoup(out.read_text(encoding="utf-8"), "html.parser")
    alerts = soup.select_one("header .warnings[role=alert]").get_text()
    assert "far from an optimum" in alerts


def test_a_second_scan_resuming_the_same_run_is_detected(finished):
    engine, _, _, scores, _ = finished
    crash(engine, keep_blocks_below=2)

    written = []

    def other_scan_writes_ahead(phase, done, total):
        # another process resuming run 1 stores the block this one computes next (block
        # 2..3 may still be committing on the writer thread: the write waits for its lock)
        if phase == "pair scores" and done == 4 and not written:
            with engine.begin() as conn:
                pairs.write_pair_scores(conn, 1, 4, scores[4:6])
            written.append(4)

    with pytest.raises(StoreError, match="test points 4..5 appeared .* another scan"):
        resume(engine, 1, progress=other_scan_writes_ahead)
    run = runs.get_run(engine, 1).as_dict()
    assert run["status"] == "failed" and "another scan" in run["error"]


def test_a_resume_keeps_the_runs_solver_record_warnings_and_timings(tmp_path):
    """LiSSA at depth 3 does not converge; a Ctrl-C in the ranking leaves every column
    solved, so the resume solves none: the run keeps what its solve found."""
    db = str(tmp_path / "i.db")
    engine = open_db(db)
    config = ScanConfig(
        data=DataArgs(train="toy-linear"), solver=SolverArgs(solver="lissa", depth=3)
    )

    def ctrl_c_in_the_ranking(phase, done, total):
        if phase == "ranking refits":
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        scan(engine, config, progress=ctrl_c_in_the_ranking)
    before = runs.get_run(engine, 1).as_dict()
    assert (before["status"], before["phase"]) == ("interrupted", "ranking")
    assert before["solver"]["converged"] is False
    result = invoke("scan", "--resume", "1", "--db", db)
    assert result.exit_code == 0, result.output
    run = runs.get_run(engine, 1).as_dict()
    assert run["status"] == "complete"
    for key in ("solver", "converged", "residual_max", "residual_mean", "iterations", "tol"):
        assert run["solver"][key] == before["solver"][key], key
    assert run["solver"]["self_influence"]["converged"] is True
    assert len(run["warnings"]) == 1
    assert "the lissa solve did not reach the tolerance" in run["warnings"][0]
    assert "did not reach the tolerance" in result.output
    # the interrupted scan's phases are kept, the resume's added to them
    assert {"load", "fit", "gradients", "ihvp", "pair_scores", "ranking"} <= set(run["timings"])
    assert all(run["timings"][k] >= v for k, v in before["timings"].items())
    assert run["timings"]["load"] > before["timings"]["load"]


def test_a_resume_merges_the_stored_solve_with_the_columns_it_solves(tmp_path):
    data = regression_csv(tmp_path / "l.csv")
    db = str(tmp_path / "l.db")
    engine = scan_in_blocks(data, db, "--solver", "lissa", "--depth", "3")
    before = runs.get_run(engine, 1).as_dict()
    assert before["solver"]["converged"] is False and len(before["warnings"]) == 1
    crash(engine, keep_blocks_below=4)  # 6 of the 10 columns are solved again
    result = invoke("scan", "--resume", "1", "--db", db)
    assert result.exit_code == 0, result.output
    run = runs.get_run(engine, 1).as_dict()
    assert run["solver"]["converged"] is False
    assert run["solver"]["residual_max"] >= before["solver"]["residual_max"]
    assert run["solver"]["iterations"] == 3
    assert len(run["warnings"]) == 1 and "did not reach the tolerance" in run["warnings"][0]
    assert all(run["timings"][k] >= v for k, v in before["timings"].items())
    assert run["timings"]["load"] > before["timings"]["load"]


@pytest.mark.slow
def test_a_cnn_run_resumes_from_its_stored_network(tmp_path, mnist_dir):
    """The CNN keeps fitted state outside theta (the frozen body, the input scale); the run
    stores it with theta, so a resume scores the missing blocks with the same network."""
    db = str(tmp_path / "cnn.db")
    args = ["scan", "--train", str(mnist_dir), "--classes", "1,7", "--test-split", "0.05"]
    args += ["--model", "cnn", "--epochs", "1", "--hidden", "8", "--trim", "0"]
    args += ["--chunk", "32", "--solver", "exact", "--db", db]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    engine = open_db(db)
    scores = pairs.read_pair_scores(engine, 1)
    crash(engine, keep_blocks_below=64)
    resumed = invoke("scan", "--resume", "1", "--db", db)
    assert resumed.exit_code == 0, resumed.output
    got = pairs.read_pair_scores(engine, 1)
    np.testing.assert_array_equal(got[:64], scores[:64])
    np.testing.assert_allclose(got[64:], scores[64:], rtol=1e-5, atol=1e-7)
    assert runs.get_run(engine, 1).as_dict()["status"] == "complete"
