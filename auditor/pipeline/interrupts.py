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


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _set_handlers(handler) -> dict:
    """Install ``handler`` for SIGINT and SIGTERM and return the handlers it replaced;
    nothing (``{}``) outside the main thread, where Python cannot set handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, handler) for s in _SIGNALS}


def _restore(saved: dict) -> None:
    """Reinstall the handlers :func:`_set_handlers` returned."""
    for s, handler in saved.items():
        # None: a handler installed outside Python; the default is the closest
        signal.signal(s, signal.SIG_DFL if handler is None else handler)


def exit_after_interrupt(enabled: bool = True) -> None:
    """Declare that this process exits once interrupted: from the first interrupt on,
    SIGINT and SIGTERM stay ignored (the ``auditor`` command; not for library use)."""
    _Deferral.exit_after_interrupt = enabled


def ignore_signals_until_exit() -> None:
    """After an interrupt in a process that then exits: ignore SIGINT and SIGTERM (only in
    the main thread, and only after :func:`exit_after_interrupt`)."""
    if _Deferral.exit_after_interrupt:
        _set_handlers(signal.SIG_IGN)


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
    previous = _set_handlers(_on_signal)
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
        where = "nothing was written" if run_id is None else f"run {run_id} is incomplete"
        raise Interrupted(f"interrupted; {where}", run_id=run_id) from None
    finally:
        _Deferral.pending = False
        _restore(previous)
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
    saved = _set_handlers(signal.SIG_IGN)
    try:
        yield
    finally:
        _restore(saved)
