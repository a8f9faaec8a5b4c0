"""``auditor scan`` as a library call: data -> fit -> features -> gradients -> IHVP -> scores
-> ranking.

:func:`scan` and :func:`resume` read as that flow: one function per stage, each taking the
:class:`~auditor.pipeline.context.ScanContext` and the results of the stages before it
(small dataclasses: :class:`Loaded`, :class:`Fitted`, :class:`Features`,
:class:`Gradients`, :class:`Solved`, :class:`Scored`, :class:`Ranked`). The run is written
through the context's :class:`~auditor.store.writer.RunWriter`; the collectives are
:class:`~auditor.pipeline.distributed.Comm`'s.

Each phase is timed; pair scores are committed one block of test points at a time, and
the run is marked ``complete`` only by its last write, so an interrupted scan never looks
finished. The fitted parameters are stored as soon as the fit ends, so :func:`resume`
finishes a killed or interrupted run: it reloads the data (checking its fingerprint),
recomputes the deterministic gradients from the stored parameters, and solves and scores
only the blocks of test points that are missing.

Under torchrun the same functions run on every rank: :mod:`auditor.pipeline.distributed`
supplies the collectives (the identity in one process), the share of the test blocks each
rank solves and scores, and the Hessian computed once on rank 0; rank 0 alone fits, ranks
and writes the run row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from sqlalchemy.engine import Engine

from auditor.config import ScanConfig, SolverArgs
from auditor.data import Dataset, fingerprint, points_fingerprint
from auditor.errors import AuditorError, ConfigError, Interrupted, SolverError
from auditor.influence.conditioning import Conditioning, check_conditioning
from auditor.influence.ekfac import check_ekfac_model
from auditor.influence.gradients import TrainGradients, per_example_grads, training_gradients
from auditor.influence.hessian import HessianOperator
from auditor.influence.self_influence import self_influences
from auditor.influence.solvers import check_solver, resolved_solver, solve
from auditor.models import ModelTask
from auditor.models.fit import FitResult, fit
from auditor.models.pretrained import check_features
from auditor.models.underfit import underfit
from auditor.models.weight_decay import WeightDecayChoice, default_weight_decay, validated
from auditor.pipeline.blocks import (
    BlockPlan,
    check_all_stored,
    check_finite,
    plan_blocks,
    score_and_store,
)
from auditor.pipeline.context import ScanContext
from auditor.pipeline.distributed import (
    Block,
    Comm,
    PeerFailed,
    PeerLost,
    joined,
    share_operator,
    torch_device,
    train_slice,
)
from auditor.pipeline.interrupts import interruptible
from auditor.pipeline.loading import (
    check_fingerprint,
    check_model_source,
    dataset_tensors,
    load_data,
    model_for,
    model_outputs,
)
from auditor.pipeline.phases import Progress
from auditor.pipeline.run_record import (
    add_warnings,
    count_flags,
    fit_metrics,
    point_rows,
    resumed_solver_record,
    run_metrics,
    solve_warnings,
)
from auditor.pipeline.threads import torch_threads
from auditor.ranking.refits import FirstPass, TrainingProblem, robust_ranking
from auditor.ranking.rule import (
    flag_lists,
    flag_masks,
    left_out_probability,
    ranks,
    suspicion_tests,
)
from auditor.store import runs
from auditor.store.runs import StoredRun

__all__ = [
    "ScanResult",
    "check_fingerprint",
    "dataset_tensors",
    "load_data",
    "model_for",
    "model_outputs",
    "resume",
    "scan",
]

#: A fit whose gradient norm stays above this is reported as far from an optimum.
FAR_FROM_OPTIMUM = 1e-3
#: How a resume refuses a run that a live scan still writes.
LIVE_WRITER_ADVICE = "wait for it to finish or stop it before resuming"


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
    #: The configuration as run: ``auto`` settings resolved (weight decay, solver).
    config: ScanConfig | None = None
    #: How ``--weight-decay auto`` chose, when this scan chose.
    weight_decay_choice: WeightDecayChoice | None = None


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
        ConfigError, DataError: bad options or data, before anything is written to the
            database; except a DataError from the fit (features whose scale overflows the
            dtype), which comes after the run is created and marks it ``failed``.
        SolverError: after the run is created; the run is then marked ``failed``.
        Exception: anything else is a bug; the run is marked ``failed`` with its text.
        Interrupted: Ctrl-C or SIGTERM; the run is marked ``interrupted`` and can be
            finished with :func:`resume`.
        PeerFailed: another rank failed or was lost; the run is left resumable.
    """
    check_registered(config)
    with joined(comm, config.device) as comm, torch_threads(config.threads) as threads:
        ctx = ScanContext.open(engine, config, comm, progress, threads=threads)
        loaded = load(ctx, datasets)
        ctx.run_id = comm.root_value(_create_run, ctx, loaded)
        return _run_marked(ctx, loaded)


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
    if run.status == "complete":
        raise ConfigError(f"run {run_id} is already complete; there is nothing to resume")
    config = ScanConfig.from_dict(run.config)
    check_registered(config)
    with joined(comm, config.device) as comm, torch_threads(config.threads) as threads:
        ctx = ScanContext.open(engine, config, comm, progress, previous=run, threads=threads)
        comm.root_step(runs.refuse_live_writer, run, LIVE_WRITER_ADVICE)  # the others wait
        loaded = load(ctx)
        ctx.run_id = run_id
        ctx.writer.restart(run_id)
        return _run_marked(ctx, loaded)


