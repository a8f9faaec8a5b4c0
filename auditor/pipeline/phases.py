"""The scan's phase timer: seconds per phase, and the phase the run has reached."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from auditor.store.writer import RunWriter

#: ``progress(phase, done, total)``: how far a phase of the scan got (``total`` 0: not
#: known yet).
Progress = Callable[[str, int, int], None]

#: The phases reported as one step each (``done`` 0 of an unknown ``total`` 0 at the start,
#: 1 of 1 at the end), by the name progress shows; the others report their own steps
#: (pair scores) or run inside another (storage). The ranking also reports its refits.
REPORTED = {
    "load": "load data",
    "fit": "fit",
    "gradients": "gradients",
    "ihvp": "solve",
    "ranking": "rank and flag",
}


@contextmanager
def one_step(progress: Progress | None, phase: str | None) -> Iterator[None]:
    """Report ``phase`` as a phase of one step: started (of a total not known) on entry,
    done on a normal exit; nothing without a ``progress`` or a ``phase``."""
    if progress is None or phase is None:
        yield
        return
    progress(phase, 0, 0)
    yield
    progress(phase, 1, 1)


class Phases:
    """Times a scan's phases (``timings``: seconds per phase name), records through
    ``writer`` how far the run got (rank 0, once the run exists) and reports the start and
    end of the :data:`REPORTED` phases to ``progress``."""

    def __init__(self, writer: RunWriter, progress: Progress | None = None) -> None:
        self.writer = writer
        self.progress = progress
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, mark: bool = True, shown: str | None = None) -> Iterator[None]:
        """Time a phase (added to what it took before); ``mark`` records it as the run's
        phase in the database; ``shown`` reports it to progress under that name (default:
        its :data:`REPORTED` name when marked, else nothing)."""
        if mark:
            self.writer.mark_phase(name)
        if shown is None and mark:
            shown = REPORTED.get(name)
        with one_step(self.progress, shown):
            start = time.perf_counter()
            yield
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def timed_iter(self, name: str, items: Iterator) -> Iterator:
        """Yield from ``items``, adding the time spent producing each item to ``name``."""
        self.timings.setdefault(name, 0.0)
        self.writer.mark_phase(name)
        while True:
            start = time.perf_counter()
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                self.timings[name] += time.perf_counter() - start
            yield item
