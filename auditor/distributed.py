"""Sharded scans with torch.distributed: ``torchrun --nproc-per-node N -m auditor scan ...``.

torchrun starts N processes (ranks) and sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; with ``WORLD_SIZE`` > 1 ``auditor scan`` runs
:func:`scan` here instead of :func:`auditor.scan.scan` (gloo on CPUs, nccl with
``--device cuda``, one GPU per local rank):

1. Rank 0 opens (and migrates) the database, creates the run, fits the model and stores
   the fitted parameters (``runs.theta``) and the test points; it broadcasts the run id and
   the parameters. Every rank loads the data itself and checks its fingerprint.
2. What the whole solve shares is computed once, on rank 0, and broadcast: the dense
   Hessian for ``--solver exact`` (each rank factors it), the largest eigenvalue (LiSSA's
   scale) for ``--solver lissa``. CG shares nothing.
3. The test points are cut into the blocks a one-process scan commits (``score_chunk``
   points each); block k goes to rank k mod N. Each rank solves the IHVPs of its blocks and
   of its contiguous slice of the training points (for self-influence), scores its blocks
   against every training point and commits each block in its own transaction.
4. Every rank sends rank 0 its self-influences, its partial harmfulness sums and its solve
   diagnostics (this is also the barrier). Rank 0 checks that every test point's block is
   stored, ranks the training points (with the refits, on rank 0 alone) and marks the run
   complete, the last write, exactly as a one-process scan.

Equality with a one-process scan: every column is solved against the same operator and
scored in a block of the same shape. With ``--solver exact`` the pair scores equal the
one-process ones to float32 rounding (tests/test_distributed.py measures it). CG and LiSSA
stop once the worst column solved *together* reaches ``--tol``, so a rank's columns may
stop a few steps earlier or later than in one process: their pair scores agree to about
``cond(A) * tol`` relative; pass a tight ``--tol`` for bit-near equality.

A killed rank leaves the run ``running`` (or ``failed``) with some blocks missing;
:func:`resume` (``auditor scan --resume RUN``, under torchrun or not) reloads the stored
parameters and computes only the blocks that are missing, spread over its own ranks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from sqlalchemy.engine import Engine

from auditor.config import ScanConfig
from auditor.data import Dataset, fingerprint, points_fingerprint
from auditor.errors import AuditorError, ConfigError, DataError, StoreError
from auditor.gradients import per_example_grads
from auditor.hessian import HessianOperator
from auditor.influence import robust_ranking
from auditor.models import ModelTask, build_model, default_model_name
from auditor.ranking import ranks
from auditor.scan import (
    FAR_FROM_OPTIMUM,
    Progress,
    ScanResult,
    _count_flags,
    _counter,
    _device,
    _evaluate,
    _metrics,
    _point_rows,
    _tensors,
    load_data,
)
from auditor.scoring import self_influence
from auditor.solvers import solve
from auditor.solvers.exact import MAX_PARAMS
from auditor.store import open_db, pairs, points, runs
from auditor.training import FitResult, fit

Block = tuple[int, int]


@dataclass
class ShardedResult(ScanResult):
    """A :class:`~auditor.scan.ScanResult` with the ranks that ran and the test points this
    job scored (fewer than all on a resume)."""

    ranks: int = 1
    scored: int = 0


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
        dist.broadcast(buffer, src=0)
        return buffer

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (a barrier as well)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
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


def _nothing(*_args: Any) -> None:
    return None


@contextmanager
def process_group(device_name: str) -> Iterator[Comm]:
    """Join the torchrun job (gloo on CPUs, nccl on GPUs) and leave it at the end.

    Outside torchrun (``WORLD_SIZE`` unset or 1) this yields a one-rank :class:`Comm`.
    """
    device = _device(device_name)
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


@dataclass
class SharedHessian(HessianOperator):
    """A :class:`HessianOperator` whose data-wide quantities were computed once on rank 0.

    ``shared`` may hold ``loss_hessian`` (the mean loss Hessian ``(p, p)`` without the
    shift) and ``max_eigenvalue``; the operator then answers from them instead of passing
    over the data again.
    """

    shared: dict = field(default_factory=dict)

    def loss_hessian(self) -> torch.Tensor:
        if "loss_hessian" in self.shared:
            return self.shared["loss_hessian"]
        return super().loss_hessian()  # type: ignore[misc]

    def dense(self) -> torch.Tensor:
        if "loss_hessian" not in self.shared:
            return super().dense()
        h = self.shared["loss_hessian"].clone()
        h.diagonal().add_(self.shift)
        return h

    def max_eigenvalue(self, iters: int = 30, seed: int = 0) -> float:
        if "max_eigenvalue" in self.shared:
            return self.shared["max_eigenvalue"]
        return super().max_eigenvalue(iters, seed)


def shared_operator(
    comm: Comm,
    model: ModelTask,
    theta: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    weight_decay: float,
    args,
) -> SharedHessian:
    """The damped Hessian operator of the scan, with what the solver needs from the whole
    data (dense Hessian for exact, largest eigenvalue for LiSSA) computed on rank 0 only."""
    op = SharedHessian(model, theta, x, y, weight_decay, args.damping)
    if args.solver == "exact" and op.p <= MAX_PARAMS:
        # With shift 0, dense() is the symmetrised loss Hessian itself, bit for bit the
        # matrix a one-process scan adds its shift to.
        plain = HessianOperator(model, theta, x, y, 0.0, 0.0)
        h = comm.root_step(plain.dense)
        op.shared["loss_hessian"] = comm.broadcast_tensor(h, (op.p, op.p), theta.dtype)
    elif args.solver == "lissa":
        plain = HessianOperator(model, theta, x, y, weight_decay, args.damping)
        value = comm.root_step(plain.max_eigenvalue, 30, args.seed)
        op.shared["max_eigenvalue"] = comm.broadcast(value)
    return op


def scan(db: str, config: ScanConfig, progress: Progress | None = None) -> ScanResult | None:
    """A scan sharded over the ranks of this torchrun job, into database ``db``.

    Returns the :class:`~auditor.scan.ScanResult` on rank 0 and ``None`` on the others.

    Raises:
        ConfigError, DataError: on every rank, before the run is created.
        SolverError, StoreError, PeerFailed: after; rank 0 marks the run ``failed``.
    """
    with process_group(config.device) as comm:
        engine = _open(comm, db)
        try:
            return _run(comm, engine, config, None, progress)
        finally:
            engine.dispose()


def resume(db: str, run_id: int, progress: Progress | None = None) -> ScanResult | None:
    """Finish an incomplete run: compute only the test blocks without stored scores.

    Works under torchrun (the missing blocks are spread over the ranks) and in one
    process. The stored fitted parameters are reused; the run's stored configuration is
    used as it is.

    Raises:
        RunNotFound: no such run. ConfigError: the run is complete.
        DataError: the data no longer has the run's fingerprint.
    """
    engine = open_db(db, create=False)
    try:
        run = runs.get_run(engine, run_id, with_theta=True)
        if run["status"] == "complete":
            raise ConfigError(f"run {run_id} is already complete; there is nothing to resume")
        config = ScanConfig.from_dict(run["config"])
        with process_group(config.device) as comm:
            return _run(comm, engine, config, run, progress)
    finally:
        engine.dispose()


def _open(comm: Comm, db: str) -> Engine:
    """Open ``db`` on rank 0 first (it creates and migrates the schema), then elsewhere."""
    engine = comm.root_step(open_db, db)
    return engine if comm.is_root else open_db(db, create=False)


def _load(config: ScanConfig) -> tuple[Dataset, Dataset, ModelTask]:
    train, test = load_data(config.data)
    model = build_model(
        config.model.name or default_model_name(train.task),
        train.task,
        train.n_features,
        train.n_classes,
        hidden=config.model.hidden,
    )
    return train, test, model


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


def _run(
    comm: Comm, engine: Engine, config: ScanConfig, run: dict | None, progress: Progress | None
) -> ScanResult | None:
    timer = _Timer()
    with timer("load"):
        train, test, model = comm.step(_load, config)
        if run is not None:
            comm.step(_check_fingerprint, run, train, test)
    run_id = comm.broadcast(comm.root_step(_start_run, engine, config, run, train, test, model))
    try:
        return _run_started(comm, engine, config, run, run_id, train, test, model, timer, progress)
    except AuditorError as exc:
        if comm.is_root:
            runs.fail_run(engine, run_id, str(exc))
        raise
    except dist.DistError as exc:  # a rank died (killed, out of memory): the run is resumable
        if comm.is_root:
            runs.fail_run(engine, run_id, f"a rank of the job was lost: {exc}")
        raise PeerFailed(
            f"a rank of the job was lost ({str(exc).splitlines()[0]}); run {run_id} is "
            f"incomplete: finish it with `auditor scan --resume {run_id}`"
        ) from None


def _check_fingerprint(run: dict, train: Dataset, test: Dataset) -> None:
    found = fingerprint(train, test)
    if found != run["data_fingerprint"]:
        raise DataError(
            f"run {run['id']}: the data changed since the run started (fingerprint "
            f"{found[:12]}, the run has {run['data_fingerprint'][:12]}); start a new scan"
        )


def _start_run(engine, config, run, train, test, model) -> int:
    """Rank 0: create the run, or mark the resumed one running again."""
    if run is not None:
        runs.update_run(engine, run["id"], status="running", error=None, finished_at=None)
        return run["id"]
    return runs.create_run(
        engine,
        config=config.to_dict(),
        dataset=train.name,
        task=train.task,
        model=model.name,
        n_train=len(train),
        n_test=len(test),
        n_params=model.n_params,
        data_fingerprint=fingerprint(train, test),
        class_names=train.class_names,
        sources={"train": asdict(train.source), "test": asdict(test.source)},
        image_shape=None if train.images is None else list(train.images.shape[1:]),
    )


def _run_started(comm, engine, config, run, run_id, train, test, model, timer, progress):
    progress = progress or (lambda phase, done, total: None)
    device, dtype = comm.device, getattr(torch, config.model.dtype)
    x, y = _tensors(train, device, dtype)
    x_test, y_test = _tensors(test, device, dtype)
    wd = config.model.weight_decay

    with timer("fit"):
        fitted = comm.root_step(_root_fit, engine, run_id, config, run, model, train, test, device)
        theta_bytes = comm.broadcast(_theta_bytes(fitted.theta) if comm.is_root else None)
        theta = _theta_from_bytes(theta_bytes, config.model.dtype).to(device)

    stored = comm.broadcast(
        pairs.stored_test_indexes(engine, run_id) if comm.is_root and run is not None else set()
    )
    blocks = test_blocks(len(test), config.score_chunk)
    pending = [b for b in blocks if any(j not in stored for j in range(*b))]
    mine = shard(pending, comm.rank, comm.world)
    mine_idx = torch.tensor([j for j0, j1 in mine for j in range(j0, j1)], dtype=torch.long)
    own_train = train_slice(len(train), comm.rank, comm.world)

    with timer("gradients"):
        train_grads = per_example_grads(model, theta, x, y)
        test_grads = (
            per_example_grads(
                model, theta, x_test[mine_idx.to(device)], y_test[mine_idx.to(device)]
            )
            if len(mine_idx)
            else train_grads[:0]  # (0, p): nothing left for this rank (a resume)
        )

    with timer("ihvp"):
        op = shared_operator(comm, model, theta, x, y, wd, config.solver)
        columns = torch.cat([test_grads, train_grads[own_train]]).T  # (p, own test + own train)
        ihvps, diag = comm.step(_solve, op, columns, config.solver)
        test_ihvps, train_ihvps = ihvps[:, : len(mine_idx)], ihvps[:, len(mine_idx) :]

    with timer("pair_scores"):
        harm = comm.step(
            _score_blocks, engine, run_id, train_grads, test_ihvps, mine, stored, progress
        )

    own_si = self_influence(train_grads[own_train], train_ihvps).cpu()
    reports = comm.gather(
        {"si": own_si, "harm": harm, "diag": diag, "columns": columns.shape[1], **timer.timings}
    )
    if not comm.is_root:
        return None
    return _finish(
        engine, run_id, config, model, train, test, fitted, theta, x, y, x_test, y_test,
        blocks, pending, reports, timer, progress,
    )  # fmt: skip


def _root_fit(engine, run_id, config, run, model, train, test, device) -> FitResult:
    """Rank 0: the stored fit of a resumed run, or a new fit stored with the test points."""
    stored = _stored_fit(run, model, config) if run is not None else None
    if stored is not None:
        return stored
    dtype = getattr(torch, config.model.dtype)
    x, y = _tensors(train, device, dtype)
    fitted = fit(
        model,
        x,
        y,
        config.model.weight_decay,
        seed=config.data.seed,
        max_iter=config.model.max_iter,
        grad_tol=config.model.grad_tol,
    )
    x_test, y_test = _tensors(test, device, dtype)
    points.write_points(engine, run_id, "test", _point_rows(test, _evaluate(model, fitted.theta, x_test, y_test)))  # fmt: skip
    runs.update_run(engine, run_id, theta=_theta_bytes(fitted.theta), metrics=_fit_metrics(fitted))
    return fitted


def _fit_metrics(fitted: FitResult) -> dict:
    return {
        "risk": fitted.risk,
        "grad_norm": fitted.grad_norm,
        "fit_converged": fitted.converged,
        "fit_iterations": fitted.iterations,
    }


def _stored_fit(run: dict, model: ModelTask, config: ScanConfig) -> FitResult | None:
    """The fit a run stored when its fit phase ended, or ``None`` if it stopped before."""
    metrics = run["metrics"] or {}
    if not run["theta"] or "grad_norm" not in metrics:
        return None
    theta = _theta_from_bytes(run["theta"], config.model.dtype)
    if theta.numel() != model.n_params:
        return None
    return FitResult(
        theta=theta,
        risk=metrics["risk"],
        grad_norm=metrics["grad_norm"],
        iterations=metrics["fit_iterations"],
        converged=metrics["fit_converged"],
    )


def _theta_bytes(theta: torch.Tensor) -> bytes:
    """The parameters ``(p,)`` as little-endian bytes in their own dtype (exact)."""
    array = theta.detach().cpu().numpy()
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def _theta_from_bytes(blob: bytes, dtype: str) -> torch.Tensor:
    array = np.frombuffer(blob, dtype=np.dtype(dtype).newbyteorder("<"))
    return torch.from_numpy(array.astype(np.dtype(dtype)))


def _solve(op: HessianOperator, columns: torch.Tensor, args) -> tuple[torch.Tensor, dict | None]:
    """``A^{-1} V`` and the diagnostics as a dict; nothing to solve for no columns."""
    if columns.shape[1] == 0:
        return columns.clone(), None
    ihvps, diag = solve(op, columns, args)
    return ihvps, diag.to_dict()


def _score_blocks(engine, run_id, train_grads, test_ihvps, mine, stored, progress) -> np.ndarray:
    """Score and commit this rank's blocks; returns their sum per training point ``(n,)``."""
    harm = np.zeros(train_grads.shape[0], dtype=np.float64)
    total = sum(j1 - j0 for j0, j1 in mine)
    offset = 0
    for j0, j1 in mine:
        block = test_ihvps[:, offset : offset + j1 - j0]
        offset += j1 - j0
        scores = (-(train_grads @ block).T).cpu().numpy()  # (c, n), as scoring.pair_score_chunks
        harm += scores.sum(axis=0, dtype=np.float64)
        with engine.begin() as conn:
            for k0, k1 in missing_runs(stored, j0, j1):
                pairs.write_pair_scores(conn, run_id, k0, scores[k0 - j0 : k1 - j0])
        progress("pair scores", offset, total)
    return harm