def check_registered(config: ScanConfig) -> None:
    """Raise :class:`ConfigError` unless ``config`` names a registered solver: the check
    :class:`~auditor.config.SolverArgs` cannot make (the config imports no registry), made
    before a scan or resume writes anything. The model's name is checked against
    :data:`~auditor.models.MODELS` by :func:`~auditor.models.build_model` in the load
    phase, also before any write. ``--features`` is checked here too (architecture, size,
    weights file), before the data is loaded."""
    check_solver(config.solver.solver)
    if config.model.features is not None:
        check_features(config.model.features, config.model.weights, config.model.features_size)


def _run_marked(ctx: ScanContext, loaded: Loaded) -> ScanResult | None:
    """:func:`_run`; if it stops, rank 0 marks the run failed or interrupted (keeping the
    time spent so far). Any other exception, a bug (an ``IndexError`` from deep in torch,
    say), marks the run failed with its type and message, and propagates unchanged: no
    run is left ``running`` (or looking complete) by an error."""
    try:
        with interruptible(ctx.run_id):
            return _run(ctx, loaded)
    except Interrupted:
        ctx.stopped("interrupted", status="interrupted")
        raise
    except AuditorError as exc:
        ctx.stopped(str(exc))
        raise
    except PeerLost as exc:  # a rank died (killed, out of memory): the run is resumable
        ctx.stopped(f"a rank of the job was lost: {exc}")
        raise PeerFailed(
            f"a rank of the job was lost ({str(exc).splitlines()[0]}); "
            f"run {ctx.run_id} is incomplete",
            ctx.run_id,
        ) from None
    except Exception as exc:  # not KeyboardInterrupt: interruptible made it Interrupted
        try:
            ctx.stopped(f"internal error (a bug in auditor): {type(exc).__name__}: {exc}")
        except Exception as marking:  # the bug is what to report; the log gets both
            exc.add_note(f"marking run {ctx.run_id} failed raised {marking!r} as well")
        raise


def _run(ctx: ScanContext, loaded: Loaded) -> ScanResult | None:
    """The stages after the run row exists, on every rank; the result on rank 0."""
    fitted = fit_model(ctx, loaded)
    features = embed(ctx, loaded, fitted)
    grads = gradients(ctx, features, fitted)
    solved = solve_ihvps(ctx, loaded, features, fitted, grads)
    scored = score_pairs(ctx, grads, solved)
    if not ctx.comm.is_root:
        return None
    ranked = rank_points(ctx, loaded, features, fitted, scored)
    return finish(ctx, loaded, features, scored, ranked)


# --- load --------------------------------------------------------------------------------


@dataclass
class Loaded:
    """The data and the unfitted model, on every rank, with the data's tensors on the
    scan's device: features ``x`` ``(n, d)``, ``x_test`` ``(m, d)``, targets ``y``
    ``(n,)``, ``y_test`` ``(m,)``."""

    train: Dataset
    test: Dataset
    model: ModelTask
    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    #: How ``--weight-decay auto`` was resolved, when the config left it so.
    weight_decay_choice: WeightDecayChoice | None = None


