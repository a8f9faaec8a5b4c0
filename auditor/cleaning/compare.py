"""``auditor compare``: two runs' losses and accuracies side by side (before and after
cleaning). It reads stored metrics only: no data, no model, no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from auditor.errors import DataError
from auditor.store import runs
from auditor.store.runs import StoredRun


@dataclass(frozen=True)
class Comparison:
    """Two runs side by side (``auditor compare``).

    Attributes:
        rows: ``(label, A's value, B's value, format spec)``: the training and test
            point counts, then the losses and, for classification, the accuracies; the
            spec (``".4f"``, ``".2%"``...) is how the values read.
        same_test_points: Whether both runs were evaluated on the same test points.
    """

    rows: list[tuple[str, float, float, str]]
    same_test_points: bool


def compare_runs(engine: Engine, run_a: int, run_b: int) -> Comparison:
    """Test loss and accuracy (and the sizes) of two complete runs; the CLI checks that
    they are complete (:func:`auditor.cli.common.resolve_run`).

    Raises:
        DataError: the runs are of different tasks (classification, regression).
    """
    a, b = runs.get_run(engine, run_a), runs.get_run(engine, run_b)
    if a.task != b.task:
        raise DataError(
            f"run {run_a} is {a.task} and run {run_b} is {b.task}: their losses and "
            "accuracies do not compare"
        )
    rows: list[tuple[str, float, float, str]] = [
        ("training points", a.n_train, b.n_train, ".0f"),
        ("test points", a.n_test, b.n_test, ".0f"),
    ]
    metrics = [("train loss", "train_loss", ".4f"), ("test loss", "test_loss", ".4f")]
    if a.task == "classification":  # b's too: checked above
        metrics += [("train accuracy", "train_accuracy", ".2%"),
                    ("test accuracy", "test_accuracy", ".2%")]  # fmt: skip
    metrics_a, metrics_b = _metrics(a), _metrics(b)
    rows += [(label, metrics_a[key], metrics_b[key], spec) for label, key, spec in metrics]
    same = metrics_a.get("test_fingerprint") == metrics_b.get("test_fingerprint")
    return Comparison(rows, same)


def _metrics(run: StoredRun) -> dict[str, Any]:
    """The metrics of a complete run (the CLI checks that it is complete)."""
    assert run.metrics is not None, f"run {run.id} stored no metrics"
    return run.metrics
