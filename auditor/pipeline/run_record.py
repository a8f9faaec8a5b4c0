"""What a run records beside its scores: solver diagnostics, warnings, timings, metrics,
and the rows of its points.

Pure functions on the records :mod:`auditor.pipeline.scan` stores with a run (``runs.solver``,
``warnings``, ``timings``, ``metrics``, ``ranking``, the ``points`` rows), including how a
resume merges what it adds with what the interrupted scan stored.
"""

from __future__ import annotations

import torch

from auditor.data import Dataset, Task
from auditor.influence.conditioning import conditioning_warnings
from auditor.models.fit import FitResult
from auditor.pipeline.distributed import combine_diagnostics
from auditor.store.runs import StoredRun

#: Features stored per point when the data has at most this many (for scatter plots).
MAX_STORED_FEATURES = 16


def resumed_solver_record(stored: dict | None, record: dict, solved: int, n_test: int) -> dict:
    """The solver record of a resumed run: the stored test solve's diagnostics merged with
    this scan's (``solved`` of the ``n_test`` columns solved again; worst residual,
    column-weighted mean, not converged if either was), kept as stored when nothing was
    solved again; the self-influences' (always recomputed in full), the conditioning
    check's (always repeated) and the ranks' shares are this scan's."""
    if not stored:
        return record
    extra = ("self_influence", "ranks", "conditioning")
    old = {k: v for k, v in stored.items() if k not in extra} or None
    new = {k: v for k, v in record.items() if k not in extra} or None
    merged = combine_diagnostics([(old, n_test - solved), (new, solved)]) or {}
    if old is not None and new is not None and n_test > solved > 0:
        merged["seconds"] = old["seconds"] + new["seconds"]  # one after the other
    merged["self_influence"] = record.get("self_influence") or stored.get("self_influence")
    for key in ("conditioning", "ranks"):
        if value := record.get(key) or stored.get(key):
            merged[key] = value
    return merged


def stored_warnings(previous: StoredRun | None) -> list[str]:
    """The warnings a resumed run stored, less the solve's (recomputed from the merged
    solver record)."""
    if previous is None:
        return []
    stale = set(solve_warnings(previous.solver or {}))
    return [w for w in previous.warnings or [] if w not in stale]


def add_warnings(warnings: list[str], new: list[str]) -> None:
    warnings.extend(w for w in new if w not in warnings)


def total_timings(previous: StoredRun | None, timings: dict[str, float]) -> dict[str, float]:
    """The run's seconds per phase: this scan's ``timings``, added on a resume to those
    the ``previous`` run stored."""
    total = dict((previous.timings if previous else None) or {})
    for name, seconds in timings.items():
        total[name] = total.get(name, 0.0) + seconds
    return total


def solve_warnings(record: dict) -> list[str]:
    """The warnings a run's solver record calls for: an unconverged solve, and a Hessian
    that makes influence ill-posed (:func:`auditor.influence.conditioning.conditioning_warnings`)."""
    return _convergence_warnings(record) + conditioning_warnings(record.get("conditioning"))


def _convergence_warnings(record: dict) -> list[str]:
    if "converged" not in record or record["converged"]:
        return []
    if record.get("reached_tol"):
        advice = "rounding leaves that much: use --dtype float64 or a looser --tol"
    elif record["solver"] == "cg":
        advice = "raise --damping (CG stopped at its iteration limit)"
    else:
        advice = "raise --depth or --damping"
    return [
        f"the {record['solver']} solve did not reach the tolerance {record['tol']:g}: relative "
        f"residual {record['residual_max']:.2e} after {record['iterations']} steps; {advice}"
    ]


def fit_metrics(fitted: FitResult) -> dict:
    return {
        "risk": fitted.risk,
        "grad_norm": fitted.grad_norm,
        "fit_converged": fitted.converged,
        "fit_iterations": fitted.iterations,
    }


def run_metrics(
    task: Task,
    fitted: FitResult,
    train_out: dict[str, torch.Tensor],
    y: torch.Tensor,
    test_out: dict[str, torch.Tensor],
    y_test: torch.Tensor,
) -> dict:
    metrics = {
        "train_loss": float(train_out["loss"].mean()),
        "test_loss": float(test_out["loss"].mean()),
        **fit_metrics(fitted),
    }
    if task == "classification":
        metrics["train_accuracy"] = float((train_out["predicted"] == y).double().mean())
        metrics["test_accuracy"] = float((test_out["predicted"] == y_test).double().mean())
    return metrics


def count_flags(flags: list[list[str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for point_flags in flags:
        for f in point_flags:
            counts[f] = counts.get(f, 0) + 1
    return counts


def point_rows(
    ds: Dataset, out: dict[str, torch.Tensor], scores: dict[str, list] | None = None
) -> list[dict]:
    """The ``points`` rows of ``ds``: its labels, ids, images (and features, when at most
    :data:`MAX_STORED_FEATURES`), the fitted model's outputs ``out`` (``predicted``,
    ``probability``, ``loss``, each ``(n,)``), and per column of ``scores`` its value for
    each point (the training points' scores, ranks and flags)."""
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
                **{name: values[i] for name, values in (scores or {}).items()},
            }
        )
    return rows