def load(ctx: ScanContext, datasets: tuple[Dataset, Dataset] | None = None) -> Loaded:
    """The timed load phase on every rank: the data (``datasets``, or what the config
    names), the model and the tensors; for a resume, the check that the data still has
    the run's fingerprint. Then, before the run exists, ``auto`` settings (weight decay,
    solver) are resolved on rank 0 into ``ctx.config``, so that the run stores what it
    used; the weight decay's validation fits count as fit time."""
    with interruptible(None):
        with ctx.phases("load"):
            loaded = ctx.comm.step(_load, ctx.config, datasets, ctx.comm.device)
            loaded.model.progress = ctx.progress
            if ctx.resumed:
                ctx.comm.step(check_fingerprint, ctx.previous, loaded.train, loaded.test)
                ctx.comm.step(check_model_source, ctx.previous, loaded.model)
        auto = ctx.config.model.weight_decay is None
        shown = "choose weight decay" if auto and validated(loaded.model, loaded.y) else None
        with ctx.phases("fit", mark=False, shown=shown):
            ctx.config, loaded.weight_decay_choice = ctx.comm.root_value(
                _resolved, ctx.config, loaded
            )
    return loaded


def _resolved(config: ScanConfig, loaded: Loaded) -> tuple[ScanConfig, WeightDecayChoice | None]:
    """Rank 0: ``config`` with its ``auto`` weight decay and solver replaced by what they
    mean for the loaded model and data, and how the weight decay was chosen."""
    model_args, choice = config.model, None
    if model_args.weight_decay is None:
        choice = default_weight_decay(
            loaded.model, loaded.x, loaded.y, config.data.seed, model_args.fit_kwargs()
        )
        model_args = replace(model_args, weight_decay=choice.weight_decay)
    solver = replace(config.solver, solver=resolved_solver(config.solver.solver, loaded.model))
    return replace(config, model=model_args, solver=solver), choice


def _load(
    config: ScanConfig, datasets: tuple[Dataset, Dataset] | None, device: torch.device
) -> Loaded:
    train, test = load_data(config.data) if datasets is None else datasets
    dtype = getattr(torch, config.model.dtype)
    tensors = (*dataset_tensors(train, device, dtype), *dataset_tensors(test, device, dtype))
    model = model_for(config, train, tensors[0], device)
    if config.solver.solver == "ekfac":
        check_ekfac_model(model)
    return Loaded(train, test, model, *tensors)


def _create_run(ctx: ScanContext, loaded: Loaded) -> int:
    """Rank 0: insert the run row with the columns a new run starts with; its id."""
    train, test, model = loaded.train, loaded.test, loaded.model
    run_id = ctx.writer.create(
        {
            "config": ctx.config.to_dict(),
            "dataset": train.name,
            "task": train.task,
            "model": model.name,
            "n_train": len(train),
            "n_test": len(test),
            "n_params": model.n_params,
            "data_fingerprint": fingerprint(train, test),
            "class_names": train.class_names,
            "sources": _sources(loaded),
            "image_shape": None if train.images is None else list(train.images.shape[1:]),
        }
    )
    assert run_id is not None, "rank 0's writer returns the run it created"
    return run_id


def _sources(loaded: Loaded) -> dict:
    """Where the run's inputs came from: the data, and a model the scan did not build
    (``model``: a ``--model-file``'s path, kind and SHA-256)."""
    found = {"train": asdict(loaded.train.source), "test": asdict(loaded.test.source)}
    model = loaded.model.provenance()
    return found if model is None else {**found, "model": model}


# --- fit ---------------------------------------------------------------------------------


@dataclass
class Fitted:
    """The fitted parameters ``theta`` ``(p,)`` on every rank (the model holds its fitted
    state outside them, such as the CNN's frozen body); rank 0 also holds the fit."""

    theta: torch.Tensor
    result: FitResult | None


def fit_model(ctx: ScanContext, loaded: Loaded) -> Fitted:
    """The fit phase: rank 0 fits (or takes a resumed run's stored fit), checks the fit and
    stores it at once; the other ranks adopt the fitted state it stored, bit for bit."""
    with ctx.phases("fit"):
        result, state = ctx.comm.root_step(_fit_on_root, ctx, loaded) or (None, None)
        state = ctx.comm.broadcast(state)  # the identity in one process
        if ctx.comm.is_root:
            assert result is not None, "rank 0 fits"
            return Fitted(result.theta, result)
        fitted_state = runs.theta_from_bytes(state, ctx.config.model.dtype)
        theta = loaded.model.load_fitted_state(fitted_state.to(ctx.comm.device))
        assert theta is not None, "rank 0 stored a fitted state that the model reads"
        return Fitted(theta, None)


