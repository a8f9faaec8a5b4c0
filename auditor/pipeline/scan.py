"""``auditor scan`` as a library call: data -> fit -> gradients -> IHVP -> scores -> ranking.

Each phase is timed; pair scores are committed one block of test points at a time, and
the run is marked ``complete`` only by its last write, so an interrupted scan never looks
finished. The fitted parameters are stored as soon as the fit ends, so :func:`resume`
finishes a killed or interrupted run: it reloads the data (checking its fingerprint),
recomputes the deterministic gradients from the stored parameters, and solves and scores
only the blocks of test points that are missing.

Under torchrun the same functions run on every rank: :mod:`auditor.pipeline.distributed` supplies
the collectives (the identity in one process), the share of the test blocks each rank
solves and scores, and the Hessian computed once on rank 0; rank 0 alone fits, ranks and
writes the run row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from sqlalchemy.engine import Engine

from auditor import sources
from auditor.config import DataArgs, ScanConfig
from auditor.data import (
    Dataset,
    check_compatible,
    fingerprint,
    points_fingerprint,
    train_test_split,
    validate,
)
from auditor.errors import (
    AuditorError,
    ConfigError,
    DataError,
    Interrupted,
    SolverError,
)
from auditor.influence.conditioning import check_conditioning
from auditor.influence.gradients import per_example_grads
from auditor.influence.hessian import HessianOperator
from auditor.influence.self_influence import self_influences
from auditor.influence.solvers import check_solver, solve
from auditor.models import ModelTask, build_model, default_model_name
from auditor.models.fit import FitResult, fit
from auditor.pipeline.blocks import (
    check_all_stored,
    check_finite,
    plan_blocks,
    score_and_store,
)
from auditor.pipeline.distributed import (
    Block,
    Comm,
    PeerFailed,
    PeerLost,
    combine_diagnostics,
    joined,
    shared_operator,
    sum_in_rank_order,
    torch_device,
    train_slice,
)
from auditor.pipeline.interrupts import deferred, interruptible, signals_ignored
from auditor.pipeline.run_record import (
    add_warnings,
    count_flags,
    fit_metrics,
    resumed_solver_record,
    run_metrics,
    solve_warnings,
    stored_warnings,
    total_timings,
)
from auditor.ranking.refits import robust_ranking
from auditor.ranking.rule import flag_lists, flag_masks, ranks, suspicion_tests
from auditor.sources.idx import find_pairs
from auditor.store import points, runs

#: Features stored per point when the data has at most this many (for scatter plots).
MAX_STORED_FEATURES = 16
#: A fit whose gradient norm stays above this is reported as far from an optimum.
FAR_FROM_OPTIMUM = 1e-3

Progress = Callable[[str, int, int], None]


@dataclass
class ScanResult:
    """What a finished scan wrote: its run id, timings, warnings and a short summary."""

    run_id: int
    timings: dict[str, float]
    warnings: list[str]
    n_pairs: int
    flag_counts: dict[str, int] = field(default_factory=dict)
    #: Processes that ran it (torchrun ranks), whether it resumed a run, and the test
    #: points this job scored (fewer than all on a resume).
    ranks: int = 1
    resumed: bool = False
    scored: int = 0


def load_data(args: DataArgs) -> tuple[Dataset, Dataset]:
    """The train and test datasets a :class:`DataArgs` names, validated and aligned."""
    kwargs = {"classes": args.classes, "normalize": args.normalize}
    if args.download:
        if args.download != "mnist":
            raise ConfigError(f"--download knows only 'mnist', got {args.download!r}")
        train = sources.download_mnist(args.download_root, "train", **kwargs)
        test = (
            None
            if args.test_split
            else sources.download_mnist(args.download_root, "test", **kwargs)
        )
    else:
        train = sources.load(args.train, role="train", resize=args.resize, seed=args.seed, **kwargs)
        test = None
        if args.test is not None:
            test = sources.load(
                args.test, role="test", resize=args.resize, seed=args.seed, **kwargs
            )
        elif args.test_split is None:
            if args.train == sources.TOY_LINEAR or _has_test_part(args.train):
                test = sources.load(args.train, role="test", seed=args.seed, **kwargs)
            else:
                raise ConfigError("give --test DATA or --test-split FRACTION")
    if test is None:
        validate(train, "train")
        train, test = train_test_split(train, args.test_split, args.seed)
    train, test = sources.match_channels(train, test)
    if train.task == "classification" and test.class_names != train.class_names:
        test = sources.align_classes(test, train.class_names)
    validate(train, "train")
    validate(test, "test")
    check_compatible(train, test)
    return train, test


def model_for(config: ScanConfig, train: Dataset) -> ModelTask:
    """The (unfitted) model ``config`` asks for, shaped for ``train``."""
    return build_model(
        config.model.name or default_model_name(train.task),
        train.task,
        train.n_features,
        train.n_classes,
        hidden=config.model.hidden,
        image_shape=None if train.images is None else tuple(train.images.shape[1:]),
        params=config.model.params,
        epochs=config.model.epochs,
    )


def _has_test_part(spec: str) -> bool:
    """Whether ``spec`` is a folder holding both a train and a test idx pair."""
    path = Path(spec).expanduser()
    return path.is_dir() and len(find_pairs(path)) >= 2


class _Phases:
    """Times phases and records how far a run got."""

    def __init__(self, engine: Engine, run_id: int | None = None):
        self.engine, self.run_id, self.timings = engine, run_id, {}

    @contextmanager
    def __call__(self, name: str, mark: bool = True) -> Iterator[None]:
        """Time a phase; ``mark`` records it as the run's phase in the database."""
        if mark:
            self._mark(name)
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def timed_iter(self, name: str, items: Iterator) -> Iterator:
        """Yield from ``items``, adding the time spent producing each item to ``name``."""
        self.timings.setdefault(name, 0.0)
        self._mark(name)
        while True:
            start = time.perf_counter()
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                self.timings[name] += time.perf_counter() - start
            yield item

    def _mark(self, name: str) -> None:
        if self.run_id is not None:
            with deferred():
                runs.mark_phase(self.engine, self.run_id, name)


