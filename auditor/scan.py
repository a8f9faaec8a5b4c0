"""``auditor scan`` as a library call: data -> fit -> gradients -> IHVP -> scores -> ranking.

Each phase is timed; pair scores are committed one block of test points at a time, and
the run is marked ``complete`` only by its last write, so an interrupted scan never looks
finished.
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
from auditor.errors import AuditorError, ConfigError
from auditor.gradients import per_example_grads
from auditor.influence import robust_ranking, solve_columns
from auditor.models import ModelTask, build_model, default_model_name
from auditor.ranking import combined_flags, combined_suspicion, ranks, suspicion_tests
from auditor.scoring import pair_score_chunks, self_influence
from auditor.sources.idx import find_pairs
from auditor.store import pairs, points, runs
from auditor.training import fit

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
    def __call__(self, name: str) -> Iterator[None]:
        if self.run_id is not None:
            runs.update_run(self.engine, self.run_id, phase=name)
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


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
    """
    progress = progress or (lambda phase, done, total: None)
    device = _device(config.device)
    dtype = getattr(torch, config.model.dtype)
    phases = _Phases(engine)
    with phases("load"):
        train, test = load_data(config.data) if datasets is None else datasets
        model = model_for(config, train)
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
    try:
        return _scan_run(
            engine, run_id, config, model, train, test, device, dtype, phases, progress
        )
    except (AuditorError, KeyboardInterrupt) as exc:
        message = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
        runs.fail_run(engine, run_id, message)
        raise


def _scan_run(engine, run_id, config, model, train, test, device, dtype, phases, progress):
    warnings: list[str] = []
    x, y = _tensors(train, device, dtype)
    x_test, y_test = _tensors(test, device, dtype)
    fit_kwargs = {"max_iter": config.model.max_iter, "grad_tol": config.model.grad_tol}
    wd = config.model.weight_decay

    with phases("fit"):
        fitted = fit(model, x, y, wd, seed=config.data.seed, **fit_kwargs)
        if fitted.grad_norm > FAR_FROM_OPTIMUM:
            warnings.append(
                f"the fit is far from an optimum (gradient norm {fitted.grad_norm:.2e} > "
                f"{FAR_FROM_OPTIMUM:g}); influence assumes one: raise --weight-decay or the "
                "iteration limit"
            )
        train_out = _evaluate(model, fitted.theta, x, y)
        test_out = _evaluate(model, fitted.theta, x_test, y_test)
        points.write_points(engine, run_id, "test", _point_rows(test, test_out))

    with phases("gradients"):
        train_grads = per_example_grads(model, fitted.theta, x, y)
        test_grads = per_example_grads(model, fitted.theta, x_test, y_test)

    with phases("ihvp"):
        columns = torch.cat([test_grads, train_grads]).T  # (p, m + n): one solve serves all
        ihvps, diag = solve_columns(model, fitted.theta, x, y, columns, wd, config.solver)
        test_ihvps, train_ihvps = ihvps[:, : len(test)], ihvps[:, len(test) :]
        if not diag.converged:
            warnings.append(
                f"the {diag.solver} solve did not reach the tolerance {diag.tol:g}: relative "
                f"residual {diag.residual_max:.2e} after {diag.iterations} steps; raise --depth "
                "or --damping"
            )
        runs.update_run(engine, run_id, solver=diag.to_dict())

    with phases("pair_scores"):
        harm = np.zeros(len(train), dtype=np.float64)
        total = len(test)
        for j0, block in pair_score_chunks(train_grads, test_ihvps, config.score_chunk):
            scores = block.cpu().numpy()
            harm += scores.sum(axis=0, dtype=np.float64)
            with engine.begin() as conn:
                pairs.write_pair_scores(conn, run_id, j0, scores)
            progress("pair scores", min(j0 + block.shape[0], total), total)

    with phases("ranking"):
        first = self_influence(train_grads, train_ihvps)
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
        primary, secondary = suspicion_tests(
            train_out["loss"].cpu(), torch.from_numpy(harm), ranked.self_influence.cpu()
        )
        z = combined_suspicion(primary, secondary)
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
        for i, row in enumerate(rows):
            row.update(
                self_influence=float(ranked.self_influence[i]),
                harmfulness=float(harm[i]),
                suspicion=float(z[i]),
                rank=int(rank[i]),
                flags=flags[i],
            )
        points.write_points(engine, run_id, "train", rows)

    flag_counts = _count_flags(flags)
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
        theta=fitted.theta.to(torch.float32).cpu().numpy().tobytes(),
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
        "risk": fitted.risk,
        "grad_norm": fitted.grad_norm,
        "fit_converged": fitted.converged,
        "fit_iterations": fitted.iterations,
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
