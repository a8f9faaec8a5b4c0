"""Progress of a scan's phases on the terminal."""

from __future__ import annotations

import sys

import click


class Bars:
    """One click progress bar per phase, drawn on stderr."""

    def __init__(self) -> None:
        self.bar = None
        self.phase = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != self.phase:
            self.close()
            self.phase = phase
            self.bar = click.progressbar(length=total, label=phase, file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(done - self.bar.pos)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
        self.bar, self.phase = None, None
