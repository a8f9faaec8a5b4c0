"""The writer thread that commits pair-score blocks while the next block is scored."""

import contextlib
import threading
import time

import numpy as np
import pytest

from auditor.errors import StoreError
from auditor.pipeline import blocks
from auditor.pipeline.blocks import BlockWriter


class Phases:
    """What BlockWriter needs of the scan's phase timer."""

    def __init__(self):
        self.timings = {}

    def __call__(self, name, mark=True):
        return contextlib.nullcontext()


@pytest.fixture
def commits(monkeypatch):
    """Replace the transaction by a slow fake that logs when each block starts and ends."""
    log = []

    def slow_commit(engine, run_id, done, j0, scores):
        log.append(("start", j0, threading.current_thread().name))
        time.sleep(0.2)
        if j0 == 99:
            raise StoreError("disk full")
        log.append(("end", j0, threading.current_thread().name))

    monkeypatch.setattr(blocks, "commit_block", slow_commit)
    return log


def test_a_block_commits_while_the_next_is_scored_one_at_a_time_in_order(commits):
    scores = np.zeros((2, 3), dtype=np.float32)
    with BlockWriter(None, 1, set(), Phases()) as writer:
        start = time.perf_counter()
        writer.submit(0, scores)
        assert time.perf_counter() - start < 0.1  # returned while block 0 commits
        writer.submit(2, scores)  # waits for block 0 first: one block in flight
        assert ("end", 0) in [e[:2] for e in commits]
    assert [e[:2] for e in commits] == [("start", 0), ("end", 0), ("start", 2), ("end", 2)]
    assert all(e[2].startswith("auditor-writer") for e in commits)


def test_a_commit_error_is_raised_in_the_caller(commits):
    scores = np.zeros((1, 3), dtype=np.float32)
    with (
        pytest.raises(StoreError, match="disk full"),
        BlockWriter(None, 1, set(), Phases()) as writer,
    ):
        writer.submit(99, scores)
    with (
        pytest.raises(StoreError, match="disk full"),
        BlockWriter(None, 1, set(), Phases()) as writer,
    ):
        writer.submit(99, scores)
        writer.submit(1, scores)  # raised here, before block 1 is sent
    assert ("start", 1) not in [e[:2] for e in commits]


def test_an_interrupt_waits_for_the_block_in_flight_and_keeps_its_own_error(commits):
    scores = np.zeros((1, 3), dtype=np.float32)
    with pytest.raises(KeyboardInterrupt), BlockWriter(None, 1, set(), Phases()) as writer:
        writer.submit(5, scores)
        raise KeyboardInterrupt  # Ctrl-C while the next block is scored
    assert [e[:2] for e in commits] == [("start", 5), ("end", 5)]  # committed whole
    with (
        pytest.raises(RuntimeError, match="scoring failed"),
        BlockWriter(None, 1, set(), Phases()) as writer,
    ):  # not the commit's error
        writer.submit(99, scores)
        raise RuntimeError("scoring failed")
