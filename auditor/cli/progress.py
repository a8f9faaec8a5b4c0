"""Progress of a scan's phases on standard error: bars drawn by rich on a terminal, one
line per finished phase with its time otherwise (a log, a pipe, CI)."""

from __future__ import annotations

import sys
import time
from types import TracebackType

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from auditor.cli.terminal import isatty


class PhaseProgress:
    """One progress bar per phase (description, bar, done/total, rate, time left, time
    taken) on standard error, driven by the library's ``progress(phase, done, total)``
    callback (:data:`auditor.pipeline.scan.Progress`): call the instance.

    A phase's clock starts at its first report and stops when it is done or the display
    stops; ``total`` 0 means not known yet (a pulsing bar). Reported again, a phase
    continues its bar, or starts it over if ``done`` went back (the next seed of ``auditor
    evaluate`` scans again). When standard error is not a terminal, each phase that ends
    prints one line instead (``fit: 0.3s``, ``pair scores: 2,000 in 1.4s``); with
    ``quiet`` nothing is shown. Use it as a context manager: the display stops (its last
    state stays on screen) however the block ends, an error or Ctrl-C included.
    """

    def __init__(self, *, quiet: bool = False) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(),
            _TimeLeft(),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr),
            disable=quiet or not isatty(sys.stderr),
            redirect_stdout=False,  # stdout carries the results; stderr writes print above
            speed_estimate_period=3600,  # a phase's steps take alike: its mean rate, not 30 s's
        )
        self._lines = not quiet and not isatty(sys.stderr)
        self._tasks: dict[str, TaskID] = {}
        self._done: dict[str, int] = {}
        self._started: dict[str, float] = {}
        self._ended: set[str] = set()

    def __enter__(self) -> PhaseProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __call__(self, phase: str, done: int, total: int) -> None:
        shown_total = total or None  # None: rich pulses the bar
        task = self._tasks.get(phase)
        if task is None:  # its clock starts here: steps done before (resumed) make no rate
            task = self._tasks[phase] = self._progress.add_task(phase, total=shown_total)
            self._started[phase] = time.perf_counter()
        elif done < self._done[phase]:  # the phase runs again
            self._progress.reset(task, total=shown_total)
            self._started[phase] = time.perf_counter()
            self._ended.discard(phase)
        self._progress.update(task, total=shown_total, completed=done)
        self._done[phase] = done
        if self._lines and total and done >= total and phase not in self._ended:
            self._ended.add(phase)
            seconds = time.perf_counter() - self._started[phase]
            steps = f"{done:,} in " if total > 1 else ""
            click.echo(f"{phase}: {steps}{seconds:.1f}s", err=True)

    def close(self) -> None:
        """Stop drawing; the bars stay as they last were, the clocks of unfinished phases
        (the ranking's refits may end early; an error or Ctrl-C) stopped."""
        for task in self._progress.tasks:
            if not task.finished:
                self._progress.stop_task(task.id)
        self._progress.stop()


class _Rate(ProgressColumn):
    """Steps a second, as the progress estimates it (over its last hour)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None or not task.total or task.total <= 1:  # a phase of one step
            return Text("")
        rate = f"{speed:,.0f}" if speed >= 100 else f"{speed:.3g}"
        return Text(f"{rate}/s", style="progress.data.speed")


class _TimeLeft(TimeRemainingColumn):
    """The estimated time left; none for a phase that stopped unfinished."""

    def render(self, task: Task) -> Text:
        if task.stop_time is not None and not task.finished:
            return Text("-:--:--", style="progress.remaining")
        return super().render(task)
