"""Crashes and concurrency (issue 6), with real ``python -m auditor scan`` subprocesses.

A scan killed with SIGKILL at several points never reads as finished, and
``scan --resume`` then completes it with the pair scores, ranks and flags of an
uninterrupted scan. Ctrl-C (SIGINT) and SIGTERM stop a scan with exit status 130 and leave
it resumable. Two scans writing into one new SQLite file at once both finish.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from auditor.cli import cli
from auditor.store import open_db, pairs, points, runs
from tests.helpers import error_lines

ROOT = Path(__file__).resolve().parents[2]
N_TEST = 433  # MNIST 1-vs-7 of the shared test set, 20 % held out
pytestmark = pytest.mark.slow


def scan_args(mnist_dir: Path) -> list[str]:
    """A scan with 109 committed blocks of pair scores (4 test points each)."""
    return [
        "--train", str(mnist_dir), "--classes", "1,7", "--test-split", "0.2",
        "--solver", "exact", "--chunk", "4",
    ]  # fmt: skip


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "auditor", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def progress(db: Path) -> tuple[str | None, str | None, int]:
    """``(status, phase, stored test rows)`` of run 1, read without writing."""
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
            row = conn.execute("select status, phase from runs where id = 1").fetchone()
            n = conn.execute("select count(*) from pair_scores where run_id = 1").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return None, None, 0
    return (*(row or (None, None)), n)


def stop_when(proc: subprocess.Popen, db: Path, ready, sig=signal.SIGKILL) -> tuple:
    """Send ``sig`` to ``proc`` as soon as ``ready(status, phase, rows)`` holds."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        state = progress(db)
        if ready(*state):
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=120)
            return state, proc.returncode, err
        if proc.poll() is not None:
            pytest.fail(f"the scan ended before the kill point: {proc.communicate()}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail("the kill point was never reached")


def assert_incomplete(db: Path) -> None:
    """The run reads as unfinished everywhere a user could look."""
    engine = open_db(str(db), create=False)
    run = runs.get_run(engine, 1).as_dict()
    assert run["status"] in ("running", "interrupted"), run["status"]
    listing = CliRunner().invoke(cli, ["runs", "--db", str(db)])
    # killed outright, the run still says running; its dead writer makes it stale
    shown = {"running": "stale", "interrupted": "interrupted"}[run["status"]]
    assert listing.output.splitlines()[1].split()[1] == shown
    if shown == "stale":
        assert f"process {run['owner_pid']}" in listing.output
        assert "auditor scan --resume 1" in listing.output.splitlines()[-1]
    for args in (["show", "1", "--test-index", "0"], ["export", "1"]):
        result = CliRunner().invoke(cli, [*args, "--db", str(db)])
        assert result.exit_code == 1 and "not complete" in result.output
        assert "--resume 1" in result.output
    engine.dispose()


def snapshot(db: Path, run_id: int) -> dict:
    engine = open_db(str(db), create=False)
    run = runs.get_run(engine, run_id).as_dict()
    keep = ("idx", "point_id", "label", "predicted", "loss", "self_influence", "harmfulness",
            "suspicion", "rank", "flags")  # fmt: skip
    out = {
        "status": run["status"],
        "metrics": run["metrics"],
        "warnings": run["warnings"],
        "ranking": run["ranking"],
        "scores": pairs.read_pair_scores(engine, run_id),
        "train": [{k: p[k] for k in keep} for p in points.read_points(engine, run_id, "train")],
        "test": [{k: p[k] for k in keep} for p in points.read_points(engine, run_id, "test")],
    }
    engine.dispose()
    return out


def assert_same_result(got: dict, want: dict) -> None:
    assert got["status"] == "complete"
    assert got["scores"].shape == want["scores"].shape == (N_TEST, 1730)
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-6, atol=1e-9)
    for a, b in zip(got["train"], want["train"], strict=True):
        assert (a["rank"], a["flags"], a["point_id"]) == (b["rank"], b["flags"], b["point_id"])
        for k in ("loss", "self_influence", "harmfulness", "suspicion"):
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), k
    assert got["test"] == want["test"]
    assert got["warnings"] == want["warnings"]
    assert got["ranking"]["flag_counts"] == want["ranking"]["flag_counts"]
    for k in ("train_loss", "test_loss", "grad_norm", "train_accuracy", "test_accuracy"):
        assert got["metrics"][k] == pytest.approx(want["metrics"][k], rel=1e-6, abs=1e-12), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mnist_dir) -> dict:
    db = tmp_path_factory.mktemp("base") / "base.db"
    proc = start(["scan", *scan_args(mnist_dir), "--db", str(db)])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return snapshot(db, 1)