def _combine_diagnostics(reports: list[dict]) -> dict:
    """One solve record from every rank's: worst residual, slowest rank, per-rank detail."""
    parts = [(r["diag"], r["columns"]) for r in reports if r["diag"] is not None]
    columns = sum(c for _, c in parts)
    combined = dict(parts[0][0])
    combined.update(
        converged=all(d["converged"] for d, _ in parts),
        residual_max=max(d["residual_max"] for d, _ in parts),
        residual_mean=sum(d["residual_mean"] * c for d, c in parts) / columns,
        iterations=max(d["iterations"] for d, _ in parts),
        seconds=max(d["seconds"] for d, _ in parts),
        ranks=[
            {
                "rank": k,
                "columns": r["columns"],
                **(
                    {}
                    if r["diag"] is None
                    else {key: r["diag"][key] for key in ("iterations", "residual_max")}
                ),
            }
            for k, r in enumerate(reports)
        ],
    )
    return combined


def _finish(
    engine, run_id, config, model, train, test, fitted, theta, x, y, x_test, y_test,
    blocks, pending, reports, timer, progress,
) -> ScanResult:  # fmt: skip
    """Rank 0, after every rank reported: check the blocks, rank, mark the run complete."""
    stored = pairs.stored_test_indexes(engine, run_id)
    if len(stored) != len(test):
        raise StoreError(
            f"run {run_id}: only {len(stored)} of {len(test)} test points have stored scores "
            f"after every rank finished; resume with `auditor scan --resume {run_id}`"
        )
    warnings: list[str] = []
    if fitted.grad_norm > FAR_FROM_OPTIMUM:
        warnings.append(
            f"the fit is far from an optimum (gradient norm {fitted.grad_norm:.2e} > "
            f"{FAR_FROM_OPTIMUM:g}); influence assumes one: raise --weight-decay or the "
            "iteration limit"
        )
    diag = _combine_diagnostics(reports)
    if not diag["converged"]:
        warnings.append(
            f"the {diag['solver']} solve did not reach the tolerance {diag['tol']:g}: relative "
            f"residual {diag['residual_max']:.2e} after {diag['iterations']} steps; raise "
            "--depth or --damping"
        )
    harm = np.sum([r["harm"] for r in reports], axis=0)
    for j0, j1 in blocks:  # blocks stored before this job (a resume) are read back
        if (j0, j1) not in pending:
            harm += pairs.read_test_range(engine, run_id, j0, j1).sum(axis=0, dtype=np.float64)
    first = torch.cat([r["si"] for r in reports]).to(theta.device)

    timings = {k: max(r.get(k, 0.0) for r in reports) for k in timer.timings}
    timer.timings = timings
    wd = config.model.weight_decay
    fit_kwargs = {"max_iter": config.model.max_iter, "grad_tol": config.model.grad_tol}
    with timer("ranking"):
        train_out = _evaluate(model, theta, x, y)
        test_out = _evaluate(model, theta, x_test, y_test)
        ranked = robust_ranking(
            model,
            theta,
            x,
            y,
            train_out["predicted"].to(y.dtype),
            first,
            task=train.task,
            weight_decay=wd,
            solver=config.solver,
            rule=config.rule,
            fit_kwargs=fit_kwargs,
            progress=_counter(progress, "ranking refits", config.rule.rounds + 1),
        )
        rank_of = ranks(ranked.z)
        rows = _point_rows(train, train_out)
        for i, row in enumerate(rows):
            row.update(
                self_influence=float(ranked.self_influence[i]),
                harmfulness=float(harm[i]),
                suspicion=float(ranked.z[i]),
                rank=int(rank_of[i]),
                flags=ranked.flags[i],
            )
        points.write_points(engine, run_id, "train", rows)

    flag_counts = _count_flags(ranked.flags)
    runs.finish_run(
        engine,
        run_id,
        metrics={
            **_metrics(train.task, fitted, train_out, y, test_out, y_test),
            "test_fingerprint": points_fingerprint(test),
        },
        ranking={
            "rule": config.rule.to_dict(),
            "refits": ranked.refits,
            "kept_in_last_refit": ranked.kept,
            "flag_counts": flag_counts,
            "refit_solves": ranked.diagnostics,
        },
        solver=diag,
        timings=timer.timings,
        warnings=warnings,
        theta=_theta_bytes(theta),
    )
    n_pairs = len(train) * len(test)
    scored = sum(j1 - j0 for j0, j1 in pending)
    return ShardedResult(
        run_id, timer.timings, warnings, n_pairs, flag_counts, ranks=len(reports), scored=scored
    )
