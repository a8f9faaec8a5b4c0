"""The seams of the scan: the run writer (rank 0 writes, each write held from Ctrl-C) and
the collectives' helpers in one process."""

import os
import signal

import numpy as np
import pytest
import torch

from auditor.errors import Interrupted
from auditor.pipeline.distributed import Comm
from auditor.pipeline.interrupts import interruptible
from auditor.store import open_db, points, runs
from auditor.store.writer import RunWriter

FIELDS = {
    "config": {},
    "dataset": "d",
    "task": "regression",
    "model": "linear",
    "n_train": 1,
    "n_test": 1,
    "data_fingerprint": "f",
}
ROW = {"idx": 0, "point_id": "0", "label": 1.0, "predicted": 1.0, "loss": 0.0}


def every_write(writer: RunWriter, run_id: int | None = None) -> None:
    """Each method of the writer once, in the order of a scan (a resume if ``run_id``)."""
    if run_id is None:
        writer.create(FIELDS)
    else:
        writer.restart(run_id)
    writer.mark_phase("fit")
    writer.store_fit(b"\0\0\0\0", {"risk": 1.0})
    writer.write_points("test", [ROW])
    writer.update_solver({"solver": "exact"})
    writer.write_points("train", [ROW])
    writer.fail("stopped", "interrupted", {"fit": 1.0})
    writer.finish(metrics={}, timings={"fit": 2.0})


def test_the_run_writer_writes_nothing_off_rank_0(tmp_path):
    engine = open_db(str(tmp_path / "a.db"))
    writer = RunWriter(engine, rank=1)
    every_write(writer)
    assert writer.run_id is None and [r.as_dict() for r in runs.list_runs(engine)] == []
    run_id = RunWriter(engine).create(FIELDS)
    before = runs.get_run(engine, run_id, with_theta=True).as_dict()
    every_write(RunWriter(engine, rank=3), run_id)  # a resume's other rank
    assert runs.get_run(engine, run_id, with_theta=True).as_dict() == before
    assert points.read_points(engine, run_id, "train") == []


def test_the_run_writer_on_rank_0_writes_the_run(tmp_path):
    engine = open_db(str(tmp_path / "a.db"))
    writer = RunWriter(engine)
    every_write(writer)
    run = runs.get_run(engine, writer.run_id, with_theta=True).as_dict()
    assert (run["status"], run["phase"], run["theta"]) == ("complete", "done", b"\0\0\0\0")
    assert run["solver"] == {"solver": "exact"} and run["timings"] == {"fit": 2.0}
    assert len(points.read_points(engine, writer.run_id, "test")) == 1


def test_a_signal_during_a_write_of_the_run_writer_waits_for_it(tmp_path, monkeypatch):
    engine = open_db(str(tmp_path / "a.db"))
    writer = RunWriter(engine)
    writer.create(FIELDS)
    mark_phase = runs.mark_phase

    def interrupted_write(*args):
        os.kill(os.getpid(), signal.SIGINT)
        mark_phase(*args)

    monkeypatch.setattr(runs, "mark_phase", interrupted_write)
    with pytest.raises(Interrupted), interruptible(writer.run_id):
        writer.mark_phase("ihvp")
    assert runs.get_run(engine, writer.run_id).as_dict()["phase"] == "ihvp"  # the write finished


def test_the_collective_helpers_are_the_identity_in_one_process():
    comm = Comm()
    si = torch.arange(3.0)
    assert torch.equal(comm.cat(si), si)
    harm = np.array([1.0, 2.0], dtype=np.float32)
    total = comm.sum_in_rank_order(harm)
    assert total.dtype == np.float64 and np.array_equal(total, harm)
    assert comm.slowest({"fit": 1.5}) == {"fit": 1.5}
    assert comm.root_value(lambda a: a + 1, 1) == 2
    diag = {"solver": "cg", "converged": True, "iterations": 4, "residual_max": 1e-6}
    record = comm.solver_record((diag, 3), (None, 5))
    assert record == {**diag, "self_influence": None}  # no "ranks" in one process
