"""The test points' blocks: which rank scores which, scoring, and one commit per block.

A scan cuts the test points into blocks of ``--chunk`` (:func:`auditor.pipeline.distributed.test_blocks`);
each block's pair scores are computed, checked finite and committed in one transaction, so
an interrupted run holds whole blocks only and a resume scores just the missing ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
import torch
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from auditor.errors import SolverError, StoreError
from auditor.influence.gradients import StreamedGradients, TrainGradients
from auditor.influence.scores import pair_scores
from auditor.pipeline.context import ScanContext
from auditor.pipeline.distributed import Block, missing_runs, shard, test_blocks
from auditor.pipeline.phases import Phases
from auditor.store import pairs, runs
from auditor.store.deferral import deferred

#: Most bytes of pair scores computed at once from streamed training gradients: each pass
#: over the training points scores as many test points as fit (a block at least).
STREAMED_SCORE_BYTES = 512 * 1024**2


@dataclass
class BlockPlan:
    """This rank's share of the test blocks.

    Attributes:
        n_test: Test points of the run.
        done: Test indexes with stored scores when the scan started (a resume).
        pending: The blocks of all ranks with at least one test point not in ``done``.
        mine: This rank's blocks, sorted: its share of ``pending`` and, on rank 0, the
            blocks stored before (read back for harmfulness).
        to_solve: The blocks of ``mine`` that are pending (solved and scored here).
    """

    n_test: int
    done: set[int]
    pending: list[Block]
    mine: list[Block]
    to_solve: list[Block]


def plan_blocks(ctx: ScanContext, n_test: int) -> BlockPlan:
    """Split the ``n_test`` test points into blocks of ``ctx.config.score_chunk`` and deal
    the pending ones out over the ranks; a resumed run's stored blocks (rank 0 reads which)
    are done."""
    comm = ctx.comm
    done = comm.broadcast(
        pairs.stored_test_indexes(ctx.engine, ctx.existing_run_id)
        if comm.is_root and ctx.resumed
        else set()
    )
    blocks = test_blocks(n_test, ctx.config.score_chunk)
    pending = [b for b in blocks if not all(j in done for j in range(*b))]
    mine = shard(pending, comm.rank, comm.world)
    is_pending = set(pending)
    if comm.is_root:
        mine = sorted(mine + [b for b in blocks if b not in is_pending])
    return BlockPlan(n_test, done, pending, mine, [b for b in mine if b in is_pending])


def score_and_store(
    ctx: ScanContext, train_grads: TrainGradients, test_ihvps: torch.Tensor, plan: BlockPlan
) -> np.ndarray:
    """Score and commit this rank's blocks (``plan.mine``): the pending ones from the
    gradients ``train_grads`` ``(n, p)`` and the IHVPs ``test_ihvps`` ``(p, m)`` (their
    columns in order), the others read back. Returns the float64 sum of the scores per
    training point ``(n,)``.

    Each block is committed by a writer thread while the next one is scored
    (:class:`BlockWriter`). Scores and storage are timed apart ("pair_scores" and
    "storage", the writer's own time) so that the benchmark shows where time goes."""
    engine, run_id, phases = ctx.engine, ctx.existing_run_id, ctx.phases
    harm = np.zeros(train_grads.shape[0], dtype=np.float64)
    total = sum(j1 - j0 for j0, j1 in plan.mine)
    scored = 0
    blocks = score_blocks(engine, run_id, train_grads, test_ihvps, plan.mine, set(plan.to_solve))
    with BlockWriter(engine, run_id, plan.done, phases) as writer:
        for j0, scores, fresh in phases.timed_iter("pair_scores", blocks):
            if fresh:
                writer.submit(j0, scores)
            harm += scores.sum(axis=0, dtype=np.float64)
            scored += scores.shape[0]
            ctx.progress("pair scores", scored, total)
    return harm


def check_all_stored(engine: Engine, run_id: int, n_test: int) -> None:
    """Refuse to complete a run with a test point lacking its stored scores."""
    stored = len(pairs.stored_test_indexes(engine, run_id))
    if stored != n_test:
        raise StoreError(
            f"only {stored} of {n_test} test points have stored scores after every rank "
            f"finished; run {run_id} is incomplete",
            run_id,
        )


def score_blocks(
    engine: Engine,
    run_id: int,
    train_grads: TrainGradients,
    test_ihvps: torch.Tensor,
    blocks: list[Block],
    to_solve: set[Block],
) -> Iterator[tuple[int, np.ndarray, bool]]:
    """``(j0, scores, fresh)`` per block ``[j0, j1)`` of ``blocks``: ``scores`` is the
    ``(c, n_train)`` float32 block, computed from the next ``c`` columns of ``test_ihvps``
    and checked finite for a block of ``to_solve`` (``fresh``), read back otherwise.

    Held gradients are multiplied one block at a time. Streamed ones are computed again
    for each product, so the columns of as many blocks as :data:`STREAMED_SCORE_BYTES`
    holds are scored in one pass and handed out block by block."""
    column = 0
    ahead = _ScoresAhead(train_grads, test_ihvps)
    for j0, j1 in blocks:
        if (j0, j1) not in to_solve:
            with deferred():
                stored = pairs.read_test_range(engine, run_id, j0, j1)
            yield j0, stored, False
            continue
        c = j1 - j0
        block = ahead.columns(column, column + c)
        column += c
        scores = block.to(torch.float32).cpu().numpy()
        check_finite(scores, f"pair scores of test points {j0}..{j1 - 1}")
        yield j0, scores, True


class _ScoresAhead:
    """Pair scores of a range of IHVP columns, computed for a larger range than asked
    when the training gradients are streamed (the rest is kept for the next ask)."""

    def __init__(self, train_grads: TrainGradients, test_ihvps: torch.Tensor) -> None:
        self.train_grads, self.test_ihvps = train_grads, test_ihvps
        self.start, self.scores = 0, test_ihvps.new_empty(0, train_grads.shape[0])
        streamed = isinstance(train_grads, StreamedGradients)
        per_column = max(1, train_grads.shape[0]) * test_ihvps.element_size()
        self.span = STREAMED_SCORE_BYTES // per_column if streamed else 0

    def columns(self, k0: int, k1: int) -> torch.Tensor:
        """The scores ``(k1 - k0, n)`` of columns ``[k0, k1)``."""
        held = self.start + self.scores.shape[0]
        if not (self.start <= k0 and k1 <= held):
            stop = min(self.test_ihvps.shape[1], max(k1, k0 + self.span))
            self.scores = pair_scores(self.train_grads, self.test_ihvps[:, k0:stop])
            self.start = k0
        return self.scores[k0 - self.start : k1 - self.start]


class BlockWriter:
    """Commits blocks of pair scores on one writer thread while the caller scores the next.

    Still one transaction per block (:func:`commit_block`), at most one block in flight,
    committed in order. Signals reach the main thread only, so a commit in flight is
    never cut: leaving the ``with`` block, normally or by an error or Ctrl-C, waits for
    it (holding further signals) before the run can be marked failed or interrupted. A
    commit's error is raised in the caller, at the next :meth:`submit` or at the end.
    """

    def __init__(self, engine: Engine, run_id: int, done: set[int], phases: Phases) -> None:
        self.engine, self.run_id, self.done, self.phases = engine, run_id, done, phases
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="auditor-writer")
        self._pending: Future[None] | None = None

    def submit(self, j0: int, scores: np.ndarray) -> None:
        """Commit the block of scores ``(c, n)`` of test points ``j0...`` once the block
        before it is committed."""
        self._wait()
        self._pending = self._pool.submit(self._store, j0, scores)

    def _store(self, j0: int, scores: np.ndarray) -> None:
        with self.phases("storage", mark=False):
            commit_block(self.engine, self.run_id, self.done, j0, scores)

    def _wait(self, failing: bool = False) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if failing:  # the error already on its way is the one to report
            wait([pending])
            return
        pending.result()

    def __enter__(self) -> BlockWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            with deferred():  # a Ctrl-C now is held until the block in flight is committed
                self._wait(failing=exc_type is not None)
        finally:
            self._pool.shutdown(wait=True)


def commit_block(engine: Engine, run_id: int, done: set[int], j0: int, scores: np.ndarray) -> None:
    """Commit the rows of one block that are not stored yet, in one transaction."""
    j1 = j0 + scores.shape[0]
    try:
        with engine.begin() as conn:
            for k0, k1 in missing_runs(done, j0, j1):
                pairs.write_pair_scores(conn, run_id, k0, scores[k0 - j0 : k1 - j0])
            runs.heartbeat(conn, run_id)
    except IntegrityError:
        raise StoreError(
            f"run {run_id}: scores of test points {j0}..{j1 - 1} appeared while "
            "this scan computed them; is another scan resuming the same run?"
        ) from None


def check_finite(values: np.ndarray, what: str) -> None:
    """Refuse to store NaN or infinite scores: fail the run with a clear error instead."""
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise SolverError(
            f"{bad} non-finite {what} (NaN, inf or beyond float32's range); none of them was "
            "stored. Scale the features and targets, or raise --damping or --weight-decay"
        )