def scan(
    engine: Engine,
    config: ScanConfig,
    progress: Progress | None = None,
    comm: Comm | None = None,
    *,
    datasets: tuple[Dataset, Dataset] | None = None,
) -> ScanResult | None:
    """Run a whole scan into ``engine``'s database and return its :class:`ScanResult`.

    ``datasets`` ``(train, test)`` replaces loading ``config.data`` (``auditor evaluate``
    scans data with injected faults this way).

    Under torchrun (``WORLD_SIZE`` > 1) the test points are sharded over the ranks of the
    job ``comm`` (joined here if not given); rank 0 returns the result, the others ``None``.

    Raises:
        ConfigError, DataError: before anything is written to the database.
        SolverError: after the run is created; the run is then marked ``failed``.
        Interrupted: Ctrl-C or SIGTERM; the run is marked ``interrupted`` and can be
            finished with :func:`resume`.
        PeerFailed: another rank failed or was lost; the run is left resumable.
    """
    check_registered(config)
    with joined(comm, config.device) as comm:
        phases, train, test, model = _load_phase(comm, engine, config, datasets=datasets)
        run_id = comm.broadcast(comm.root_step(_create_run, engine, config, train, test, model))
        return _run_guarded(comm, engine, run_id, config, model, train, test, phases, progress)


def resume(
    engine: Engine, run_id: int, progress: Progress | None = None, comm: Comm | None = None
) -> ScanResult | None:
    """Finish an incomplete run (killed, interrupted or failed) with its stored configuration.

    The data is loaded again and must have the fingerprint the run started with. The stored
    fitted parameters are reused (the fit is repeated, deterministically from the stored
    seed, only if the run stopped before the fit ended); gradients are recomputed, and only
    the blocks of test points without stored pair scores are solved and scored (spread over
    the ranks under torchrun). The result equals an uninterrupted scan.

    Raises:
        RunNotFound: No such run.
        ConfigError: The run is already complete.
        StoreError: A scan in another live process on this host is still writing it.
        DataError: The data no longer matches the run's fingerprint.
    """
    run = runs.get_run(engine, run_id, with_theta=True)
    if run["status"] == "complete":
        raise ConfigError(f"run {run_id} is already complete; there is nothing to resume")
    config = ScanConfig.from_dict(run["config"])
    check_registered(config)
    with joined(comm, config.device) as comm:
        refusal = "wait for it to finish or stop it before resuming"
        comm.root_step(runs.refuse_live_writer, run, refusal)  # rank 0: the others scan nothing yet
        phases, train, test, model = _load_phase(comm, engine, config, run)
        if comm.is_root:
            runs.restart_run(engine, run_id)
        return _run_guarded(comm, engine, run_id, config, model, train, test, phases, progress, run)


