"""``auditor evaluate``: how well each ranking finds faults injected into the training data.

For each seed: load the data (the split follows the seed), inject faults into the training
part (:mod:`auditor.evaluation.faults`), run a normal scan on it, then score every ranking against the
known faults (:mod:`auditor.evaluation.metrics`):

- ``training loss``: each point's loss under the fitted model;
- ``self-influence``: ``|self-influence|`` from the scan (after its masking refits);
- ``harmfulness``: the sum of a point's influence over all test points;
- ``combined``: the product's ranking, as stored by the scan (the ``rank`` column);
- ``confident learning``: the baseline of :mod:`auditor.evaluation.confident`, on
  out-of-fold probabilities of cross-validated fits of the same model (class labels only);
- ``random``: a random order (the floor).

The scan's flags and confident learning's label issues are scored as sets too (count,
precision, recall).

The fix experiment: a reviewer checks the top ``k`` of the combined ranking and of a random
order, and restores every fault among them to its original label (and features, for
outliers); the model is retrained from scratch and its test loss and accuracy compared
with the faulty and the clean model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TypedDict

import numpy as np
import torch
from sqlalchemy.engine import Engine

from auditor.config import ScanConfig, check_seed
from auditor.data import Dataset, points_fingerprint
from auditor.errors import ConfigError
from auditor.evaluation import metrics as detection
from auditor.evaluation.confident import confident_learning
from auditor.evaluation.cross_val import out_of_fold_probabilities
from auditor.evaluation.faults import NEEDS_PROBABILITIES, FaultSpec, inject
from auditor.evaluation.metrics import FLAGGING, RANKINGS
from auditor.evaluation.paired import PairedComparison, combined_against_each
from auditor.models.fit import fit
from auditor.pipeline.distributed import torch_device
from auditor.pipeline.loading import dataset_tensors, load_data, model_for, model_outputs
from auditor.pipeline.scan import scan
from auditor.store import evaluations, points, runs
from auditor.store.runs import StoredRun

FIX_RANKINGS = ("combined", "random")

Progress = Callable[[str, int, int], None]


class HeldOutMetrics(TypedDict):
    """A model's loss and accuracy on the test points (``None``: regression)."""

    test_loss: float
    test_accuracy: float | None


class FixRow(TypedDict):
    """One checked share of the fix experiment for one ranking (:func:`fix_experiment`),
    stored in a result row's ``fix`` list with these keys in this order.

    Attributes:
        fraction / k: The checked share and the points it checks.
        fixed: The faults among them, restored.
        test_loss / test_accuracy: The model retrained after the fix.
        clean_* / faulty_*: The model trained without faults, and the scan's (faulty) one.
        loss_recovered / accuracy_recovered: The share of the gap between the faulty and
            the clean model that the fix closes (NaN without a gap).
    """

    fraction: float
    k: int
    fixed: int
    test_loss: float
    test_accuracy: float | None
    clean_test_loss: float
    clean_test_accuracy: float | None
    faulty_test_loss: float
    faulty_test_accuracy: float | None
    loss_recovered: float
    accuracy_recovered: float


@dataclass
class EvalArgs:
    """What to inject and measure.

    Attributes:
        faults: The faults injected into the training split.
        seeds: One scan per seed; the seed fixes the split, the faults and the fit.
        fractions: Shares of the data checked for "found after checking" and for the fix
            experiment's ``k``.
        fix: Run the fix experiment (retrains ``1 + 2 * len(fractions)`` models per seed).
        baseline: Measure the confident-learning ranking (five cross-validated fits per
            seed; class labels only).
    """

    faults: FaultSpec
    seeds: list[int] = field(default_factory=lambda: [0])
    fractions: tuple[float, ...] = (0.05, 0.1, 0.2)
    fix: bool = True
    baseline: bool = True

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("--seeds must not repeat a seed")
        for seed in self.seeds:
            check_seed(seed, "--seeds")
        if not self.fractions:
            raise ConfigError("give at least one --checked fraction")
        if not all(0.0 < f <= 1.0 for f in self.fractions):
            raise ConfigError("the checked fractions must lie in (0, 1]")
        names = [detection.fraction_key(f) for f in self.fractions]  # the results' keys
        if len(set(names)) != len(names):
            raise ConfigError(f"--checked must not repeat a fraction, got {', '.join(names)}")


