"""What is genuinely distributed in a sharded scan: ``torchrun --nproc-per-node N -m auditor scan``.

torchrun starts N processes (ranks) and sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``. :func:`auditor.pipeline.scan.scan` and
:func:`auditor.pipeline.scan.resume` are one code path for one process and for N ranks; this module
holds only what differs between the two: joining the process group (gloo on CPUs, nccl
with ``--device cuda``, one GPU per local rank), the collectives (:class:`Comm`, the
identity in one process), the assignment of test blocks and training points to ranks,
the Hessian computed once on rank 0 and shared (:func:`share_operator`), and the merge of
the ranks' solve diagnostics.

The scan, sharded:

1. Rank 0 opens (and migrates) the database first, creates the run, fits the model and
   stores the fitted parameters and the test points; it broadcasts the run id and the
   parameters. Every rank loads the data itself.
2. What the whole solve shares is computed once, on rank 0, and broadcast: the dense loss
   Hessian when a solve or the self-influences use it, the largest eigenvalue (LiSSA's
   scale) for ``--solver lissa``.
3. The test points are cut into the blocks a one-process scan commits (``score_chunk``
   points each); the blocks still missing go to rank k mod N. Each rank solves the IHVPs
   of its blocks and the self-influences of its contiguous slice of the training points,
   scores its blocks against every training point and commits each block in its own
   transaction.
4. Every rank sends rank 0 its self-influences and partial harmfulness sums (this is also
   the barrier). Rank 0 checks that every test point's block is stored, ranks the training
   points (the refits run on rank 0 alone) and marks the run complete, the last write.

Equality with a one-process scan: every column is solved against the same operator and
scored in a block of the same shape. With ``--solver exact`` the pair scores equal the
one-process ones bit for bit (tests/test_distributed.py). CG and LiSSA stop once the worst
column solved *together* reaches ``--tol``, so a rank's columns may stop a few steps
earlier or later than in one process: their pair scores agree to about ``cond(A) * tol``
relative; pass a tight ``--tol`` for near equality. Harmfulness sums each rank's blocks
first, so with more than two blocks per rank it can differ in the last float64 bits.

A killed rank leaves the run ``running`` (or ``failed``) with some blocks missing;
``auditor scan --resume RUN`` (under torchrun or not) computes only the missing blocks,
spread over its own ranks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from sqlalchemy.engine import Engine

from auditor.config import SolverArgs
from auditor.errors import AuditorError, ConfigError
from auditor.influence.hessian import HessianOperator
from auditor.influence.self_influence import self_influence_from_factor
from auditor.influence.solvers.exact import exact_affordable
from auditor.pipeline.job import world_size
from auditor.store import open_db

Block = tuple[int, int]


class PeerLost(Exception):
    """A collective failed because a rank of the job died (killed, out of memory, a lost
    machine). torch raises ``DistError`` or, from gloo, a plain ``RuntimeError``."""


class PeerFailed(AuditorError):
    """Another rank of the job stopped with an error; this rank stops too."""


@dataclass
class Comm:
    """This process's place in the job and the collectives a sharded scan uses.

    With ``world == 1`` every collective is the identity, so the same code runs in one
    process without a process group.
    """

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; for small objects)."""
        if self.world == 1:
            return obj
        box = [obj if self.is_root else None]
        with _peers_alive():
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_tensor(
        self, tensor: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype
    ) -> torch.Tensor:
        """Rank 0's ``tensor`` (``shape``, ``dtype``, on this rank's device) on every rank."""
        if self.world == 1:
            assert tensor is not None
            return tensor
        if self.is_root:
            assert tensor is not None
            buffer = tensor.contiguous()
        else:
            buffer = torch.empty(shape, dtype=dtype, device=self.device)
        with _peers_alive():
            dist.broadcast(buffer, src=0)
        return buffer

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (a barrier as well)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        with _peers_alive():
            dist.all_gather_object(out, obj)
        return out

    def agree(self, error: AuditorError | None) -> None:
        """Raise on every rank if any rank failed: its own error, or :class:`PeerFailed`."""
        reports = self.gather(None if error is None else str(error))
        if error is not None:
            raise error
        for peer, report in enumerate(reports):
            if report is not None:
                raise PeerFailed(f"rank {peer} stopped: {report}")

    def root_step(self, func: Callable[..., Any], *args: Any) -> Any:
        """:meth:`step` with ``func`` run on rank 0 only; ``None`` on the other ranks."""
        return self.step(func if self.is_root else _nothing, *args)

    def root_value(self, func: Callable[..., Any], *args: Any) -> Any:
        """Rank 0's ``func(*args)`` on every rank: :meth:`root_step`, then :meth:`broadcast`
        (for small objects, such as a run id or the fitted state's bytes)."""
        return self.broadcast(self.root_step(func, *args))

    def cat(self, part: torch.Tensor) -> torch.Tensor:
        """Every rank's ``part`` ``(n_k, ...)`` concatenated in rank order, ``(sum n_k, ...)``
        on the CPU, on every rank (e.g. the self-influences of the ranks' training slices)."""
        return torch.cat(self.gather(part.cpu()))

    def sum_in_rank_order(self, partial: np.ndarray) -> np.ndarray:
        """The float64 sum of every rank's ``partial`` sums ``(n,)``, rank 0's first, on every
        rank (e.g. harmfulness, summed by each rank over its blocks)."""
        return sum_in_rank_order(self.gather(partial))

    def slowest(self, timings: dict[str, float]) -> dict[str, float]:
        """Seconds per phase of this rank's ``timings``: the most any rank spent on it."""
        reports = self.gather(timings)
        return {k: max(r.get(k, 0.0) for r in reports) for k in timings}

    def solver_record(
        self, test: tuple[dict | None, int], self_influence: tuple[dict | None, int]
    ) -> dict:
        """The run's solver record from every rank's ``(diagnostics, columns)`` of its test
        solve (``test``) and of its self-influences: the test solves merged
        (:func:`combine_diagnostics`), the self-influences' under ``self_influence``, and
        with several ranks each rank's share under ``ranks``."""
        parts = self.gather((test, self_influence))
        record = combine_diagnostics([t for t, _ in parts]) or {}
        record = {**record, "self_influence": combine_diagnostics([s for _, s in parts])}
        if self.world > 1:
            record["ranks"] = [_rank_share(k, t, s) for k, (t, s) in enumerate(parts)]
        return record

    def step(self, func: Callable[..., Any], *args: Any) -> Any:
        """``func(*args)`` on this rank, then :meth:`agree` on whether every rank succeeded
        (so that no rank waits forever in a collective for a rank that failed)."""
        result, error = None, None
        try:
            result = func(*args)
        except AuditorError as exc:
            error = exc
        self.agree(error)
        return result