def _fit_on_root(ctx: ScanContext, loaded: Loaded) -> tuple[FitResult, bytes]:
    """Rank 0: the fit the resumed run stored, or a new one, stored at once so that a resume
    continues from it; checked finite. Returns it with the fitted state as the run stores
    it (:func:`runs.theta_bytes`)."""
    model, config = loaded.model, ctx.config
    stored = _stored_fit(ctx.previous, model, config) if ctx.previous is not None else None
    fitted = (
        stored[0]
        if stored is not None
        else fit(
            model,
            loaded.x,
            loaded.y,
            config.model.resolved_weight_decay,
            seed=config.data.seed,
            **config.model.fit_kwargs(),
        )
    )
    if not torch.isfinite(fitted.theta).all():
        raise SolverError(
            "the fit diverged to non-finite parameters (NaN or inf); scale the features "
            "or raise --weight-decay"
        )
    if fitted.grad_norm > FAR_FROM_OPTIMUM:
        far = (
            f"the fit is far from an optimum (gradient norm {fitted.grad_norm:.2e} > "
            f"{FAR_FROM_OPTIMUM:g}); influence assumes one: {model.optimum_advice}"
        )
        add_warnings(ctx.warnings, [far])
    if stored is not None:
        return stored
    if model.fitted_to_optimum:
        found = underfit(
            model,
            loaded.x,
            loaded.y,
            config.model.resolved_weight_decay,
            fitted,
            config.model.fit_kwargs(),
        )
        if found is not None:
            add_warnings(ctx.warnings, [found.warning()])
    state = runs.theta_bytes(model.fitted_state(fitted.theta))
    ctx.writer.store_fit(state, {**fit_metrics(fitted), **_choice_metrics(ctx, loaded)})
    return fitted, state


def _stored_fit(
    run: StoredRun, model: ModelTask, config: ScanConfig
) -> tuple[FitResult, bytes] | None:
    """The fit a run stored when its fit phase ended, with its stored fitted state
    (``run.theta``), or ``None`` if it stopped before."""
    metrics = run.metrics or {}
    if not run.theta or "grad_norm" not in metrics:
        return None
    state = runs.theta_from_bytes(run.theta, config.model.dtype)
    theta = model.load_fitted_state(state.to(torch_device(config.device)))
    if theta is None:  # stored by an older auditor without the model's fitted state
        return None
    fitted = FitResult(
        theta=theta,
        risk=metrics["risk"],
        grad_norm=metrics["grad_norm"],
        iterations=metrics["fit_iterations"],
        converged=metrics["fit_converged"],
    )
    return fitted, run.theta


# --- features ----------------------------------------------------------------------------


@dataclass
class Outputs:
    """Rank 0: the fitted model's outputs on the training points (``predicted``,
    ``probability``, ``loss``, each ``(n,)``) and the run's metrics."""

    train: dict[str, torch.Tensor]
    metrics: dict


@dataclass
class Features:
    """What influence is taken over, on every rank: ``model`` maps ``theta`` and ``x``
    ``(n, d')``, ``x_test`` ``(m, d')`` to outputs. The scan's model over the data's
    features, or, for a model with a frozen body, its head over the body's embeddings.
    Targets ``y`` ``(n,)``, ``y_test`` ``(m,)``; ``outputs`` on rank 0 only."""

    model: ModelTask
    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    outputs: Outputs | None = None


def embed(ctx: ScanContext, loaded: Loaded, fitted: Fitted) -> Features:
    """The inputs of influence, on every rank (timed with the fit). For a model with a
    frozen body (the CNN with ``params="last"``) the body's embeddings of the training and
    test points, computed once (the training points' by the fit, on rank 0 of a new
    scan): gradients, Hessian, solves and refits then run on the model's head over them.
    Rank 0 also computes the fitted model's outputs and writes the test points."""
    model = loaded.model
    with ctx.phases("fit", mark=False):
        reused = None if fitted.result is None else fitted.result.features
        x = model.frozen_features(loaded.x) if reused is None else reused
        if x is None:
            features = Features(model, loaded.x, loaded.y, loaded.x_test, loaded.y_test)
        else:
            x_test, head = model.frozen_features(loaded.x_test), model.head
            assert x_test is not None and head is not None, f"{model.name} has a frozen body"
            features = Features(head, x, loaded.y, x_test, loaded.y_test)
        features.outputs = ctx.comm.root_step(_outputs, ctx, loaded, features, fitted)
    return features