@dataclass
class Evaluation:
    """A finished evaluation: its id, one result row per (seed, ranking), the summary
    ``{ranking: {metric: [mean, spread]}}``, and each seed's scan warnings by run id."""

    id: int
    args: EvalArgs
    results: list[dict]
    summary: dict[str, dict[str, list[float]]]
    timings: dict[str, float]
    warnings: dict[int, list[str]] = field(default_factory=dict)


@dataclass
class FaultyScan:
    """One seed's scan of faulty data (:func:`scan_with_faults`).

    Attributes:
        config: The configuration as scanned, seeded (split, fit, solver), with its
            ``auto`` settings resolved (the fix experiment refits at the scan's weight decay).
        clean, faulty, test: The training split before and after the injection, and the
            test split.
        run_id: The scan's run.
        is_fault: Which training points were injected ``(n,)``.
        warnings: The scan's warnings (as stored with its run).
    """

    config: ScanConfig
    clean: Dataset
    faulty: Dataset
    test: Dataset
    run_id: int
    is_fault: np.ndarray
    warnings: list[str]


def scan_with_faults(
    engine: Engine,
    config: ScanConfig,
    faults: FaultSpec,
    seed: int,
    progress: Progress | None = None,
) -> FaultyScan:
    """Seed ``config`` (its split and solver), inject ``faults`` into the training split
    with the same seed, and scan it: one seed of an evaluation."""
    config = replace(config, data=replace(config.data, seed=seed))
    config.solver = replace(config.solver, seed=seed)
    clean, test = load_data(config.data)
    probabilities = None
    if faults.kind in NEEDS_PROBABILITIES and clean.task == "classification":
        probabilities = clean_probabilities(config, clean, seed)
    faulty, fault_index = inject(clean, faults, seed, probabilities)
    result = scan(engine, config, progress, datasets=(faulty, test))
    assert result is not None, "an evaluation scans in one process, rank 0"
    is_fault = np.zeros(len(faulty), dtype=bool)
    is_fault[fault_index] = True
    assert result.config is not None, "a finished scan returns its resolved configuration"
    return FaultyScan(result.config, clean, faulty, test, result.run_id, is_fault, result.warnings)


#: Out-of-fold probabilities of clean training splits, by (data, model, seed): the
#: ``confusion`` settings of one process (5, 10 and 20%) share them.
_CLEAN_PROBABILITIES: dict[tuple, np.ndarray] = {}


def clean_probabilities(config: ScanConfig, clean: Dataset, seed: int) -> np.ndarray:
    """:func:`out_of_fold_probabilities` of the clean split ``(n, k)``, computed once per
    data, model and seed in this process."""
    key = (points_fingerprint(clean), repr(config.model), config.device, seed)
    if key not in _CLEAN_PROBABILITIES:
        _CLEAN_PROBABILITIES[key] = out_of_fold_probabilities(config, clean, seed)
    return _CLEAN_PROBABILITIES[key]


def ranking_scores(train_points: list[dict], seed: int) -> dict[str, np.ndarray]:
    """Each ranking's suspicion score ``(n,)`` (higher = checked earlier) from a run's stored
    training points."""
    n = len(train_points)
    loss = np.array([p["loss"] for p in train_points], dtype=np.float64)
    si = np.array([p["self_influence"] for p in train_points], dtype=np.float64)
    harm = np.array([p["harmfulness"] for p in train_points], dtype=np.float64)
    rank = np.array([p["rank"] for p in train_points], dtype=np.float64)
    rng = np.random.default_rng(seed + 7919)
    return {
        "training loss": loss,
        "self-influence": np.abs(si),
        "harmfulness": harm,
        "combined": -rank,
        "random": rng.permutation(n).astype(np.float64),
    }