def check_registered(config: ScanConfig) -> None:
    """Raise :class:`ConfigError` unless ``config`` names a registered solver: the check
    :class:`~auditor.config.SolverArgs` cannot make (the config imports no registry), made
    before a scan or resume writes anything. The model's name is checked against
    :data:`~auditor.models.MODELS` by :func:`~auditor.models.build_model` in the load
    phase, also before any write."""
    check_solver(config.solver.solver)


def _load_phase(
    comm: Comm,
    engine: Engine,
    config: ScanConfig,
    run: dict | None = None,
    datasets: tuple[Dataset, Dataset] | None = None,
):
    """The timed load phase on every rank: the data and the model, and for a resumed
    ``run`` the check that the data still has its fingerprint."""
    phases = _Phases(engine)
    with interruptible(None), phases("load"):
        train, test, model = comm.step(_load, config, datasets)
        if run is not None:
            comm.step(check_fingerprint, run, train, test)
    return phases, train, test, model


def _load(
    config: ScanConfig, datasets: tuple[Dataset, Dataset] | None = None
) -> tuple[Dataset, Dataset, ModelTask]:
    train, test = load_data(config.data) if datasets is None else datasets
    return train, test, model_for(config, train)


def _create_run(engine: Engine, config: ScanConfig, train, test, model: ModelTask) -> int:
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


def check_fingerprint(run: dict, train: Dataset, test: Dataset) -> None:
    """Raise :class:`DataError` unless ``train`` and ``test`` are the data ``run`` read:
    the same fingerprint (features, targets, ids), task and class names (the fingerprint
    holds neither: renamed classes keep the targets, and changing it would invalidate
    stored runs and decisions files)."""
    found = fingerprint(train, test)
    if found != run["data_fingerprint"]:
        change = f"fingerprint {found[:12]}, the run has {run['data_fingerprint'][:12]}"
    elif train.task != run["task"]:
        change = f"a {train.task} task, the run has {run['task']}"
    elif list(train.class_names or []) != list(run["class_names"] or []):
        change = (
            f"classes {_short_list(train.class_names)}, "
            f"the run has {_short_list(run['class_names'])}"
        )
    else:
        return
    raise DataError(
        f"run {run['id']}: the data changed since the run started ({change}); start a new scan"
    )


def _short_list(names: list[str] | None, most: int = 5) -> str:
    names = list(names or [])
    shown = ", ".join(repr(n) for n in names[:most])
    return f"[{shown}{', ...' if len(names) > most else ''}]"


def _run_guarded(comm, engine, run_id, config, model, train, test, phases, progress, previous=None):
    """Run the phases after the run row exists; rank 0 marks the run failed or interrupted
    (keeping the time spent so far). ``previous`` is the stored run a resume continues."""
    phases.run_id = run_id if comm.is_root else None  # rank 0 alone records the phase
    progress = progress or (lambda phase, done, total: None)
    try:
        with interruptible(run_id):
            return _scan_run(
                comm, engine, run_id, config, model, train, test, phases, progress, previous,
            )  # fmt: skip
    except Interrupted:
        _mark_stopped(comm, engine, run_id, "interrupted", previous, phases, "interrupted")
        raise
    except AuditorError as exc:
        _mark_stopped(comm, engine, run_id, str(exc), previous, phases)
        raise
    except PeerLost as exc:  # a rank died (killed, out of memory): the run is resumable
        _mark_stopped(comm, engine, run_id, f"a rank of the job was lost: {exc}", previous, phases)
        raise PeerFailed(
            f"a rank of the job was lost ({str(exc).splitlines()[0]}); run {run_id} is incomplete",
            run_id,
        ) from None


def _mark_stopped(comm, engine, run_id, error, previous, phases, status="failed") -> None:
    """Rank 0: record why the run stopped and the time spent so far (a resume's added to
    the stored), with signals ignored: a second Ctrl-C or torchrun's SIGTERM to the
    surviving ranks must not cut the write short."""
    if comm.is_root:
        with signals_ignored():
            runs.fail_run(
                engine,
                run_id,
                error,
                status=status,
                timings=total_timings(previous, phases.timings),
            )


