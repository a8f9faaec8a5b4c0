"""How many CPU threads a scan's torch uses.

``--threads`` if given; else ``OMP_NUM_THREADS`` if set (torchrun sets it to 1 for each
rank unless told otherwise); else the cores this process may run on (its CPU affinity
and, under a cgroup CPU quota, the quota), not the machine's count, shared among
torchrun's local ranks. More threads than usable cores only makes them wait on each
other, and on a busy machine on the other jobs too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from auditor.pipeline.job import local_world_size

#: The cgroup v2 file that holds the CPU quota: ``"max 100000"`` or ``"200000 100000"``.
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores(cpu_max: Path = CPU_MAX) -> int:
    """The cores this process may use: its affinity mask's size, lowered to a cgroup CPU
    quota (rounded up) when one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def choose_threads(
    requested: int | None,
    local_ranks: int = 1,
    cores: int | None = None,
    environ: dict[str, str] | None = None,
) -> int:
    """``requested``; else a positive ``OMP_NUM_THREADS`` of ``environ`` (the process's
    environment by default); else the usable ``cores`` shared among the ``local_ranks``
    processes of a torchrun job on this host (at least one each)."""
    if requested is not None:
        return requested
    omp = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    available = usable_cores() if cores is None else cores
    return max(1, available // max(1, local_ranks))


@contextmanager
def torch_threads(requested: int | None) -> Iterator[int]:
    """Run the body with torch's intra-op threads set to :func:`choose_threads` (torchrun's
    ``LOCAL_WORLD_SIZE`` ranks share the cores); yields the count, restores the previous."""
    threads = choose_threads(requested, local_world_size())
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