def detection_metrics(scores: np.ndarray, is_fault: np.ndarray, fractions: Sequence[float]) -> dict:
    """AUROC, average precision, share found after each fraction, and the curve."""
    shares, found = detection.detection_curve(scores, is_fault)
    return {
        "auroc": detection.auroc(scores, is_fault),
        "average_precision": detection.average_precision(scores, is_fault),
        "found": {
            detection.fraction_key(f): detection.found_after(scores, is_fault, f) for f in fractions
        },
        "curve": [[round(s, 4), round(v, 5)] for s, v in zip(shares, found, strict=True)],
    }


def evaluate(
    engine: Engine, config: ScanConfig, args: EvalArgs, progress: Progress | None = None
) -> Evaluation:
    """Inject faults, scan and score every ranking for each seed; store and return it."""
    progress = progress or (lambda phase, done, total: None)
    results: list[dict] = []
    warnings: dict[int, list[str]] = {}
    timings = {"scan": 0.0, "fix": 0.0}
    for seed in args.seeds:
        start = time.perf_counter()
        done = scan_with_faults(engine, config, args.faults, seed, progress)
        warnings[done.run_id] = done.warnings
        timings["scan"] += time.perf_counter() - start
        is_fault = done.is_fault
        train_points = points.read_points(engine, done.run_id, "train")
        scores = ranking_scores(train_points, seed)
        flagged = {"combined": np.array([bool(p["flags"]) for p in train_points])}
        if args.baseline and done.faulty.task == "classification":
            start = time.perf_counter()
            probabilities = out_of_fold_probabilities(done.config, done.faulty, seed)
            cl = confident_learning(probabilities, done.faulty.targets.numpy())
            scores["confident learning"], flagged["confident learning"] = cl.scores, cl.issues
            timings["baseline"] = timings.get("baseline", 0.0) + time.perf_counter() - start
        fixes: dict[str, list[FixRow]] = {}
        if args.fix and is_fault.any():
            start = time.perf_counter()
            fixes = fix_experiment(
                done.config,
                runs.get_run(engine, done.run_id),
                done.clean,
                done.faulty,
                done.test,
                {r: scores[r] for r in FIX_RANKINGS},
                is_fault,
                args.fractions,
            )
            timings["fix"] += time.perf_counter() - start
        for name in (r for r in RANKINGS if r in scores):
            flags = flagged.get(name)
            results.append(
                {
                    "seed": seed,
                    "ranking": name,
                    "run_id": done.run_id,
                    "n_train": len(done.faulty),
                    "n_faults": int(is_fault.sum()),
                    **detection_metrics(scores[name], is_fault, args.fractions),
                    "fix": fixes.get(name),
                    "flags": None if flags is None else detection.flag_metrics(flags, is_fault),
                }
            )
        progress("seeds", args.seeds.index(seed) + 1, len(args.seeds))
    summary = summarize(results, args.fractions)
    eval_id = evaluations.write_evaluation(
        engine,
        results,
        config=config.to_dict(),
        faults=args.faults.to_dict(),
        seeds=list(args.seeds),
        summary=summary,
        timings=timings,
    )
    return Evaluation(eval_id, args, results, summary, timings, warnings)


def fix_experiment(
    config: ScanConfig,
    run: StoredRun,
    clean: Dataset,
    faulty: Dataset,
    test: Dataset,
    scores: dict[str, np.ndarray],
    is_fault: np.ndarray,
    fractions: Sequence[float],
) -> dict[str, list[FixRow]]:
    """Retrain after restoring the faults among each ranking's top ``k`` points.

    Returns ``{ranking: [{fraction, k, fixed, test_loss, test_accuracy, loss_recovered,
    accuracy_recovered}]}``; ``*_recovered`` is the share of the gap between the faulty
    and the clean model that the fix closes (NaN when there is no gap).
    """
    base = _retrain(config, clean, test)
    assert run.metrics is not None, f"run {run.id} is complete: it stored its metrics"
    worst: HeldOutMetrics = {
        "test_loss": run.metrics["test_loss"],
        "test_accuracy": run.metrics.get("test_accuracy"),
    }
    out: dict[str, list[FixRow]] = {}
    for name, score in scores.items():
        order = detection.top_order(score)
        rows: list[FixRow] = []
        for f in fractions:
            k = detection.checked_count(f, len(faulty))
            checked = order[:k]
            fixed = checked[is_fault[checked]]
            metrics = _retrain(config, _restore(faulty, clean, fixed), test)
            rows.append(
                {
                    "fraction": f,
                    "k": int(k),
                    "fixed": int(len(fixed)),
                    **metrics,
                    "clean_test_loss": base["test_loss"],
                    "clean_test_accuracy": base["test_accuracy"],
                    "faulty_test_loss": worst["test_loss"],
                    "faulty_test_accuracy": worst["test_accuracy"],
                    "loss_recovered": _share(
                        worst["test_loss"], metrics["test_loss"], base["test_loss"]
                    ),
                    "accuracy_recovered": _share(
                        worst["test_accuracy"], metrics["test_accuracy"], base["test_accuracy"]
                    ),
                }
            )
        out[name] = rows
    return out