def _stored_fit(run: dict, model: ModelTask, config: ScanConfig) -> FitResult | None:
    """The fit a run stored when its fit phase ended, or ``None`` if it stopped before."""
    metrics = run["metrics"] or {}
    if not run["theta"] or "grad_norm" not in metrics:
        return None
    state = runs.theta_from_bytes(run["theta"], config.model.dtype)
    theta = model.load_fitted_state(state.to(torch_device(config.device)))
    if theta is None:  # stored by an older auditor without the model's fitted state
        return None
    return FitResult(
        theta=theta,
        risk=metrics["risk"],
        grad_norm=metrics["grad_norm"],
        iterations=metrics["fit_iterations"],
        converged=metrics["fit_converged"],
    )


@dataclass
class _Data:
    """The training and test tensors on the scan's device."""

    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def _scan_run(comm, engine, run_id, config, model, train, test, phases, progress, previous=None):
    """The phases after the run row exists, on every rank; the result on rank 0.

    On a resume ``previous`` is the stored run: its solver record, warnings and timings
    are kept and merged with what this scan adds."""
    warnings = stored_warnings(previous)
    dtype = getattr(torch, config.model.dtype)
    d = _Data(
        *dataset_tensors(train, comm.device, dtype), *dataset_tensors(test, comm.device, dtype)
    )

    with phases("fit"):
        fitted, outputs, state = comm.root_step(
            _fit_phase, engine, run_id, config, model, train, test, d, previous, warnings
        ) or (None, None, None)
        theta = _shared_theta(comm, fitted, state, model, config, d.x.device)
    resumed = previous is not None
    plan = plan_blocks(comm, engine, run_id, len(test), config.score_chunk, resumed)
    with phases("gradients"):
        train_grads = per_example_grads(model, theta, d.x, d.y)
        test_grads = _test_gradients(model, theta, d, plan.to_solve)
    with phases("ihvp"):
        test_ihvps, first, record = _solve_phase(
            comm, model, theta, d, config, train_grads, test_grads, fitted, train.task
        )
        if comm.is_root:
            if previous is not None:
                solved = sum(j1 - j0 for j0, j1 in plan.pending)
                record = resumed_solver_record(previous["solver"], record, solved, len(test))
            with deferred():
                runs.update_run(engine, run_id, solver=record)
            add_warnings(warnings, solve_warnings(record))
    harm = comm.step(
        score_and_store, engine, run_id, train_grads, test_ihvps, plan, phases, progress
    )
    reports = comm.gather({"si": first.cpu(), "harm": harm, "timings": phases.timings})
    if not comm.is_root:
        return None

    check_all_stored(engine, run_id, len(test))
    phases.timings = {k: max(r["timings"].get(k, 0.0) for r in reports) for k in phases.timings}
    first = torch.cat([r["si"] for r in reports]).to(theta.device)
    harm = sum_in_rank_order([r["harm"] for r in reports])
    result = _rank_and_finish(
        engine, run_id, config, model, train, test, d, fitted, outputs, first, harm,
        warnings, phases, progress, previous,
    )  # fmt: skip
    result.ranks, result.resumed = comm.world, resumed
    result.scored = len(test) - len(plan.done)
    return result


def _test_gradients(model: ModelTask, theta, d: _Data, blocks: list[Block]) -> torch.Tensor:
    """Per-example gradients ``(m, p)`` of the test points of ``blocks``, in order.

    One call per block: a gradient's last bits depend on the rows computed with it, so a
    block gets the same ones in one process, on any rank and on a resume."""
    parts = [per_example_grads(model, theta, d.x_test[j0:j1], d.y_test[j0:j1]) for j0, j1 in blocks]
    if not parts:  # nothing left for this rank (a resume)
        return theta.new_zeros(0, theta.shape[0])
    return torch.cat(parts)


def _solve_phase(comm: Comm, model, theta, d: _Data, config, train_grads, test_grads, fitted, task):
    """The IHVPs of this rank's test points ``(p, m)``, the self-influences of its slice of
    the training points, and the run's solver record (every rank's merged, with rank 0's
    check of the Hessian's conditioning at the fit, ``fitted``, under ``conditioning``)."""
    own_train = train_slice(train_grads.shape[0], comm.rank, comm.world)
    op = shared_operator(comm, model, theta, d.x, d.y, config.model.weight_decay, config.solver)
    test_ihvps, diag = comm.step(_solve, op, test_grads.T.contiguous(), config.solver)
    first, self_diag = comm.step(self_influences, op, train_grads[own_train], config.solver)
    # after the solves: it reads the Cholesky factor they cached, if any
    risk = None if fitted is None else fitted.risk  # rank 0 holds the fit
    conditioning = comm.root_step(
        check_conditioning, op, train_grads, risk, config.solver.seed, task
    )
    del op  # frees its cached (p, p) Hessian and factor before the refits build theirs
    record = _solver_record(comm, diag, test_grads.shape[0], self_diag, own_train)
    if conditioning is not None:
        record["conditioning"] = conditioning
    return test_ihvps, first, record


