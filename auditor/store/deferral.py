"""Hold Ctrl-C and SIGTERM while a database write runs, so that no write is cut half-way.

A signal that arrives inside :func:`deferred` is noted (:func:`hold`) and raised as
``KeyboardInterrupt`` when the outermost block ends, so no transaction or pooled connection
is abandoned half-way (which would leave a traceback from the connection's finaliser on
stderr). :func:`signals_ignored` lets the bookkeeping after an interrupt (marking the run
interrupted) finish even if Ctrl-C is pressed again.

The store's run writer (:mod:`auditor.store.writer`) and the scan's block writes use these;
:mod:`auditor.pipeline.interrupts` installs the handler that calls :func:`hold`.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: The signals a scan turns into an interrupt.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    depth = 0  # nesting of deferred() blocks
    pending = False  # a signal arrived inside one


def set_handlers(handler: Callable | int) -> dict:
    """Install ``handler`` for SIGINT and SIGTERM and return the handlers it replaced;
    nothing (``{}``) outside the main thread, where Python cannot set handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, handler) for s in SIGNALS}


def restore(saved: dict) -> None:
    """Reinstall the handlers :func:`set_handlers` returned."""
    for s, handler in saved.items():
        # None: a handler installed outside Python; the default is the closest
        signal.signal(s, signal.SIG_DFL if handler is None else handler)


def hold() -> bool:
    """For a signal handler: inside :func:`deferred`, note the signal (raised when the block
    ends) and return ``True``; outside, return ``False`` (the caller raises at once)."""
    if _State.depth:
        _State.pending = True
        return True
    return False


def forget_pending() -> None:
    """Drop a held signal (the interruptible region that would have raised it ended)."""
    _State.pending = False


@contextmanager
def deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends; then raise ``KeyboardInterrupt``."""
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
    if _State.depth == 0 and _State.pending:
        _State.pending = False
        raise KeyboardInterrupt


@contextmanager
def signals_ignored() -> Iterator[None]:
    """Let the bookkeeping after an interrupt finish even if Ctrl-C is pressed again."""
    saved = set_handlers(signal.SIG_IGN)
    try:
        yield
    finally:
        restore(saved)
