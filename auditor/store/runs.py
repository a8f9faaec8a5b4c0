"""Runs: one row per scan, with its configuration, status, metrics and diagnostics."""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine, RowMapping

from auditor import __version__
from auditor.errors import RunNotFound, StoreError
from auditor.store.schema import pair_scores, runs

if TYPE_CHECKING:  # the commands that only read runs never load torch
    import torch

    from auditor.data import Task

SUMMARY_COLUMNS = [c for c in runs.c if c.name != "theta"]

RunStatus = Literal["running", "complete", "failed", "interrupted"]


@dataclass(frozen=True)
class StoredRun:
    """One row of ``runs``, typed: what a scan stored about itself.

    The JSON columns keep their stored shape (``config`` is :meth:`ScanConfig.to_dict`,
    ``metrics``, ``solver``, ``ranking`` and ``timings`` are the dicts the scan wrote);
    ``theta`` is read only on request (:func:`get_run` ``with_theta``), ``n_pairs`` only
    by :func:`list_runs`.
    """

    id: int
    created_at: datetime
    status: RunStatus
    auditor_version: str
    config: dict[str, Any]
    dataset: str
    task: Task
    model: str
    n_train: int
    n_test: int
    data_fingerprint: str
    finished_at: datetime | None = None
    phase: str | None = None
    n_params: int | None = None
    class_names: list[str] | None = None
    sources: dict[str, Any] | None = None
    image_shape: list[int] | None = None
    metrics: dict[str, Any] | None = None
    solver: dict[str, Any] | None = None
    ranking: dict[str, Any] | None = None
    timings: dict[str, float] | None = None
    warnings: list[str] | None = None
    error: str | None = None
    theta: bytes | None = None
    owner_host: str | None = None
    owner_pid: int | None = None
    owner_start: str | None = None
    heartbeat_at: datetime | None = None
    n_pairs: int | None = None

    @classmethod
    def from_row(cls, row: RowMapping) -> StoredRun:
        """The run of a ``runs`` row (a SQLAlchemy mapping), ignoring unknown columns."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})

    def as_dict(self) -> dict[str, Any]:
        """The columns as a dict (what ``export --format json`` and tests read)."""
        return asdict(self)

    @property
    def is_complete(self) -> bool:
        return self.status == "complete"


def create_run(engine: Engine, **fields) -> int:
    """Insert a run in status ``running`` and return its id.

    ``fields`` are columns of ``runs`` (``config``, ``dataset``, ``task``, ``model``,
    ``n_train``, ``n_test``, ``data_fingerprint``...).
    """
    values = {
        "created_at": _now(),
        "status": "running",
        "phase": "created",
        "auditor_version": __version__,
        **current_owner(),
        **fields,
    }
    with engine.begin() as conn:
        key = conn.execute(runs.insert().values(**values)).inserted_primary_key
        assert key is not None  # a single-row insert reports its primary key
        run_id: int = key[0]
        return run_id


def update_run(engine: Engine, run_id: int, **fields) -> None:
    """Set columns of one run."""
    with engine.begin() as conn:
        conn.execute(runs.update().where(runs.c.id == run_id).values(**fields))


def mark_phase(engine: Engine, run_id: int, phase: str) -> None:
    """Record the phase a running scan has reached (and that it is alive)."""
    update_run(engine, run_id, phase=phase, heartbeat_at=_now())


def heartbeat(conn: Connection, run_id: int) -> None:
    """Record, inside the caller's transaction, that the run's scan is writing now."""
    conn.execute(runs.update().where(runs.c.id == run_id).values(heartbeat_at=_now()))


def finish_run(engine: Engine, run_id: int, **fields) -> None:
    """Mark a run complete (the last write of a scan)."""
    now = _now()
    update_run(
        engine, run_id, status="complete", phase="done", finished_at=now, heartbeat_at=now, **fields
    )


def fail_run(engine: Engine, run_id: int, error: str, *, status: str = "failed", **fields) -> None:
    """Mark a run ``failed`` (or ``interrupted``) with the error that stopped it (and other
    columns in ``fields``, such as the ``timings`` so far)."""
    update_run(engine, run_id, status=status, finished_at=_now(), error=error, **fields)


def restart_run(engine: Engine, run_id: int) -> None:
    """Put an incomplete run back in status ``running`` under this process
    (``auditor scan --resume``)."""
    update_run(engine, run_id, status="running", finished_at=None, error=None, **current_owner())


def current_owner() -> dict:
    """The ``owner_*`` and ``heartbeat_at`` columns for a run this process writes."""
    return {
        "owner_host": socket.gethostname(),
        "owner_pid": os.getpid(),
        "owner_start": _process_start(os.getpid()),
        "heartbeat_at": _now(),
    }


def writer_state(run: StoredRun) -> str:
    """Whether the scan that owns a ``running`` run still runs: ``alive`` or ``gone``
    (checked on this host by pid and process start time), or ``unknown`` (another host,
    or a run written before owners were recorded). ``""`` for a run not ``running``."""
    if run.status != "running":
        return ""
    if not run.owner_pid or run.owner_host != socket.gethostname():
        return "unknown"
    start = _process_start(run.owner_pid)
    if start is None:
        return "gone"
    recorded = run.owner_start
    return "alive" if not recorded or not start or recorded == start else "gone"


def refuse_live_writer(run: StoredRun, advice: str) -> None:
    """Raise :class:`StoreError` (exit 1) if a scan in another process on this host is
    still writing ``run`` (:func:`writer_state` ``alive``); ``advice`` ends the message:
    what the caller should do instead."""
    if writer_state(run) == "alive" and run.owner_pid != os.getpid():
        raise StoreError(
            f"run {run.id} is still being written by process {run.owner_pid} on this "
            f"host (phase {run.phase}); {advice}"
        )


def _process_start(pid: int) -> str | None:
    """A token of when process ``pid`` started (``/proc/PID/stat`` field 22), ``""``
    where ``/proc`` is not available but the process exists, ``None`` if there is none."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        # the command name (field 2) may hold spaces: split after its closing parenthesis
        return stat.read_text().rsplit(")", 1)[1].split()[19]
    except FileNotFoundError:
        return None
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ""


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def get_run(engine: Engine, run_id: int, *, with_theta: bool = False) -> StoredRun:
    """One run; raises :class:`RunNotFound`."""
    columns = list(runs.c) if with_theta else SUMMARY_COLUMNS
    with engine.connect() as conn:
        row = conn.execute(select(*columns).where(runs.c.id == run_id)).mappings().first()
    if row is None:
        raise RunNotFound(f"run {run_id} does not exist in this database")
    return StoredRun.from_row(row)


def list_runs(engine: Engine) -> list[StoredRun]:
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
        return [StoredRun.from_row(r) for r in rows.mappings()]


def latest_run_id(engine: Engine) -> int:
    """The newest run's id; raises :class:`RunNotFound` in an empty database."""
    with engine.connect() as conn:
        run_id = conn.execute(select(func.max(runs.c.id))).scalar()
    if run_id is None:
        raise RunNotFound("the database holds no runs yet; run `auditor scan` first")
    return run_id


def theta_bytes(theta: torch.Tensor) -> bytes:
    """Fitted parameters ``(p,)`` as the ``runs.theta`` column holds them: little-endian
    bytes in their own dtype (exact)."""
    array = theta.detach().cpu().numpy()
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def theta_from_bytes(blob: bytes, dtype: str) -> torch.Tensor:
    """The parameters ``(p,)`` :func:`theta_bytes` stored (``dtype`` is the run's
    ``--dtype``), on the CPU in native byte order."""
    import torch  # here: the commands that only read runs never load it

    array = np.frombuffer(blob, dtype=np.dtype(dtype).newbyteorder("<"))
    return torch.from_numpy(array.astype(np.dtype(dtype)))
