"""Runs: one row per scan, with its configuration, status, metrics and diagnostics."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import torch
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from auditor import __version__
from auditor.errors import RunNotFound
from auditor.store.schema import pair_scores, points, runs

SUMMARY_COLUMNS = [c for c in runs.c if c.name != "theta"]


def create_run(engine: Engine, **fields) -> int:
    """Insert a run in status ``running`` and return its id.

    ``fields`` are columns of ``runs`` (``config``, ``dataset``, ``task``, ``model``,
    ``n_train``, ``n_test``, ``data_fingerprint``...).
    """
    values = {
        "created_at": datetime.now(UTC).replace(tzinfo=None),
        "status": "running",
        "phase": "created",
        "auditor_version": __version__,
        **fields,
    }
    with engine.begin() as conn:
        return conn.execute(runs.insert().values(**values)).inserted_primary_key[0]


def update_run(engine: Engine, run_id: int, **fields) -> None:
    """Set columns of one run."""
    with engine.begin() as conn:
        conn.execute(runs.update().where(runs.c.id == run_id).values(**fields))


def finish_run(engine: Engine, run_id: int, **fields) -> None:
    """Mark a run complete (the last write of a scan)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    update_run(engine, run_id, status="complete", phase="done", finished_at=now, **fields)


def fail_run(engine: Engine, run_id: int, error: str, *, status: str = "failed") -> None:
    """Mark a run ``failed`` (or ``interrupted``) with the error that stopped it."""
    now = datetime.now(UTC).replace(tzinfo=None)
    update_run(engine, run_id, status=status, finished_at=now, error=error)


def restart_run(engine: Engine, run_id: int) -> None:
    """Put an incomplete run back in status ``running`` (``auditor scan --resume``)."""
    update_run(engine, run_id, status="running", finished_at=None, error=None)


def get_run(engine: Engine, run_id: int, *, with_theta: bool = False) -> dict:
    """One run as a dict of its columns; raises :class:`RunNotFound`."""
    columns = list(runs.c) if with_theta else SUMMARY_COLUMNS
    with engine.connect() as conn:
        row = conn.execute(select(*columns).where(runs.c.id == run_id)).mappings().first()
    if row is None:
        raise RunNotFound(f"run {run_id} does not exist in this database")
    return dict(row)


def list_runs(engine: Engine) -> list[dict]:
    """Every run, newest first, with its count of stored pair scores as ``n_pairs``."""
    n_pairs = (
        select(func.coalesce(func.sum(func.length(pair_scores.c.scores)), 0) / 4)
        .where(pair_scores.c.run_id == runs.c.id)
        .scalar_subquery()
    )
    with engine.connect() as conn:
        rows = conn.execute(
            select(*SUMMARY_COLUMNS, n_pairs.label("n_pairs")).order_by(runs.c.id.desc())
        )
        return [dict(r) for r in rows.mappings()]


def latest_run_id(engine: Engine) -> int:
    """The newest run's id; raises :class:`RunNotFound` in an empty database."""
    with engine.connect() as conn:
        run_id = conn.execute(select(func.max(runs.c.id))).scalar()
    if run_id is None:
        raise RunNotFound("the database holds no runs yet; run `auditor scan` first")
    return run_id


def delete_run(engine: Engine, run_id: int) -> None:
    """Remove a run with its points and pair scores."""
    with engine.begin() as conn:
        conn.execute(pair_scores.delete().where(pair_scores.c.run_id == run_id))
        conn.execute(points.delete().where(points.c.run_id == run_id))
        conn.execute(runs.delete().where(runs.c.id == run_id))


def theta_bytes(theta: torch.Tensor) -> bytes:
    """Fitted parameters ``(p,)`` as the ``runs.theta`` column holds them: little-endian
    bytes in their own dtype (exact)."""
    array = theta.detach().cpu().numpy()
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def theta_from_bytes(blob: bytes, dtype: str) -> torch.Tensor:
    """The parameters ``(p,)`` :func:`theta_bytes` stored (``dtype`` is the run's
    ``--dtype``), on the CPU in native byte order."""
    array = np.frombuffer(blob, dtype=np.dtype(dtype).newbyteorder("<"))
    return torch.from_numpy(array.astype(np.dtype(dtype)))
