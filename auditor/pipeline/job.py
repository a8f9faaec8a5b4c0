"""Where this process stands in a torchrun job, from the environment torchrun sets (no
torch import: the CLI asks before any command loads it)."""

from __future__ import annotations

import os

from auditor.errors import ConfigError

__all__ = ["active", "local_world_size", "rank", "world_size"]


def world_size() -> int:
    """Processes in this job: ``WORLD_SIZE`` as torchrun sets it, 1 outside torchrun."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"WORLD_SIZE must be an integer, got {value!r}") from None


def rank() -> int:
    """This process's rank (``RANK``), 0 outside torchrun."""
    return int(os.environ.get("RANK", "0"))


def active() -> bool:
    """Whether this process is one rank of a multi-process torchrun job."""
    return world_size() > 1


def local_world_size() -> int:
    """Ranks of this job on this machine (``LOCAL_WORLD_SIZE``), 1 outside torchrun."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
