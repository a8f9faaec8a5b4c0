"""``auditor scan`` as a library call: data -> fit -> gradients -> IHVP -> scores -> ranking.

Each phase is timed; pair scores are committed one block of test points at a time, and
the run is marked ``complete`` only by its last write, so an interrupted scan never looks
finished. The fitted parameters are stored as soon as the fit ends, so :func:`resume`
finishes a killed or interrupted run: it reloads the data (checking its fingerprint),
recomputes the deterministic gradients and solve from the stored parameters, and scores
only the test points whose blocks are missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

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
    StoreError,
)
from auditor.gradients import per_example_grads
from auditor.hessian import HessianOperator
from auditor.influence import robust_ranking, self_influences
from auditor.interrupts import deferred, interruptible, signals_ignored
from auditor.models import ModelTask, build_model, default_model_name
from auditor.ranking import combined_flags, combined_suspicion, ranks, suspicion_tests
from auditor.scoring import pair_score_chunks
from auditor.solvers import solve
from auditor.sources.idx import find_pairs
from auditor.store import pairs, points, runs
from auditor.training import FitResult, fit

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
        if mark and self.run_id is not None:
            with deferred():
                runs.update_run(self.engine, self.run_id, phase=name)
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def timed_iter(self, name: str, items: Iterator) -> Iterator:
        """Yield from ``items``, adding the time spent producing each item to ``name``."""
        self.timings.setdefault(name, 0.0)
        if self.run_id is not None:
            with deferred():
                runs.update_run(self.engine, self.run_id, phase=name)
        while True:
            start = time.perf_counter()
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                self.timings[name] += time.perf_counter() - start
            yield item


def scan(
    engine: Engine,
    config: ScanConfig,
    progress: Progress | None = None,
    *,
    datasets: tuple[Dataset, Dataset] | None = None,
) -> ScanResult:
    """Run a whole scan into ``engine``'s database and return its :class:`ScanResult`.

    ``datasets`` ``(train, test)`` replaces loading ``config.data`` (``auditor evaluate``
    scans data with injected faults this way).

    Raises:
        ConfigError, DataError: before anything is written to the database.
        SolverError: after the run is created; the run is then marked ``failed``.
        Interrupted: Ctrl-C or SIGTERM; the run is marked ``interrupted`` and can be
            finished with :func:`resume`.
    """
    phases = _Phases(engine)
    with interruptible(None), phases("load"):
        train, test, model = _load(config, datasets)
    run_id = runs.create_run(
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
    phases.run_id = run_id
    return _run_guarded(engine, run_id, config, model, train, test, phases, progress, None)


def resume(engine: Engine, run_id: int, progress: Progress | None = None) -> ScanResult:
    """Finish an incomplete run (killed, interrupted or failed) with its stored configuration.

    The data is loaded again and must have the fingerprint the run started with. The stored
    fitted parameters are reused (the fit is repeated, deterministically from the stored
    seed, only if the run stopped before the fit ended); gradients and the solve are
    recomputed, and only test points without stored pair scores are scored. The result
    equals an uninterrupted scan.

    Raises:
        RunNotFound: No such run.
        ConfigError: The run is already complete.
        DataError: The data no longer matches the run's fingerprint.
    """
    run = runs.get_run(engine, run_id, with_theta=True)
    if run["status"] == "complete":
        raise ConfigError(f"run {run_id} is already complete; there is nothing to resume")
    config = ScanConfig.from_dict(run["config"])
    phases = _Phases(engine)
    with interruptible(None), phases("load"):
        train, test, model = _load(config)
        found = fingerprint(train, test)
        if found != run["data_fingerprint"]:
            raise DataError(
                f"run {run_id}: the data changed since the run started (fingerprint "
                f"{found[:12]}, the run has {run['data_fingerprint'][:12]}); start a new scan"
            )
    runs.restart_run(engine, run_id)
    phases.run_id = run_id
    stored = _stored_fit(run, model, config)
    return _run_guarded(engine, run_id, config, model, train, test, phases, progress, stored)


def _load(
    config: ScanConfig, datasets: tuple[Dataset, Dataset] | None = None
) -> tuple[Dataset, Dataset, ModelTask]:
    _device(config.device)
    train, test = load_data(config.data) if datasets is None else datasets
    return train, test, model_for(config, train)


def _run_guarded(engine, run_id, config, model, train, test, phases, progress, stored):
    """Run the phases after the run row exists; mark the run failed or interrupted."""
    progress = progress or (lambda phase, done, total: None)
    try:
        with interruptible(run_id):
            return _scan_run(engine, run_id, config, model, train, test, phases, progress, stored)
    except Interrupted:
        with signals_ignored():
            runs.fail_run(engine, run_id, "interrupted", status="interrupted")
        raise
    except AuditorError as exc:
        runs.fail_run(engine, run_id, str(exc))
        raise


def _stored_fit(run: dict, model: ModelTask, config: ScanConfig) -> FitResult | None:
    """The fit a run stored when its fit phase ended, or ``None`` if it stopped before."""
    metrics = run["metrics"] or {}
    if not run["theta"] or "grad_norm" not in metrics:
        return None
    theta = np.frombuffer(run["theta"], dtype=np.dtype(config.model.dtype).newbyteorder("<"))
    if theta.size != model.n_params:
        return None
    return FitResult(
        theta=torch.from_numpy(theta.astype(theta.dtype.newbyteorder("="))).to(
            _device(config.device)
        ),
        risk=metrics["risk"],
        grad_norm=metrics["grad_norm"],
        iterations=metrics["fit_iterations"],
        converged=metrics["fit_converged"],
    )


def _scan_run(engine, run_id, config, model, train, test, phases, progress, stored):
    warnings: list[str] = []
    device = _device(config.device)
    dtype = getattr(torch, config.model.dtype)
    x, y = _tensors(train, device, dtype)
    x_test, y_test = _tensors(test, device, dtype)
    fit_kwargs = {"max_iter": config.model.max_iter, "grad_tol": config.model.grad_tol}
    wd = config.model.weight_decay

    with phases("fit"):
        fitted = stored or fit(model, x, y, wd, seed=config.data.seed, **fit_kwargs)
        if not torch.isfinite(fitted.theta).all():
            raise SolverError(
                "the fit diverged to non-finite parameters (NaN or inf); scale the features "
                "or raise --weight-decay"
            )
        if fitted.grad_norm > FAR_FROM_OPTIMUM:
            warnings.append(
                f"the fit is far from an optimum (gradient norm {fitted.grad_norm:.2e} > "
                f"{FAR_FROM_OPTIMUM:g}); influence assumes one: raise --weight-decay or the "
                "iteration limit"
            )
        train_out = _evaluate(model, fitted.theta, x, y)
        test_out = _evaluate(model, fitted.theta, x_test, y_test)
        with deferred():
            points.write_points(engine, run_id, "test", _point_rows(test, test_out))
        if stored is None:  # the fit is kept so that a resumed run continues from it
            with deferred():
                runs.update_run(
                    engine,
                    run_id,
                    theta=_theta_bytes(fitted.theta),
                    metrics=_fit_metrics(fitted),
                )

    with phases("gradients"):
        train_grads = per_example_grads(model, fitted.theta, x, y)
        test_grads = per_example_grads(model, fitted.theta, x_test, y_test)

    with phases("ihvp"):
        op = HessianOperator(model, fitted.theta, x, y, wd, config.solver.damping)
        # (p, m): one solve for all test points
        test_ihvps, diag = solve(op, test_grads.T.contiguous(), config.solver)
        if not diag.converged:
            warnings.append(
                f"the {diag.solver} solve did not reach the tolerance {diag.tol:g}: relative "
                f"residual {diag.residual_max:.2e} after {diag.iterations} steps; raise --depth "
                "or --damping"
            )
        first, self_diag = self_influences(op, train_grads, config.solver)
        del op  # frees its cached (p, p) Hessian and factor before the refits build theirs
        with deferred():
            runs.update_run(engine, run_id, solver={**diag.to_dict(), "self_influence": self_diag})

    # Scores are computed and stored one block of test points at a time; the two are
    # timed apart ("pair_scores" and "storage") so the benchmark shows where time goes.
    # Blocks committed before an interruption are read back (for harmfulness), not redone.
    harm = np.zeros(len(train), dtype=np.float64)
    total = len(test)
    done = pairs.stored_test_indexes(engine, run_id) if stored is not None else set()
    blocks = _score_blocks(engine, run_id, train_grads, test_ihvps, config.score_chunk, done)
    for j0, scores, fresh in phases.timed_iter("pair_scores", blocks):
        j1 = j0 + scores.shape[0]
        if fresh:
            with phases("storage", mark=False):
                _store_block(engine, run_id, done, j0, scores)
        harm += scores.sum(axis=0, dtype=np.float64)
        progress("pair scores", j1, total)

    with phases("ranking"):
        ranked = robust_ranking(
            model,
            fitted.theta,
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
        _check_finite(ranked.self_influence.cpu().numpy(), "self-influence")
        _check_finite(harm, "harmfulness")
        primary, secondary = suspicion_tests(
            train_out["loss"].cpu(), torch.from_numpy(harm), ranked.self_influence.cpu()
        )
        z = combined_suspicion(primary, secondary)
        _check_finite(z.cpu().numpy(), "suspicion scores")
        rank = ranks(z)
        flags = combined_flags(
            torch.maximum(primary, secondary),
            ranked.z,
            train_out["predicted"].cpu(),
            y.cpu(),
            train.task,
            config.rule,
        )
        rows = _point_rows(train, train_out)
        values = zip(
            ranked.self_influence.double().cpu().tolist(),
            harm.tolist(),
            z.double().cpu().tolist(),
            rank.cpu().tolist(),
            strict=True,
        )
        for i, (row, (si, hm, sus, r)) in enumerate(zip(rows, values, strict=True)):
            row.update(self_influence=si, harmfulness=hm, suspicion=sus, rank=r, flags=flags[i])
        with deferred():
            points.write_points(engine, run_id, "train", rows)

    flag_counts = _count_flags(flags)
    with deferred():
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
            timings=phases.timings,
            warnings=warnings,
            theta=_theta_bytes(fitted.theta),
        )
    return ScanResult(run_id, phases.timings, warnings, len(train) * len(test), flag_counts)


def _theta_bytes(theta: torch.Tensor) -> bytes:
    """The fitted parameters ``(p,)`` as little-endian bytes in their own dtype (exact)."""
    array = theta.detach().cpu().numpy()
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def _fit_metrics(fitted: FitResult) -> dict:
    return {
        "risk": fitted.risk,
        "grad_norm": fitted.grad_norm,
        "fit_converged": fitted.converged,
        "fit_iterations": fitted.iterations,
    }


def _score_blocks(
    engine: Engine,
    run_id: int,
    train_grads: torch.Tensor,
    test_ihvps: torch.Tensor,
    chunk: int,
    done: set[int],
) -> Iterator[tuple[int, np.ndarray, bool]]:
    """``(j0, scores, fresh)`` per block of ``chunk`` test points: ``scores`` is the
    ``(c, n_train)`` float32 block, read back when every point of it is in ``done``
    (``fresh`` False), computed and checked finite otherwise."""
    total = test_ihvps.shape[1]
    for j0 in range(0, total, chunk):
        j1 = min(j0 + chunk, total)
        if all(j in done for j in range(j0, j1)):
            with deferred():
                stored = pairs.read_test_range(engine, run_id, j0, j1)
            yield j0, stored, False
            continue
        _, block = next(pair_score_chunks(train_grads, test_ihvps, chunk, start=j0))
        scores = block.to(torch.float32).cpu().numpy()
        _check_finite(scores, f"pair scores of test points {j0}..{j1 - 1}")
        yield j0, scores, True


def _store_block(engine: Engine, run_id: int, done: set[int], j0: int, scores: np.ndarray) -> None:
    """Commit the rows of one block that are not stored yet, in one transaction."""
    j1 = j0 + scores.shape[0]
    try:
        with deferred(), engine.begin() as conn:
            for k0, k1 in _missing_runs(done, j0, j1):
                pairs.write_pair_scores(conn, run_id, k0, scores[k0 - j0 : k1 - j0])
    except IntegrityError:
        raise StoreError(
            f"run {run_id}: scores of test points {j0}..{j1 - 1} appeared while "
            "this scan computed them; is another scan resuming the same run?"
        ) from None


def _missing_runs(done: set[int], j0: int, j1: int) -> Iterator[tuple[int, int]]:
    """The ``[k0, k1)`` stretches of ``j0 .. j1 - 1`` not in ``done``."""
    k = j0
    while k < j1:
        if k in done:
            k += 1
            continue
        k0 = k
        while k < j1 and k not in done:
            k += 1
        yield k0, k


def _check_finite(values: np.ndarray, what: str) -> None:
    """Refuse to store NaN or infinite scores: fail the run with a clear error instead."""
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise SolverError(
            f"{bad} non-finite {what} (NaN, inf or beyond float32's range); none of them was "
            "stored. Scale the features and targets, or raise --damping or --weight-decay"
        )


def _counter(progress: Progress, phase: str, total: int) -> Callable[[int], None]:
    """A ``progress(k)`` callback that reports ``phase`` as ``done`` of ``total`` steps."""
    done = 0

    def advance(k: int) -> None:
        nonlocal done
        done = min(done + k, total)
        progress(phase, done, total)

    return advance


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown --device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here")
    return device


def _tensors(ds: Dataset, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    y = ds.targets.to(device)
    return ds.features.to(device=device, dtype=dtype), y if ds.task == "classification" else y.to(
        dtype
    )


@torch.no_grad()
def _evaluate(model: ModelTask, theta, x, y) -> dict[str, torch.Tensor]:
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


def _metrics(task, fitted, train_out, y, test_out, y_test) -> dict:
    metrics = {
        "train_loss": float(train_out["loss"].mean()),
        "test_loss": float(test_out["loss"].mean()),
        **_fit_metrics(fitted),
    }
    if task == "classification":
        metrics["train_accuracy"] = float((train_out["predicted"] == y).double().mean())
        metrics["test_accuracy"] = float((test_out["predicted"] == y_test).double().mean())
    return metrics


def _count_flags(flags: list[list[str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for point_flags in flags:
        for f in point_flags:
            counts[f] = counts.get(f, 0) + 1
    return counts