def test_sigkill_at_several_points_then_resume_equals_an_uninterrupted_scan(
    tmp_path, mnist_dir, uninterrupted
):
    db = tmp_path / "killed.db"
    resume = ["scan", "--resume", "1", "--db", str(db)]

    # 0. as soon as the database file appears (the CLI opens it before loading the data):
    # it then opens as a consistent, empty database at the current schema
    early = tmp_path / "early.db"
    proc = start(["scan", *scan_args(mnist_dir), "--db", str(early)])
    while not early.exists():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.001)
    proc.kill()
    proc.communicate(timeout=120)
    listing = CliRunner().invoke(cli, ["runs", "--db", str(early)])
    assert (listing.exit_code, listing.output.strip()) == (0, "no runs yet")

    # 1. as soon as the run row exists (loading is over; the fit may not be)
    state, code, _ = stop_when(
        start(["scan", *scan_args(mnist_dir), "--db", str(db)]), db, lambda s, p, n: s
    )
    assert code == -signal.SIGKILL and state[2] == 0
    assert_incomplete(db)

    # 2. part-way through the pair scores, after some blocks are committed
    state, code, _ = stop_when(start(resume), db, lambda s, p, n: n >= 100)
    assert code == -signal.SIGKILL
    stored = progress(db)[2]
    assert 100 <= stored < N_TEST and stored % 4 == 0  # whole blocks only
    assert_incomplete(db)

    # 3. while ranking: every pair is stored, yet the run is not finished
    state, code, _ = stop_when(start(resume), db, lambda s, p, n: p == "ranking")
    assert code == -signal.SIGKILL
    assert progress(db)[2] == N_TEST
    assert_incomplete(db)

    # 4. the last resume runs to the end
    proc = start(resume)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert out.strip() == "1"
    assert_same_result(snapshot(db, 1), uninterrupted)
    again = CliRunner().invoke(cli, [*resume])
    assert again.exit_code == 2 and "already complete" in again.output


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_stops_cleanly_and_the_run_resumes(tmp_path, mnist_dir, uninterrupted, sig):
    db = tmp_path / "int.db"
    _, code, err = stop_when(
        start(["scan", *scan_args(mnist_dir), "--db", str(db)]), db, lambda s, p, n: n >= 40, sig
    )
    assert code == 130, err
    assert "Traceback" not in err
    assert error_lines(err) == [
        f"Error: interrupted; run 1 is incomplete: finish it with "
        f"`auditor scan --resume 1 --db {db}`"
    ]
    engine = open_db(str(db), create=False)
    run = runs.get_run(engine, 1).as_dict()
    assert run["status"] == "interrupted" and run["error"] == "interrupted"
    assert 40 <= pairs.count_pairs(engine, 1) // 1730 < N_TEST
    engine.dispose()
    assert_incomplete(db)
    result = CliRunner().invoke(cli, ["scan", "--resume", "1", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert_same_result(snapshot(db, 1), uninterrupted)


def test_ctrl_c_while_loading_writes_nothing(tmp_path, mnist_dir):
    db = tmp_path / "early.db"
    proc = start(["scan", *scan_args(mnist_dir), "--db", str(db)])
    # the database exists (schema created) before the data is loaded
    deadline = time.monotonic() + 300
    while not (db.exists() and progress(db)[0] is None and _has_schema(db)):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if progress(db)[0] is not None:  # the load won the race: covered by the test above
        pytest.skip("the run was created before the signal arrived")
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert error_lines(err) == ["Error: interrupted; nothing was written"]


def _has_schema(db: Path) -> bool:
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
            return conn.execute("select count(*) from alembic_version").fetchone()[0] == 1
    except sqlite3.OperationalError:
        return False


def test_two_scans_into_one_new_database_at_once(tmp_path, mnist_dir, uninterrupted):
    db = tmp_path / "shared.db"
    procs = [start(["scan", *scan_args(mnist_dir), "--db", str(db)]) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    assert sorted(int(out.strip()) for out, _ in outputs) == [1, 2]
    for run_id in (1, 2):
        assert_same_result(snapshot(db, run_id), uninterrupted)