def _outputs(ctx: ScanContext, loaded: Loaded, features: Features, fitted: Fitted) -> Outputs:
    """Rank 0: the fitted model's outputs and metrics; the test points written."""
    f, theta = features, fitted.theta
    train_out = model_outputs(f.model, theta, f.x, f.y)
    test_out = model_outputs(f.model, theta, f.x_test, f.y_test)
    ctx.writer.write_points("test", point_rows(loaded.test, test_out))
    assert fitted.result is not None, "rank 0 holds the fit"
    metrics = run_metrics(loaded.train.task, fitted.result, train_out, f.y, test_out, f.y_test)
    metrics["test_fingerprint"] = points_fingerprint(loaded.test)
    metrics["threads"] = ctx.threads
    if facts := loaded.model.facts():
        metrics["model_facts"] = facts
    return Outputs(train_out, {**metrics, **_choice_metrics(ctx, loaded)})


def _choice_metrics(ctx: ScanContext, loaded: Loaded) -> dict:
    """``{"weight_decay_choice": ...}`` when this scan (or the run it resumes) chose its
    weight decay by ``auto``, else ``{}``."""
    if loaded.weight_decay_choice is not None:
        return {"weight_decay_choice": loaded.weight_decay_choice.to_dict()}
    stored = (ctx.previous.metrics or {}) if ctx.previous is not None else {}
    choice = stored.get("weight_decay_choice")
    return {} if choice is None else {"weight_decay_choice": choice}


# --- gradients ---------------------------------------------------------------------------


@dataclass
class Gradients:
    """This rank's share of the test blocks (``plan``), the per-example gradients of the
    training points ``train`` ``(n, p)`` and of the test points of its blocks to solve,
    in order, ``test`` ``(m_k, p)``.

    With ``--solver ekfac`` the training gradients are streamed
    (:class:`~auditor.influence.gradients.StreamedGradients`): the scan's memory is then
    bounded by the factors and the test points' ``(m_k, p)``, not by ``n x p``."""

    plan: BlockPlan
    train: TrainGradients
    test: torch.Tensor


def gradients(ctx: ScanContext, features: Features, fitted: Fitted) -> Gradients:
    """The gradients phase on every rank, after dealing out the test blocks."""
    plan = plan_blocks(ctx, features.x_test.shape[0])
    with ctx.phases("gradients"):
        f, theta = features, fitted.theta
        train = training_gradients(f.model, theta, f.x, f.y, ctx.config.solver.streams_gradients)
        test = _test_gradients(features, theta, plan.to_solve)
    return Gradients(plan, train, test)


def _test_gradients(features: Features, theta: torch.Tensor, blocks: list[Block]) -> torch.Tensor:
    """Per-example gradients ``(m, p)`` of the test points of ``blocks``, in order.

    One call per block: a gradient's last bits depend on the rows computed with it, so a
    block gets the same ones in one process, on any rank and on a resume."""
    f = features
    parts = [
        per_example_grads(f.model, theta, f.x_test[j0:j1], f.y_test[j0:j1]) for j0, j1 in blocks
    ]
    if not parts:  # nothing left for this rank (a resume)
        return theta.new_zeros(0, theta.shape[0])
    return torch.cat(parts)


# --- IHVP --------------------------------------------------------------------------------


@dataclass
class Solved:
    """This rank's IHVPs ``A^{-1} g`` of its test gradients ``(p, m_k)`` and the
    self-influences of its contiguous slice of the training points ``(n_k,)``."""

    ihvps: torch.Tensor
    self_influence: torch.Tensor