@contextmanager
def _peers_alive() -> Iterator[None]:
    """Turn a collective's failure into :class:`PeerLost` (so that rank 0 marks the run
    failed instead of dying with a traceback)."""
    try:
        yield
    except RuntimeError as exc:  # dist.DistError is one
        raise PeerLost(str(exc)) from None


def _nothing(*_args: Any) -> None:
    return None


def _rank_share(rank: int, test: tuple[dict | None, int], train: tuple[dict | None, int]) -> dict:
    """One rank's entry of a solver record's ``ranks``: its columns and test solve."""
    diag, columns = test
    solve = {} if diag is None else {key: diag[key] for key in ("iterations", "residual_max")}
    return {"rank": rank, "test_columns": columns, "train_columns": train[1], **solve}


@contextmanager
def process_group(device_name: str) -> Iterator[Comm]:
    """Join the torchrun job (gloo on CPUs, nccl on GPUs) and leave it at the end.

    Outside torchrun (``WORLD_SIZE`` unset or 1) this yields a one-rank :class:`Comm`.
    """
    device = torch_device(device_name)
    world = world_size()
    if world == 1:
        yield Comm(0, 1, device)
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank} has no GPU of its own ({torch.cuda.device_count()} "
                "visible): --nproc-per-node must not exceed the GPUs per machine"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield Comm(dist.get_rank(), dist.get_world_size(), device)
    finally:
        dist.destroy_process_group()


@contextmanager
def joined(comm: Comm | None, device_name: str) -> Iterator[Comm]:
    """``comm`` if the caller already joined the job, else :func:`process_group`."""
    if comm is not None:
        yield comm
        return
    with process_group(device_name) as comm:
        yield comm


def test_blocks(n_test: int, chunk: int) -> list[Block]:
    """The ``[j0, j1)`` blocks of test points a one-process scan commits one by one."""
    return [(j0, min(j0 + chunk, n_test)) for j0 in range(0, n_test, chunk)]


def shard(blocks: Sequence[Block], rank: int, world: int) -> list[Block]:
    """The blocks of ``rank``: every ``world``-th block, starting at ``rank`` (balanced)."""
    return list(blocks[rank::world])


def train_slice(n: int, rank: int, world: int) -> slice:
    """``rank``'s contiguous slice of ``n`` training points (sizes differ by at most 1)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def missing_runs(done: set[int], j0: int, j1: int) -> list[Block]:
    """The ``[k0, k1)`` stretches of ``j0 .. j1 - 1`` not in ``done``."""
    out: list[Block] = []
    for j in range(j0, j1):
        if j in done:
            continue
        if out and out[-1][1] == j:
            out[-1] = (out[-1][0], j + 1)
        else:
            out.append((j, j + 1))
    return out


def torch_device(name: str) -> torch.device:
    """The torch device ``--device`` names: ``cpu`` or ``cuda[:k]``; :class:`ConfigError`
    for another, or a GPU that is not here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown --device {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: auditor runs on cpu or cuda[:k]")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible"
        )
    return device


def open_in_order(comm: Comm, db: str) -> Engine:
    """Open ``db`` on rank 0 first (it creates and migrates the schema), then elsewhere."""
    engine = comm.root_step(open_db, db)
    return engine if comm.is_root else open_db(db, create=False)


def share_operator(comm: Comm, op: HessianOperator, args: SolverArgs) -> HessianOperator:
    """Make ``op``, the damped Hessian operator of the scan, ready for the solves of
    ``args`` on every rank. With several ranks, what the solver needs from the whole data
    is computed on rank 0 only and broadcast: the dense loss Hessian when the matvecs, the
    exact solve or the self-influences use it, the largest eigenvalue for LiSSA. In one
    process ``op`` is left as it is. Returns ``op``."""
    if comm.world == 1:
        return op
    exact = args.solver == "exact" and exact_affordable(op.model)
    if op.dense_matvec or exact or self_influence_from_factor(op, args):
        h = comm.root_step(op.loss_hessian)  # rank 0 keeps it in its own cache
        h = comm.broadcast_tensor(h, (op.p, op.p), op.theta.dtype)
        op.use_loss_hessian(h)
    if args.solver == "lissa":
        value = comm.root_step(lambda: op.max_eigenvalue(seed=args.seed))
        op.use_max_eigenvalue(comm.broadcast(value), seed=args.seed)
    return op


def combine_diagnostics(parts: list[tuple[dict | None, int]]) -> dict | None:
    """One solve record from every rank's ``(diagnostics, columns)``: worst residual,
    slowest rank, column-weighted mean residual; ``None`` when no rank solved anything."""
    solved = [(d, c) for d, c in parts if d is not None and c > 0]
    if not solved:
        return None
    if len(solved) == 1:
        return solved[0][0]
    columns = sum(c for _, c in solved)
    combined = dict(solved[0][0])
    combined.update(
        converged=all(d["converged"] for d, _ in solved),
        reached_tol=None
        if any(d.get("reached_tol") is None for d, _ in solved)
        else all(d["reached_tol"] for d, _ in solved),
        residual_max=max(d["residual_max"] for d, _ in solved),
        residual_mean=sum(d["residual_mean"] * c for d, c in solved) / columns,
        iterations=max(d["iterations"] for d, _ in solved),
        seconds=max(d["seconds"] for d, _ in solved),
    )
    return combined


def sum_in_rank_order(arrays: list[np.ndarray]) -> np.ndarray:
    """The float64 sum of the ranks' partial sums (rank 0's first)."""
    # numpy's stubs type a sum as a scalar or an array; along axis 0 of (n,) arrays it
    # is an (n,) array
    return cast(np.ndarray, np.sum(arrays, axis=0, dtype=np.float64))
