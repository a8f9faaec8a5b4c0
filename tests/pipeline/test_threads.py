"""The scan's CPU threads: the usable cores by default, --threads when given, stored."""

import os

import pytest
import torch
from click.testing import CliRunner

from auditor.cli import cli
from auditor.pipeline.threads import choose_threads, usable_cores
from auditor.store import open_db, runs


def test_the_usable_cores_follow_the_affinity_and_a_cgroup_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    assert usable_cores(tmp_path / "missing") == affinity
    quota.write_text("max 100000\n")
    assert usable_cores(quota) == affinity
    quota.write_text("50000 100000\n")  # half a core: one thread
    assert usable_cores(quota) == 1
    quota.write_text(f"{affinity * 300000} 100000\n")  # a quota above the mask: the mask
    assert usable_cores(quota) == affinity


@pytest.mark.parametrize(
    ("requested", "ranks", "cores", "omp", "want"),
    [
        (None, 1, 16, None, 16),
        (None, 4, 16, None, 4),
        (None, 3, 2, None, 1),
        (3, 4, 16, None, 3),
        (1, 1, 2, None, 1),
        (None, 4, 16, "1", 1),  # torchrun's default for each rank
        (None, 1, 16, "6", 6),
        (2, 1, 16, "6", 2),  # --threads wins
        (None, 2, 16, "zero", 8),  # not a count: ignored
        (None, 2, 16, "0", 8),
    ],
)
def test_local_ranks_share_the_cores_unless_threads_are_given(requested, ranks, cores, omp, want):
    environ = {} if omp is None else {"OMP_NUM_THREADS": omp}
    assert choose_threads(requested, ranks, cores, environ) == want


@pytest.mark.parametrize("given", [None, 1])
def test_a_scan_stores_the_threads_it_used_and_restores_torchs(tmp_path, given, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    db = tmp_path / "a.db"
    before = torch.get_num_threads()
    args = ["scan", "--train", "toy-linear", "--solver", "exact", "--db", str(db)]
    result = CliRunner().invoke(cli, args + ([] if given is None else ["--threads", str(given)]))
    assert result.exit_code == 0, result.output
    run = runs.get_run(open_db(str(db)), 1)
    assert run.metrics["threads"] == (usable_cores() if given is None else given)
    assert run.config["threads"] == given
    assert torch.get_num_threads() == before


def test_threads_below_one_are_refused(tmp_path):
    result = CliRunner().invoke(cli, ["scan", "--train", "toy-linear", "--threads", "0"])
    assert result.exit_code == 2 and "--threads" in result.output