def solve_ihvps(
    ctx: ScanContext, loaded: Loaded, features: Features, fitted: Fitted, grads: Gradients
) -> Solved:
    """The IHVP phase on every rank: the IHVPs of this rank's test gradients and the
    self-influences of its training slice against the damped Hessian at the fit (shared
    by the ranks), and the run's solver record stored."""
    comm, args, f = ctx.comm, ctx.config.solver, features
    with ctx.phases("ihvp"):
        wd = ctx.config.model.resolved_weight_decay
        op = HessianOperator(f.model, fitted.theta, f.x, f.y, wd, args.damping)
        op.progress = ctx.progress
        share_operator(comm, op, args)
        ihvps, diag = comm.step(_solve, op, grads.test.T.contiguous(), args)
        n_solved = grads.test.shape[0]
        grads.test = grads.test[:0]  # the IHVPs replace them: free the (m_k, p) gradients
        own = train_slice(grads.train.shape[0], comm.rank, comm.world)
        first, self_diag = comm.step(self_influences, op, grads.train[own], args)
        # after the solves: it reads the Cholesky factor they cached, if any
        conditioning = comm.root_step(_conditioning, ctx, op, grads, fitted, loaded)
        del op  # frees its cached (p, p) Hessian and factor before the refits build theirs
        n_own = own.stop - own.start
        record = comm.solver_record((diag, n_solved), (self_diag, n_own))
        _store_solver_record(ctx, record, conditioning, grads.plan)
    return Solved(ihvps, first)


def _store_solver_record(
    ctx: ScanContext, record: dict, conditioning: Conditioning | None, plan: BlockPlan
) -> None:
    """Store the run's solver record (every rank's solves, rank 0's ``conditioning``
    check, on a resume merged with the stored solve's) and add its warnings."""
    if conditioning is not None:
        record["conditioning"] = conditioning
    if ctx.previous is not None:  # a resume
        solved = sum(j1 - j0 for j0, j1 in plan.pending)
        record = resumed_solver_record(ctx.previous.solver, record, solved, plan.n_test)
    ctx.writer.update_solver(record)
    add_warnings(ctx.warnings, solve_warnings(record))


def _solve(
    op: HessianOperator, columns: torch.Tensor, args: SolverArgs
) -> tuple[torch.Tensor, dict | None]:
    """``A^{-1} V`` ``(p, m)`` and the diagnostics as a dict; nothing to solve for ``m = 0``
    (a rank with no block left on a resume)."""
    if columns.shape[1] == 0:
        return columns.clone(), None
    ihvps, diag = solve(op, columns, args)
    return ihvps, diag.to_dict()


def _conditioning(
    ctx: ScanContext, op: HessianOperator, grads: Gradients, fitted: Fitted, loaded: Loaded
) -> Conditioning:
    """Rank 0: :func:`check_conditioning` of ``op`` at the fit. A model used as trained
    (not fitted to an optimum) is not checked for a risk without one (``decrease`` is
    ``None``): the far-from-optimum warning already reports its gradient."""
    seed = ctx.config.solver.seed
    assert fitted.result is not None, "rank 0 holds the fit"
    found = check_conditioning(op, grads.train, fitted.result.risk, seed, loaded.train.task)
    if not loaded.model.fitted_to_optimum:
        found["decrease"] = None
    return found


# --- pair scores -------------------------------------------------------------------------


@dataclass
class Scored:
    """After every rank scored its blocks: the self-influences of all training points
    ``(n,)``, their harmfulness ``(n,)`` (float64) and how many test points this job
    scored (all but those a resumed run had stored)."""

    self_influence: torch.Tensor
    harm: np.ndarray
    n_scored: int


def score_pairs(ctx: ScanContext, grads: Gradients, solved: Solved) -> Scored:
    """The pair scores phase: each rank scores and commits its blocks; then every rank
    gets the self-influences and harmfulness of all (this is also the barrier), the
    timings become the slowest rank's, and rank 0 checks that every block is stored."""
    comm, plan = ctx.comm, grads.plan
    harm = comm.step(score_and_store, ctx, grads.train, solved.ihvps, plan)
    scored = Scored(
        comm.cat(solved.self_influence).to(grads.train.device),
        comm.sum_in_rank_order(harm),
        plan.n_test - len(plan.done),
    )
    ctx.phases.timings = comm.slowest(ctx.phases.timings)
    if comm.is_root:
        check_all_stored(ctx.engine, ctx.existing_run_id, plan.n_test)
    return scored


# --- ranking -----------------------------------------------------------------------------


@dataclass
class Ranked:
    """Rank 0: the run's ranking record and its count of flags per kind."""

    record: dict
    flag_counts: dict[str, int]


