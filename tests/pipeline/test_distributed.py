"""Sharded scans with torch.distributed (gloo): real torchrun jobs against a one-process scan.

torchrun runs every rank with one thread (OMP_NUM_THREADS=1); the one-process reference
runs with one thread too (``--threads 1``, or OMP_NUM_THREADS=1 for a resume), because
float32 reductions round differently with another thread count (the fit then differs in
the last bits).
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from auditor.cli import cli
from auditor.pipeline import distributed, job
from auditor.store import open_db, pairs, points, runs
from tests.helpers import assert_same_run, error_lines, run_state

ROOT = Path(__file__).resolve().parents[2]


def mnist_args(mnist_dir, *extra: str) -> list[str]:
    return ["scan", "--train", str(mnist_dir), "--classes", "1,7", "--test-split", "0.2", *extra]


def torchrun_env() -> dict[str, str]:
    """The environment of a torchrun launch: this checkout importable, one thread per
    rank, and no WORLD_SIZE inherited from an outer job."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("WORLD_SIZE", None)
    return env


def torchrun(*args: str, nproc: int = 2, script: list[str] | None = None):
    """Run ``torchrun --standalone --nproc-per-node N -m auditor ARGS`` to completion."""
    env = torchrun_env()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(nproc), *(script or ["-m", "auditor"]), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def one_thread_scan(args: list[str]) -> int:
    """A one-process scan through the CLI with one thread, as torchrun's ranks run."""
    result = CliRunner().invoke(cli, [*args, "--threads", "1"])
    assert result.exit_code == 0, result.output
    return int(result.stdout.strip().splitlines()[-1])


def killed_scan(tmp_path, mnist_dir) -> str:
    """The database of an exact 2-rank scan (run 1) whose rank 1 was SIGKILLed."""
    db = str(tmp_path / "killed.db")
    killed = torchrun(
        *mnist_args(mnist_dir, "--solver", "exact"), "--db", db,
        script=[str(ROOT / "tests" / "dying_rank.py")],
    )  # fmt: skip
    assert killed.returncode != 0
    return db


@pytest.fixture(scope="module")
def exact_reference(tmp_path_factory, mnist_dir):
    db = str(tmp_path_factory.mktemp("ref") / "one.db")
    run_id = one_thread_scan([*mnist_args(mnist_dir, "--solver", "exact"), "--db", db])
    return run_state(db, run_id)


@given(
    n=st.integers(0, 2000),
    chunk=st.integers(1, 300),
    world=st.integers(1, 9),
)
def test_shards_cover_every_test_and_training_point_once(n, chunk, world):
    blocks = distributed.test_blocks(n, chunk)
    covered = [
        j
        for r in range(world)
        for j0, j1 in distributed.shard(blocks, r, world)
        for j in range(j0, j1)
    ]
    assert sorted(covered) == list(range(n))
    assert all(j1 - j0 == chunk for j0, j1 in blocks[:-1])  # a one-process scan's blocks
    slices = [distributed.train_slice(n, r, world) for r in range(world)]
    assert [i for s in slices for i in range(s.start, s.stop)] == list(range(n))
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1


@given(done=st.sets(st.integers(0, 40)), j0=st.integers(0, 20), size=st.integers(0, 20))
def test_missing_runs_are_exactly_the_indexes_not_done(done, j0, size):
    found = distributed.missing_runs(done, j0, j0 + size)
    indexes = [j for k0, k1 in found for j in range(k0, k1)]
    assert indexes == [j for j in range(j0, j0 + size) if j not in done]
    assert all(k1 < n0 for (_, k1), (n0, _) in zip(found, found[1:], strict=False))


def test_outside_torchrun_there_is_one_rank(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert job.world_size() == 1 and not job.active()
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert job.active()


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_pair_for_pair(tmp_path, mnist_dir, exact_reference):
    db = str(tmp_path / "two.db")
    done = torchrun(*mnist_args(mnist_dir, "--solver", "exact"), "--db", db)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "1"  # only rank 0 prints the run id
    assert "2 rank(s) scored 433 test point(s)" in done.stderr
    got = run_state(db, 1)
    assert_same_run(got, exact_reference)
    shares = [(r["test_columns"], r["train_columns"]) for r in got["solver"]["ranks"]]
    assert shares == [(256, 865), (177, 865)]


@pytest.mark.slow
def test_an_error_under_torchrun_is_printed_once_by_rank_0(tmp_path):
    done = torchrun(
        "scan", "--train", str(tmp_path / "missing.csv"), "--db", str(tmp_path / "a.db")
    )
    assert done.returncode != 0
    assert error_lines(done.stderr) == [f"Error: {tmp_path / 'missing.csv'} does not exist"]


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["exact", "lissa"])
def test_more_ranks_than_training_points_equal_one_process(tmp_path, solver):
    """Three ranks, two training points: rank 2's share of the self-influences is empty
    (it once raised a RuntimeError there and the other ranks died in a collective)."""
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("x1,x2,label\n0.1,1.0,a\n1.2,-0.3,b\n")
    test.write_text("x1,x2,label\n0.0,0.9,a\n1.0,-0.1,b\n0.5,0.5,a\n")
    args = ["scan", "--train", str(train), "--test", str(test), "--solver", solver]
    done = torchrun(*args, "--db", str(tmp_path / "three.db"), nproc=3)
    assert done.returncode == 0, done.stderr[-3000:]
    one_thread_scan([*args, "--db", str(tmp_path / "one.db")])
    got = run_state(str(tmp_path / "three.db"), 1)
    assert [r["train_columns"] for r in got["solver"]["ranks"]] == [1, 1, 0]
    assert_same_run(got, run_state(str(tmp_path / "one.db"), 1))