def _restore(faulty: Dataset, clean: Dataset, index: np.ndarray) -> Dataset:
    """``faulty`` with the points at ``index`` put back as they were in ``clean``."""
    idx = torch.from_numpy(np.asarray(index, dtype=np.int64))
    features, targets = faulty.features.clone(), faulty.targets.clone()
    features[idx], targets[idx] = clean.features[idx], clean.targets[idx]
    images = None
    if faulty.images is not None:
        assert clean.images is not None, "faults keep the images of the points"
        images = faulty.images.clone()
        images[idx] = clean.images[idx]
    return replace(faulty, features=features, targets=targets, images=images)


def _retrain(config: ScanConfig, train: Dataset, test: Dataset) -> HeldOutMetrics:
    """Fit a fresh model on ``train`` as the scan would; its test loss and accuracy."""
    dtype, device = getattr(torch, config.model.dtype), torch_device(config.device)
    model = model_for(config, train, device=device)
    x, y = dataset_tensors(train, device, dtype)
    x_test, y_test = dataset_tensors(test, device, dtype)
    wd = config.model.resolved_weight_decay
    fitted = fit(model, x, y, wd, seed=config.data.seed, **config.model.fit_kwargs())
    out = model_outputs(model, fitted.theta, x_test, y_test)
    accuracy = None
    if test.task == "classification":
        accuracy = float((out["predicted"] == y_test).double().mean())
    return {"test_loss": float(out["loss"].mean()), "test_accuracy": accuracy}


def _share(worst: float | None, value: float | None, best: float | None) -> float:
    if worst is None or value is None or best is None or worst == best:
        return math.nan
    return (value - worst) / (best - worst)


def summarize(results: list[dict], fractions: Sequence[float]) -> dict[str, dict[str, list[float]]]:
    """``{ranking: {metric: [mean, spread]}}`` over seeds, for the rankings ``results``
    hold; metrics ``auroc``, ``average_precision``, ``found@F``, for the fix rankings
    ``accuracy@F`` and ``loss@F`` (test accuracy and loss after the fix), and for the
    rankings with flags ``flags``, ``flag_precision`` and ``flag_recall``."""
    summary: dict[str, dict[str, list[float]]] = {}
    for name in measured_rankings(results):
        rows = [r for r in results if r["ranking"] == name]
        s = {
            "auroc": list(detection.mean_spread([r["auroc"] for r in rows])),
            "average_precision": list(
                detection.mean_spread([r["average_precision"] for r in rows])
            ),
        }
        for f in fractions:
            key = detection.fraction_key(f)
            s[f"found@{key}"] = list(detection.mean_spread([r["found"][key] for r in rows]))
        fix_rows = [fx for r in rows for fx in (r["fix"] or [])]
        for f in fractions:
            key = detection.fraction_key(f)
            at = [fx for fx in fix_rows if fx["fraction"] == f]
            if at:
                s[f"accuracy@{key}"] = list(
                    detection.mean_spread([_nan(fx["test_accuracy"]) for fx in at])
                )
                s[f"loss@{key}"] = list(detection.mean_spread([fx["test_loss"] for fx in at]))
        flags = [r["flags"] for r in rows if r.get("flags")]
        if flags:
            s["flags"] = list(detection.mean_spread([f["count"] for f in flags]))
            for metric in ("precision", "recall"):
                values = [_nan(f[metric]) for f in flags]
                s[f"flag_{metric}"] = list(detection.mean_spread(values))
        summary[name] = s
    return summary


