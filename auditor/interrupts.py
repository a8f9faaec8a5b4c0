"""Ctrl-C and SIGTERM during a scan: stop with :class:`~auditor.errors.Interrupted`.

Python turns SIGINT into ``KeyboardInterrupt`` wherever the main thread happens to be;
:func:`interruptible` does the same for SIGTERM and converts both into ``Interrupted``
(exit status 130), naming the incomplete run so that it can be resumed.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from auditor.errors import Interrupted


@contextmanager
def interruptible(run_id: int | None) -> Iterator[None]:
    """Turn Ctrl-C (and SIGTERM, in the main thread) into :class:`Interrupted`."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt) if main else None
    try:
        yield
    except KeyboardInterrupt:
        where = (
            "nothing was written"
            if run_id is None
            else f"run {run_id} is incomplete and can be resumed"
        )
        raise Interrupted(f"interrupted; {where}", run_id=run_id) from None
    finally:
        if main:  # None: a handler installed outside Python; the default is the closest
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _raise_keyboard_interrupt(_signum, _frame) -> None:
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
