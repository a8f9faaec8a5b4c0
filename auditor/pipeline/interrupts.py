"""Ctrl-C and SIGTERM during a scan: stop with :class:`~auditor.errors.Interrupted`.

Inside :func:`interruptible`, SIGINT and SIGTERM raise ``KeyboardInterrupt`` wherever the
main thread happens to be, and both become ``Interrupted`` (exit status 130), naming the
incomplete run so that it can be resumed. Database writes run inside
:func:`~auditor.store.deferral.deferred`: a signal that arrives there is held until the write has
finished (see :mod:`auditor.store.deferral`, re-exported here).

The ``auditor`` process calls :func:`exit_after_interrupt`: once interrupted, it ignores
further Ctrl-C and SIGTERM until it exits, so that a second signal while it marks the run
interrupted and prints the error gives neither a traceback nor exit status 143. (A
library caller keeps its own handlers, restored when :func:`interruptible` ends.)
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from auditor.errors import Interrupted
from auditor.store import deferral
from auditor.store.deferral import deferred, signals_ignored

__all__ = [
    "deferred",
    "exit_after_interrupt",
    "ignore_signals_until_exit",
    "interruptible",
    "signals_ignored",
]


class _Process:
    exit_after_interrupt = False  # this process exits once interrupted (the CLI)


def exit_after_interrupt(enabled: bool = True) -> None:
    """Declare that this process exits once interrupted: from the first interrupt on,
    SIGINT and SIGTERM stay ignored (the ``auditor`` command; not for library use)."""
    _Process.exit_after_interrupt = enabled


def ignore_signals_until_exit() -> None:
    """After an interrupt in a process that then exits: ignore SIGINT and SIGTERM (only in
    the main thread, and only after :func:`exit_after_interrupt`)."""
    if _Process.exit_after_interrupt:
        deferral.set_handlers(signal.SIG_IGN)


@contextmanager
def interruptible(run_id: int | None) -> Iterator[None]:
    """Turn Ctrl-C (and SIGTERM, in the main thread) into :class:`Interrupted`."""
    previous = deferral.set_handlers(_on_signal)
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
        where = "nothing was written" if run_id is None else f"run {run_id} is incomplete"
        raise Interrupted(f"interrupted; {where}", run_id=run_id) from None
    finally:
        deferral.forget_pending()
        deferral.restore(previous)
        if interrupted:
            ignore_signals_until_exit()


def _on_signal(_signum: int, _frame: FrameType | None) -> None:
    if not deferral.hold():
        raise KeyboardInterrupt