def _fit_phase(engine, run_id, config, model, train, test, d: _Data, previous, warnings):
    """Rank 0: the fit the resumed run ``previous`` stored (or a new one, stored at once so
    that a resume continues from it), checked finite, and the test points written. Returns
    the fit, the model's outputs on the training and test points, and the fitted state as
    the run stores it (:func:`runs.theta_bytes`; the other ranks get the parameters from
    it: only rank 0 decodes the stored fit)."""
    stored = None if previous is None else _stored_fit(previous, model, config)
    fit_kwargs = config.model.fit_kwargs()
    wd = config.model.weight_decay
    fitted = stored or fit(model, d.x, d.y, wd, seed=config.data.seed, **fit_kwargs)
    if not torch.isfinite(fitted.theta).all():
        raise SolverError(
            "the fit diverged to non-finite parameters (NaN or inf); scale the features "
            "or raise --weight-decay"
        )
    if fitted.grad_norm > FAR_FROM_OPTIMUM:
        add_warnings(
            warnings,
            [
                f"the fit is far from an optimum (gradient norm {fitted.grad_norm:.2e} > "
                f"{FAR_FROM_OPTIMUM:g}); influence assumes one: raise --weight-decay or the "
                "iteration limit"
            ],
        )
    train_out = model_outputs(model, fitted.theta, d.x, d.y)
    test_out = model_outputs(model, fitted.theta, d.x_test, d.y_test)
    with deferred():
        points.write_points(engine, run_id, "test", _point_rows(test, test_out))
    if stored is not None:
        return fitted, (train_out, test_out), previous["theta"]
    state = runs.theta_bytes(model.fitted_state(fitted.theta))
    with deferred():
        runs.update_run(engine, run_id, theta=state, metrics=fit_metrics(fitted))
    return fitted, (train_out, test_out), state


def _shared_theta(
    comm: Comm, fitted: FitResult | None, state: bytes | None, model, config, device
) -> torch.Tensor:
    """Rank 0's fitted parameters ``(p,)`` on every rank, bit for bit, from the fitted
    ``state`` rank 0 stored (with the model's fitted state outside them, such as the CNN's
    frozen body)."""
    blob = comm.broadcast(state)  # the identity in one process
    if comm.is_root:
        return fitted.theta
    return model.load_fitted_state(runs.theta_from_bytes(blob, config.model.dtype).to(device))


def _solve(op: HessianOperator, columns: torch.Tensor, args) -> tuple[torch.Tensor, dict | None]:
    """``A^{-1} V`` ``(p, m)`` and the diagnostics as a dict; nothing to solve for ``m = 0``
    (a rank with no block left on a resume)."""
    if columns.shape[1] == 0:
        return columns.clone(), None
    ihvps, diag = solve(op, columns, args)
    return ihvps, diag.to_dict()


def _solver_record(comm: Comm, diag, n_test, self_diag, own_train: slice) -> dict:
    """The run's solver record: the test solve's diagnostics (every rank's merged) with the
    self-influences' under ``self_influence``, and each rank's share under ``ranks``."""
    n_train = own_train.stop - own_train.start
    parts = comm.gather((diag, n_test, self_diag, n_train))
    record = combine_diagnostics([(p[0], p[1]) for p in parts]) or {}
    record = {**record, "self_influence": combine_diagnostics([(p[2], p[3]) for p in parts])}
    if comm.world > 1:
        record["ranks"] = [
            {
                "rank": k,
                "test_columns": p[1],
                "train_columns": p[3],
                **(
                    {}
                    if p[0] is None
                    else {key: p[0][key] for key in ("iterations", "residual_max")}
                ),
            }
            for k, p in enumerate(parts)
        ]
    return record


