"""Shared helpers for tests: small scans into real SQLite files."""

from __future__ import annotations

import csv
from pathlib import Path

from auditor.config import DataArgs, ModelArgs, ScanConfig
from auditor.data import Dataset
from auditor.ranking import FlagRule
from auditor.scan import scan
from auditor.solvers.base import SolverArgs
from auditor.store import open_db


def write_regression_csv(path: Path, ds: Dataset) -> Path:
    """Write a 1-D regression dataset as ``x,target`` CSV."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["x", "target"])
        for x, y in zip(ds.features[:, 0].tolist(), ds.targets.tolist(), strict=True):
            writer.writerow([repr(x), repr(y)])
    return path


def run_scan(
    db: Path, data: DataArgs, solver: str = "exact", rule: FlagRule | None = None, **model
):
    """Scan into ``db`` and return ``(engine, ScanResult)``."""
    engine = open_db(str(db))
    config = ScanConfig(
        data=data,
        model=ModelArgs(**model),
        solver=SolverArgs(solver=solver),
        rule=rule or FlagRule(),
    )
    return engine, scan(engine, config)
