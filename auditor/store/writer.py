"""The writes of one scan to its run: the run row, its points, its fit and its end.

A :class:`RunWriter` is the only way :mod:`auditor.pipeline.scan` writes the run row and
its points (each rank commits its own blocks of pair scores through
:mod:`auditor.pipeline.blocks`). Every write runs inside :func:`~auditor.store.deferral.deferred`,
so a Ctrl-C or SIGTERM is held until the write has finished; :meth:`RunWriter.fail`, the
bookkeeping after an error or an interrupt, runs with those signals ignored.

Under torchrun only rank 0 writes: on any other rank every method does nothing.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from auditor.store import points, runs
from auditor.store.deferral import deferred, signals_ignored


class RunWriter:
    """Writes one run of ``engine``'s database, from rank 0 of a job only.

    Attributes:
        engine: The database.
        rank: This process's rank in a torchrun job (0 outside torchrun); a writer of
            another rank than 0 writes nothing.
        run_id: The run written, once :meth:`create` or :meth:`restart` named it (on
            rank 0); until then :meth:`mark_phase` does nothing.
    """

    def __init__(self, engine: Engine, rank: int = 0) -> None:
        self.engine = engine
        self.rank = rank
        self.run_id: int | None = None

    @property
    def writes(self) -> bool:
        """Whether this writer writes (rank 0)."""
        return self.rank == 0

    def create(self, fields: dict) -> int | None:
        """Insert the run (status ``running``) with the ``runs`` columns in ``fields`` and
        write to it from now on; its id (``None`` on another rank than 0)."""
        if self.writes:
            with deferred():
                self.run_id = runs.create_run(self.engine, **fields)
        return self.run_id

    def restart(self, run_id: int) -> None:
        """Put the incomplete run ``run_id`` back in status ``running`` under this process
        and write to it from now on (a resume)."""
        if self.writes:
            with deferred():
                runs.restart_run(self.engine, run_id)
            self.run_id = run_id

    def mark_phase(self, phase: str) -> None:
        """Record the phase the scan has reached (and that it is alive)."""
        if self.writes and self.run_id is not None:
            with deferred():
                runs.mark_phase(self.engine, self.run_id, phase)

    def write_points(self, split: str, rows: list[dict]) -> None:
        """Insert (or replace) the run's ``split`` points (``points`` columns per row)."""
        if self.writes:
            with deferred():
                points.write_points(self.engine, self._id, split, rows)

    def store_fit(self, state: bytes, metrics: dict) -> None:
        """Store the fitted state (:func:`runs.theta_bytes`) and the fit's metrics, so that
        a resume continues from this fit."""
        if self.writes:
            with deferred():
                runs.update_run(self.engine, self._id, theta=state, metrics=metrics)

    def update_solver(self, record: dict) -> None:
        """Store the run's solver record (the diagnostics of its solves)."""
        if self.writes:
            with deferred():
                runs.update_run(self.engine, self._id, solver=record)

    def finish(self, **fields) -> None:
        """Mark the run complete with its final ``runs`` columns (``metrics``, ``ranking``,
        ``timings``, ``warnings``): the last write of a scan."""
        if self.writes:
            with deferred():
                runs.finish_run(self.engine, self._id, **fields)

    def fail(self, error: str, status: str, timings: dict[str, float]) -> None:
        """Mark the run ``failed`` or ``interrupted`` with the ``error`` that stopped it and
        the ``timings`` so far, with Ctrl-C and SIGTERM ignored: a second Ctrl-C, or
        torchrun's SIGTERM to the surviving ranks, must not cut the write short."""
        if self.writes and self.run_id is not None:
            with signals_ignored():
                runs.fail_run(self.engine, self.run_id, error, status=status, timings=timings)

    @property
    def _id(self) -> int:
        if self.run_id is None:
            raise RuntimeError("the run writer has no run yet: create or restart one first")
        return self.run_id
