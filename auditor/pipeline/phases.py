"""The scan's phase timer: seconds per phase, and the phase the run has reached."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from auditor.store.writer import RunWriter


class Phases:
    """Times a scan's phases (``timings``: seconds per phase name) and records through
    ``writer`` how far the run got (rank 0, once the run exists)."""

    def __init__(self, writer: RunWriter) -> None:
        self.writer = writer
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, mark: bool = True) -> Iterator[None]:
        """Time a phase (added to what it took before); ``mark`` records it as the run's
        phase in the database."""
        if mark:
            self.writer.mark_phase(name)
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