def rank_points(
    ctx: ScanContext, loaded: Loaded, features: Features, fitted: Fitted, scored: Scored
) -> Ranked:
    """Rank 0, the ranking phase: rank and flag the training points (with the refits, on
    the model influence is taken over) and store them."""
    config, f, train = ctx.config, features, loaded.train
    rule = config.rule.resolved(len(train))
    assert f.outputs is not None, "rank 0 computed the outputs"
    train_out = f.outputs.train
    loss, harmfulness = train_out["loss"].cpu(), scored.harm
    with ctx.phases("ranking"):
        check_finite(scored.self_influence.cpu().numpy(), "self-influence")  # before the refits
        check_finite(scored.harm, "harmfulness")
        problem = TrainingProblem(
            f.model,
            fitted.theta,
            f.x,
            f.y,
            train.task,
            config.model.resolved_weight_decay,
            _refit_kwargs(config, loaded.model),
        )
        predicted = train_out["predicted"].to(f.y.dtype)
        first = FirstPass(scored.self_influence, predicted, loss, harmfulness)
        progress = _counter(ctx.progress, REFITS_PHASE, rule.rounds + 1)
        ranked = robust_ranking(problem, first, rule, config.solver, progress)
        if 0 < ranked.refits < rule.rounds + 1:  # the refits settled early: done at that
            ctx.progress(REFITS_PHASE, ranked.refits, ranked.refits)
        self_influence, influence = ranked.self_influence.cpu(), ranked.z
        if ranked.refits:  # else it is the first self-influence, checked above
            check_finite(self_influence.numpy(), "self-influence")
        tests = suspicion_tests(loss, harmfulness, self_influence)
        z = tests.combined
        check_finite(z, "suspicion scores")
        predicted = train_out["predicted"].cpu()
        left_out = left_out_probability(loss, self_influence)
        masks = flag_masks(tests.union, influence, predicted, f.y.cpu(), train.task, rule, left_out)
        flags = flag_lists(*masks)
        scores = {
            "self_influence": self_influence.double().tolist(),
            "harmfulness": scored.harm.tolist(),
            "suspicion": z.tolist(),
            "rank": ranks(z).tolist(),
            "flags": flags,
            "union_z": tests.union.tolist(),
            "influence_z": influence.tolist(),
        }
        ctx.writer.write_points("train", point_rows(train, train_out, scores))
    flag_counts = count_flags(flags)
    record = {
        "rule": rule.to_dict(),
        "refits": ranked.refits,
        "kept_in_last_refit": ranked.kept,
        "flag_counts": flag_counts,
        "refit_solves": ranked.diagnostics,
    }
    return Ranked(record, flag_counts)


def _refit_kwargs(config: ScanConfig, model: ModelTask) -> dict:
    """The refits' :func:`fit` options: the scan's, within the model's own limit on the
    fit's iterations (kept when the refits run on the head of a model with a frozen body)."""
    kwargs = config.model.fit_kwargs()
    kwargs["max_iter"] = min(
        kwargs["max_iter"], getattr(model, "max_polish_iter", kwargs["max_iter"])
    )
    return kwargs


#: The progress phase of the ranking's masking refits.
REFITS_PHASE = "ranking refits"


def _counter(progress: Progress, phase: str, total: int) -> Callable[[int], None]:
    """A ``progress(k)`` callback that reports ``phase`` as ``done`` of ``total`` steps."""
    done = 0

    def advance(k: int) -> None:
        nonlocal done
        done = min(done + k, total)
        progress(phase, done, total)

    return advance


# --- finish ------------------------------------------------------------------------------


def finish(
    ctx: ScanContext, loaded: Loaded, features: Features, scored: Scored, ranked: Ranked
) -> ScanResult:
    """Rank 0: mark the run complete, its last write (a resume's timings added to the
    stored ones), and summarise it."""
    assert features.outputs is not None, "rank 0 computed the outputs"
    ctx.writer.finish(
        metrics=features.outputs.metrics,
        ranking=ranked.record,
        timings=ctx.total_timings(),
        warnings=ctx.warnings,
    )
    return ScanResult(
        ctx.existing_run_id,
        ctx.phases.timings,
        ctx.warnings,
        len(loaded.train) * len(loaded.test),
        ranked.flag_counts,
        ranks=ctx.comm.world,
        resumed=ctx.resumed,
        scored=scored.n_scored,
        config=ctx.config,
        weight_decay_choice=loaded.weight_decay_choice,
    )
