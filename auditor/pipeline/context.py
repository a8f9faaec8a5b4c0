"""What every stage of one scan shares: :class:`ScanContext`."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from auditor.config import ScanConfig
from auditor.pipeline.distributed import Comm
from auditor.pipeline.phases import Phases, Progress
from auditor.pipeline.run_record import stored_warnings, total_timings
from auditor.store.runs import StoredRun
from auditor.store.writer import RunWriter


@dataclass
class ScanContext:
    """One scan's shared state, on every rank.

    Attributes:
        config: The scan's configuration.
        comm: This process's place in the job (one rank outside torchrun).
        writer: Writes the run row and its points (rank 0 only).
        phases: Times the phases and marks the phase the run reached.
        progress: Reports how far a phase got.
        previous: The stored run a resume continues (with its ``theta``), else ``None``.
        run_id: The run, once created (or, on a resume, restarted).
        warnings: The run's warnings so far (used on rank 0); a resume starts from the
            stored ones, less the solve's (recomputed from the merged solver record).
        threads: torch's CPU threads in this process (:mod:`auditor.pipeline.threads`).
    """

    config: ScanConfig
    comm: Comm
    writer: RunWriter
    phases: Phases
    progress: Progress
    previous: StoredRun | None = None
    run_id: int | None = None
    warnings: list[str] = field(default_factory=list)
    threads: int = 1

    @classmethod
    def open(
        cls,
        engine: Engine,
        config: ScanConfig,
        comm: Comm,
        progress: Progress | None = None,
        previous: StoredRun | None = None,
        threads: int = 1,
    ) -> ScanContext:
        """The context of a new scan (or of a resume of the stored run ``previous``)."""
        writer = RunWriter(engine, comm.rank)
        return cls(
            config,
            comm,
            writer,
            Phases(writer, progress),
            progress or _silent,
            previous,
            warnings=stored_warnings(previous),
            threads=threads,
        )

    @property
    def engine(self) -> Engine:
        return self.writer.engine

    @property
    def existing_run_id(self) -> int:
        """``run_id`` once the run exists: every stage after the load, on every rank."""
        assert self.run_id is not None, "the scan has no run yet: it is created after the load"
        return self.run_id

    @property
    def resumed(self) -> bool:
        """Whether this scan resumes a stored run."""
        return self.previous is not None

    def total_timings(self) -> dict[str, float]:
        """The run's seconds per phase: this scan's, added on a resume to the stored ones."""
        return total_timings(self.previous, self.phases.timings)

    def stopped(self, error: str, status: str = "failed") -> None:
        """Mark the run ``failed`` (or ``interrupted``) with ``error`` and the time spent so
        far; on rank 0 only."""
        self.writer.fail(error, status, self.total_timings())


def _silent(_phase: str, _done: int, _total: int) -> None:
    return None