def measured_rankings(results: list[dict]) -> list[str]:
    """The rankings of :data:`RANKINGS` that ``results`` hold, in its order."""
    present = {r["ranking"] for r in results}
    return [name for name in RANKINGS if name in present]


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


@dataclass(frozen=True)
class SummaryRows:
    """An evaluation's summary as rows (``auditor evaluate`` prints them as tables).

    Attributes:
        heading: One line: the faults, the seeds, how many training points were faulted.
        columns: The detection metrics: ``AUROC``, ``AP``, then ``found@F`` per checked
            share ``F``.
        detection: One row per ranking: its name and ``[mean, spread]`` over the seeds
            per column (``nan`` mean: not measured).
        fix: The fix experiment, one row per checked share and fix ranking: the share, the
            ranking, ``[mean, spread]`` of the test accuracy and of the test loss after
            the fix; empty when the experiment did not run.
        baseline: The first seed's first fix row, for its ``faulty_test_accuracy``,
            ``faulty_test_loss``, ``clean_test_accuracy`` and ``clean_test_loss`` (the
            models before the fix and without faults; an accuracy may be ``None``);
            ``None`` without ``fix``.
        flags: One row per ranking with flags of its own (:data:`FLAGGING`): what they
            are called (``flags``, ``label issues``) and ``[mean, spread]`` of their count,
            precision and recall.
        paired: The combined ranking against each other ranking over the seeds (share
            found after checking 10%, or the first checked share): one-sided paired tests
            that it finds fewer; empty with one seed or no faults.
    """

    heading: str
    columns: list[str]
    detection: list[tuple[str, list[list[float]]]]
    fix: list[tuple[float, str, list[float], list[float]]]
    baseline: FixRow | None
    flags: list[tuple[str, list[list[float]]]] = field(default_factory=list)
    paired: list[PairedComparison] = field(default_factory=list)


def summary_rows(evaluation: Evaluation) -> SummaryRows:
    """The summary of ``evaluation`` as :class:`SummaryRows`."""
    fr = evaluation.args.fractions
    keys = [detection.fraction_key(f) for f in fr]
    seeds = ",".join(str(s) for s in evaluation.args.seeds)
    n_faults = [r["n_faults"] for r in evaluation.results if r["ranking"] == "random"]
    heading = (
        f"evaluation {evaluation.id}: {evaluation.args.faults.label()}, seeds {seeds}, "
        f"{n_faults[0] if n_faults else 0} faults of {evaluation.results[0]['n_train']} "
        "training points (first seed)"
    )
    columns = ["AUROC", "AP", *(f"found@{f:.0%}" for f in fr)]
    per_ranking = []
    for name in measured_rankings(evaluation.results):
        s = evaluation.summary[name]
        per_ranking.append(
            (name, [s["auroc"], s["average_precision"], *(s[f"found@{key}"] for key in keys)])
        )
    fix = []
    for f, key in zip(fr, keys, strict=True):
        for name in FIX_RANKINGS:
            s = evaluation.summary[name]
            if f"accuracy@{key}" in s:
                fix.append((f, name, s[f"accuracy@{key}"], s[f"loss@{key}"]))
    baseline = next((r["fix"][0] for r in evaluation.results if r["fix"]), None)
    flags = [
        (f"{FLAGGING[name]} ({name})", [s["flags"], s["flag_precision"], s["flag_recall"]])
        for name, s in evaluation.summary.items()
        if name in FLAGGING and "flags" in s
    ]
    share = 0.1 if 0.1 in fr else fr[0]
    paired = combined_against_each(evaluation.results, share)
    return SummaryRows(heading, columns, per_ranking, fix, baseline if fix else None, flags, paired)


def evaluation_dict(evaluation: Evaluation) -> dict:
    """A JSON-ready dict of the evaluation (without the curves)."""
    return {
        "id": evaluation.id,
        "args": asdict(evaluation.args),
        "summary": evaluation.summary,
        "timings": evaluation.timings,
    }
