"""Pair scores: one float32 BLOB per (run, test point) holding its scores against every
training point, in training-index order (little-endian, 4 bytes per pair)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from auditor.errors import StoreError
from auditor.store.schema import pair_scores

DTYPE = np.dtype("<f4")


def write_pair_scores(conn: Connection, run_id: int, first_test: int, scores: np.ndarray) -> None:
    """Insert the scores of test points ``first_test .. first_test + c - 1``.

    Args:
        conn: A connection inside the caller's transaction (the caller decides when a
            block is committed).
        scores: ``(c, n_train)`` array; row j holds I(z_i, z_test_{first_test + j}).
    """
    with np.errstate(over="ignore"):
        scores = np.ascontiguousarray(scores, dtype=DTYPE)
    if not np.isfinite(scores).all():  # checked after the cast: 1e39 becomes inf in float32
        raise StoreError("refusing to store non-finite pair scores")
    conn.execute(
        pair_scores.insert(),
        [
            {"run_id": run_id, "test_idx": first_test + j, "scores": row.tobytes()}
            for j, row in enumerate(scores)
        ],
    )


def read_pair_scores(engine: Engine, run_id: int) -> np.ndarray:
    """All pair scores of a run: ``(n_test, n_train)`` float32, row = test point.

    This holds the whole matrix; :func:`iter_pair_blocks` streams it instead.
    """
    blocks = list(iter_pair_blocks(engine, run_id))
    if not blocks:
        return np.zeros((0, 0), dtype=DTYPE)
    return blocks[0][1] if len(blocks) == 1 else np.concatenate([b for _, b in blocks])


def iter_pair_blocks(
    engine: Engine, run_id: int, rows: int = 256
) -> Iterator[tuple[int, np.ndarray]]:
    """Stream a run's pair scores as ``(first_test, block)`` with ``block`` ``(c, n_train)``
    float32, ``c <= rows``, in test-index order; memory stays at one block."""
    query = (
        select(pair_scores.c.test_idx, pair_scores.c.scores)
        .where(pair_scores.c.run_id == run_id)
        .order_by(pair_scores.c.test_idx)
        .execution_options(yield_per=rows)
    )
    with engine.connect() as conn:
        result = conn.execute(query)
        while chunk := result.fetchmany(rows):
            block = np.empty((len(chunk), len(chunk[0][1]) // DTYPE.itemsize), dtype=DTYPE)
            for k, (_, blob) in enumerate(chunk):
                block[k] = np.frombuffer(blob, dtype=DTYPE)
            yield chunk[0][0], block


def read_test_scores(engine: Engine, run_id: int, test_idx: int) -> np.ndarray:
    """Scores of one test point against every training point: ``(n_train,)``."""
    query = select(pair_scores.c.scores).where(
        pair_scores.c.run_id == run_id, pair_scores.c.test_idx == test_idx
    )
    with engine.connect() as conn:
        blob = conn.execute(query).scalar()
    if blob is None:
        raise StoreError(f"run {run_id} has no scores for test point {test_idx}")
    return np.frombuffer(blob, dtype=DTYPE)


def read_train_scores(engine: Engine, run_id: int, train_idx: int) -> np.ndarray:
    """Scores of one training point on every test point: ``(n_test,)`` (streamed)."""
    return read_slices(engine, run_id, (), [train_idx])[1][:, 0]


def read_slices(
    engine: Engine,
    run_id: int,
    test_idxs: Sequence[int],
    train_idxs: Sequence[int],
    rows: int = 256,
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """In one streamed pass: the full rows ``(n_train,)`` of some test points (by index) and
    the columns ``(n_test, len(train_idxs))`` of some training points; ``rows`` test points
    are held at a time (:func:`iter_pair_blocks`)."""
    wanted = set(test_idxs)
    index = np.asarray(train_idxs, dtype=np.int64)
    picked: dict[int, np.ndarray] = {}
    parts = []
    for j0, block in iter_pair_blocks(engine, run_id, rows):
        parts.append(block[:, index])
        for j in wanted.intersection(range(j0, j0 + block.shape[0])):
            picked[j] = block[j - j0].copy()
    columns = np.concatenate(parts) if parts else np.zeros((0, len(index)), dtype=DTYPE)
    return picked, columns


def stored_test_indexes(engine: Engine, run_id: int) -> set[int]:
    """The test indexes whose scores are stored (to resume a scan)."""
    query = select(pair_scores.c.test_idx).where(pair_scores.c.run_id == run_id)
    with engine.connect() as conn:
        return set(conn.execute(query).scalars())


def count_pairs(engine: Engine, run_id: int) -> int:
    """Number of stored (train, test) pair scores of a run."""
    query = select(func.coalesce(func.sum(func.length(pair_scores.c.scores)), 0)).where(
        pair_scores.c.run_id == run_id
    )
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one()) // DTYPE.itemsize


def read_test_range(engine: Engine, run_id: int, first: int, stop: int) -> np.ndarray:
    """Stored scores of test points ``first .. stop - 1``: ``(stop - first, n_train)``."""
    query = (
        select(pair_scores.c.scores)
        .where(
            pair_scores.c.run_id == run_id,
            pair_scores.c.test_idx >= first,
            pair_scores.c.test_idx < stop,
        )
        .order_by(pair_scores.c.test_idx)
    )
    with engine.connect() as conn:
        blobs = conn.execute(query).scalars().all()
    if len(blobs) != stop - first:
        raise StoreError(f"run {run_id} lacks scores of some test points in {first}..{stop - 1}")
    return np.frombuffer(b"".join(blobs), dtype=DTYPE).reshape(len(blobs), -1)