@pytest.mark.slow
def test_two_nodes_equal_one_process_pair_for_pair(tmp_path, mnist_dir, exact_reference):
    """Two torchrun agents, one per "node" (``--nnodes 2 --node-rank 0|1``, static
    rendezvous on loopback): every rank has LOCAL_RANK 0, as on two machines."""
    db = str(tmp_path / "nodes.db")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = torchrun_env()
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"]
            + ["--node-rank", str(rank), "--nproc-per-node", "1", "--master-addr", "127.0.0.1"]
            + ["--master-port", str(port), "-m", "auditor"]
            + [*mnist_args(mnist_dir, "--solver", "exact"), "--db", db],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    (out0, err0), (out1, err1) = (node.communicate(timeout=600) for node in nodes)
    assert [n.returncode for n in nodes] == [0, 0], (err0[-2000:], err1[-2000:])
    assert (out0.strip(), out1.strip()) == ("1", "")  # only the global rank 0 prints
    got = run_state(db, 1)
    assert_same_run(got, exact_reference)
    assert [r["test_columns"] for r in got["solver"]["ranks"]] == [256, 177]


@pytest.mark.slow
def test_a_killed_rank_leaves_the_run_incomplete_and_resume_scores_only_its_blocks(
    tmp_path, mnist_dir, exact_reference
):
    db = killed_scan(tmp_path, mnist_dir)
    engine = open_db(db, create=False)
    run = runs.get_run(engine, 1, with_theta=True).as_dict()
    # rank 0 saw the lost peer (gloo raises a plain RuntimeError) or torchrun's SIGTERM
    # first; either way the run is marked, not left "running"
    assert run["status"] in ("failed", "interrupted"), run["status"]
    assert run["theta"] == exact_reference["theta"]  # rank 0 stored the fit first
    assert pairs.stored_test_indexes(engine, 1) == set(range(256))  # rank 0's block only
    assert points.read_points(engine, 1, "train") == []

    resumed = torchrun("scan", "--resume", "1", "--db", db)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "2 rank(s) scored 177 test point(s)" in resumed.stderr
    assert_same_run(run_state(db, 1), exact_reference)

    result = CliRunner().invoke(cli, ["scan", "--resume", "1", "--db", db])
    assert result.exit_code == 2 and "already complete" in result.output


@pytest.mark.slow
def test_resume_in_one_process_finishes_a_run_left_by_torchrun(
    tmp_path, mnist_dir, exact_reference, monkeypatch
):
    db = killed_scan(tmp_path, mnist_dir)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one thread, as the ranks ran
    result = CliRunner().invoke(cli, ["scan", "--resume", "1", "--db", db])
    assert result.exit_code == 0, result.output
    assert "1 rank(s) scored 177 test point(s)" in result.output
    assert_same_run(run_state(db, 1), exact_reference)


@pytest.mark.slow
def test_two_ranks_with_cg_into_postgresql_equal_one_process_sqlite(tmp_path, mnist_dir, pg_url):
    """Each CG column stops at --tol by itself, so the ranks' pair scores agree with one
    process to within cond(A) * tol however the columns are shared out."""
    args = mnist_args(mnist_dir, "--solver", "cg", "--tol", "1e-5")
    db = str(tmp_path / "one.db")
    want = run_state(db, one_thread_scan([*args, "--db", db]))
    done = torchrun(*args, "--db", pg_url)
    assert done.returncode == 0, done.stderr[-3000:]
    got = run_state(pg_url, int(done.stdout.strip()))
    assert got["status"] == "complete" and got["theta"] == want["theta"]
    scale = np.abs(want["pairs"]).max()
    assert np.abs(got["pairs"] - want["pairs"]).max() <= 1e-4 * scale
    harm_got, harm_want = (
        np.array(got["train"]["harmfulness"]),
        np.array(want["train"]["harmfulness"]),
    )
    assert np.abs(harm_got - harm_want).max() <= 1e-4 * np.abs(harm_want).max()
    assert got["solver"]["converged"] and len(got["solver"]["ranks"]) == 2


def test_resume_refuses_other_options_and_unknown_runs(tmp_path):
    runner = CliRunner()
    db = str(tmp_path / "a.db")
    assert runner.invoke(cli, ["scan", "--train", "toy-linear", "--db", db]).exit_code == 0
    result = runner.invoke(cli, ["scan", "--resume", "1", "--solver", "cg", "--db", db])
    assert result.exit_code == 2 and "drop --solver" in result.output
    result = runner.invoke(cli, ["scan", "--resume", "5", "--db", db])
    assert result.exit_code == 1 and "run 5 does not exist" in result.output
