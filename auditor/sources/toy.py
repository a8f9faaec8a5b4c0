"""The seed's built-in 1-D regression with two injected y = 100 outliers (``toy-linear``).

A built-in data set: the spec ``toy-linear`` names it, and its cleaned copy is a CSV file
(``toy-linear.csv``, columns ``x,target``) that the CSV reader loads.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from auditor.data import Dataset, SourceInfo
from auditor.sources.base import Decisions, Format, ReadOptions, plan
from auditor.sources.tabular import target_value, write_csv_rows

TOY_LINEAR = "toy-linear"
OUTLIER_INDEXES = (1, 15)


def toy_linear(
    seed: int = 0, outliers: tuple[int, ...] = OUTLIER_INDEXES
) -> tuple[Dataset, Dataset]:
    """The seed's regression: 20 training points and one test point.

    x = -5, -4.5, ..., 4.5; y = -5x + 5 + N(0, 0.1^2); y = 100 at the ``outliers`` indexes
    (x = -4.5 and x = 2.5 by default). The test point is x = 3.2 on the clean line.

    Returns:
        ``(train, test)`` regression datasets with ``(20, 1)`` and ``(1, 1)`` features.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.arange(-5.0, 5.0, 0.5)
    y = -5.0 * x + 5.0 + 0.1 * torch.randn(x.shape, generator=gen)
    for i in outliers:
        y[i] = 100.0
    x_test = torch.tensor([3.2])
    y_test = -5.0 * x_test + 5.0 + 0.1 * torch.randn(x_test.shape, generator=gen)
    source = SourceInfo(TOY_LINEAR, None, {"seed": seed})
    train = Dataset(
        x[:, None],
        y,
        [f"x={v:g}" for v in x.tolist()],
        "regression",
        source=source,
        name=TOY_LINEAR,
    )
    test = Dataset(x_test[:, None], y_test, ["x=3.2"], "regression", source=source, name=TOY_LINEAR)
    return train, test


def write_toy_cleaned(
    source: SourceInfo, decisions: Decisions, out_dir: Path, unlisted: str
) -> list[Path]:
    """toy-linear: its 20 training points as ``toy-linear.csv`` with columns ``x,target``."""
    train, _ = toy_linear(source.options.get("seed", 0))
    keep, relabel = plan(train.ids, decisions, TOY_LINEAR, unlisted)
    rows = []
    for i in keep:
        target = target_value(relabel[i], train.ids[i]) if i in relabel else train.targets[i].item()
        rows.append([repr(train.features[i, 0].item()), repr(float(target))])
    out = out_dir / f"{TOY_LINEAR}.csv"
    write_csv_rows(out, ["x", "target"], rows)
    return [out]


def _read(path: Path | None, options: ReadOptions) -> Dataset:
    """The ``role`` part, seeded with ``seed``; ``normalize`` is only recorded."""
    toy = toy_linear(options.seed)[0 if options.role == "train" else 1]
    source = replace(toy.source, options={**toy.source.options, "normalize": options.normalize})
    return replace(toy, source=source)


TOY = Format(TOY_LINEAR, None, _read, write_toy_cleaned)
