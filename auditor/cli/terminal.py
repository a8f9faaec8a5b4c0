"""Whether output goes to a terminal (bars and colours) or to a file, a pipe or a log."""

from __future__ import annotations

from typing import TextIO


def isatty(stream: TextIO) -> bool:
    """``stream.isatty()``, False for a closed stream."""
    try:
        return stream.isatty()
    except ValueError:  # closed
        return False