def _rank_and_finish(
    engine, run_id, config, model, train, test, d: _Data, fitted, outputs, first, harm,
    warnings, phases, progress, previous,
) -> ScanResult:  # fmt: skip
    """Rank 0: rank and flag the training points (with the refits), store them and mark
    the run complete, its last write. ``previous``: the stored run a resume continues (its
    timings are added to this scan's)."""
    train_out, test_out = outputs
    rule = config.rule.resolved(len(train))
    loss, harmfulness = train_out["loss"].cpu(), torch.from_numpy(harm)
    with phases("ranking"):
        check_finite(first.cpu().numpy(), "self-influence")  # before the refits spend time
        check_finite(harm, "harmfulness")
        ranked = robust_ranking(
            model,
            fitted.theta,
            d.x,
            d.y,
            train_out["predicted"].to(d.y.dtype),
            first,
            task=train.task,
            weight_decay=config.model.weight_decay,
            solver=config.solver,
            rule=rule,
            fit_kwargs=config.model.fit_kwargs(),
            progress=_counter(progress, "ranking refits", rule.rounds + 1),
            loss=loss,
            harmfulness=harmfulness,
        )
        self_influence, influence = ranked.self_influence.cpu(), ranked.z.cpu()
        if ranked.refits:  # else it is ``first``, checked above
            check_finite(self_influence.numpy(), "self-influence")
        tests = suspicion_tests(loss, harmfulness, self_influence)
        z = tests.combined
        check_finite(z.numpy(), "suspicion scores")
        rank = ranks(z)
        flags = flag_lists(
            *flag_masks(
                tests.union,
                influence,
                train_out["predicted"].cpu(),
                d.y.cpu(),
                train.task,
                rule,
            )
        )
        rows = _point_rows(train, train_out)
        values = zip(
            self_influence.double().tolist(),
            harm.tolist(),
            z.double().tolist(),
            rank.tolist(),
            tests.union.tolist(),
            influence.double().tolist(),
            strict=True,
        )
        for i, (row, (si, hm, sus, r, uz, iz)) in enumerate(zip(rows, values, strict=True)):
            row.update(
                self_influence=si,
                harmfulness=hm,
                suspicion=sus,
                rank=r,
                flags=flags[i],
                union_z=uz,
                influence_z=iz,
            )
        with deferred():
            points.write_points(engine, run_id, "train", rows)

    flag_counts = count_flags(flags)
    with deferred():
        runs.finish_run(
            engine,
            run_id,
            metrics={
                **run_metrics(train.task, fitted, train_out, d.y, test_out, d.y_test),
                "test_fingerprint": points_fingerprint(test),
            },
            ranking={
                "rule": rule.to_dict(),
                "refits": ranked.refits,
                "kept_in_last_refit": ranked.kept,
                "flag_counts": flag_counts,
                "refit_solves": ranked.diagnostics,
            },
            timings=total_timings(previous, phases.timings),
            warnings=warnings,
        )
    return ScanResult(run_id, phases.timings, warnings, len(train) * len(test), flag_counts)


def _counter(progress: Progress, phase: str, total: int) -> Callable[[int], None]:
    """A ``progress(k)`` callback that reports ``phase`` as ``done`` of ``total`` steps."""
    done = 0

    def advance(k: int) -> None:
        nonlocal done
        done = min(done + k, total)
        progress(phase, done, total)

    return advance


def dataset_tensors(ds: Dataset, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(n, d)`` in ``dtype`` and targets ``(n,)`` (class indices, or values in
    ``dtype``) on ``device``."""
    y = ds.targets.to(device)
    return ds.features.to(device=device, dtype=dtype), y if ds.task == "classification" else y.to(
        dtype
    )


@torch.no_grad()
def model_outputs(model: ModelTask, theta, x, y) -> dict[str, torch.Tensor]:
    """Per-point ``predicted``, ``probability`` and ``loss`` ``(n,)`` of the fitted model."""
    out = model.outputs(theta, x)
    predicted, probability = model.predict(out)
    return {"predicted": predicted, "probability": probability, "loss": model.loss(out, y)}


def _point_rows(ds: Dataset, out: dict[str, torch.Tensor]) -> list[dict]:
    predicted = out["predicted"].double().cpu().tolist()
    probability = out["probability"].double().cpu().tolist()
    loss = out["loss"].double().cpu().tolist()
    labels = ds.targets.double().tolist()
    keep_features = ds.n_features <= MAX_STORED_FEATURES
    rows = []
    for i in range(len(ds)):
        rows.append(
            {
                "idx": i,
                "point_id": ds.ids[i],
                "label": labels[i],
                "predicted": predicted[i],
                "probability": None if probability[i] != probability[i] else probability[i],
                "loss": loss[i],
                "image": None if ds.images is None else ds.images[i].numpy().tobytes(),
                "features": ds.features[i].numpy().astype("<f4").tobytes()
                if keep_features
                else None,
            }
        )
    return rows
