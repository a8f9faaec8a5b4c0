"""Ctrl-C and SIGTERM during a scan: stop with :class:`~auditor.errors.Interrupted`.

Inside :func:`interruptible`, SIGINT and SIGTERM raise ``KeyboardInterrupt`` wherever the
main thread happens to be, and both become ``Interrupted`` (exit status 130), naming the
incomplete run so that it can be resumed. Database writes run inside :func:`deferred`: a
signal that arrives there is held until the write has finished, so no transaction or
pooled connection is abandoned half-way (which would leave a traceback from the
connection's finaliser on stderr).

The ``auditor`` process calls :func:`exit_after_interrupt`: once interrupted, it ignores
further Ctrl-C and SIGTERM until it exits, so that a second signal while it marks the run
interrupted and prints the error gives neither a traceback nor exit status 143. (A
library caller keeps its own handlers, restored when :func:`interruptible` ends.)
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from auditor.errors import Interrupted


class _Deferral:
    depth = 0  # nesting of deferred() blocks
    pending = False  # a signal arrived inside one
    exit_after_interrupt = False  # this process exits once interrupted (the CLI)


def exit_after_interrupt(enabled: bool = True) -> None:
    """Declare that this process exits once interrupted: from the first interrupt on,
    SIGINT and SIGTERM stay ignored (the ``auditor`` command; not for library use)."""
    _Deferral.exit_after_interrupt = enabled


def ignore_signals_until_exit() -> None:
    """After an interrupt in a process that then exits: ignore SIGINT and SIGTERM (only in
    the main thread, and only after :func:`exit_after_interrupt`)."""
    if _Deferral.exit_after_interrupt and threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends; then raise ``KeyboardInterrupt``."""
    _Deferral.depth += 1
    try:
        yield
    finally:
        _Deferral.depth -= 1
    if _Deferral.depth == 0 and _Deferral.pending:
        _Deferral.pending = False
        raise KeyboardInterrupt


@contextmanager
def interruptible(run_id: int | None) -> Iterator[None]:
    """Turn Ctrl-C (and SIGTERM, in the main thread) into :class:`Interrupted`."""
    main = threading.current_thread() is threading.main_thread()
    previous = (
        {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    )
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
        where = "nothing was written" if run_id is None else f"run {run_id} is incomplete"
        raise Interrupted(f"interrupted; {where}", run_id=run_id) from None
    finally:
        _Deferral.pending = False
        for s, handler in previous.items():
            # None: a handler installed outside Python; the default is the closest
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if interrupted:
            ignore_signals_until_exit()


def _on_signal(_signum, _frame) -> None:
    if _Deferral.depth:
        _Deferral.pending = True
    else:
        raise KeyboardInterrupt


@contextmanager
def signals_ignored() -> Iterator[None]:
    """Let the bookkeeping after an interrupt finish even if Ctrl-C is pressed again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
