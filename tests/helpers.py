"""Shared helpers for tests: small scans into real SQLite files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from auditor.config import DataArgs, FlagRule, ModelArgs, ScanConfig, SolverArgs
from auditor.data import Dataset
from auditor.pipeline.scan import scan
from auditor.store import open_db, pairs, points, runs


def write_regression_csv(path: Path, ds: Dataset) -> Path:
    """Write a 1-D regression dataset as ``x,target`` CSV."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["x", "target"])
        for x, y in zip(ds.features[:, 0].tolist(), ds.targets.tolist(), strict=True):
            writer.writerow([repr(x), repr(y)])
    return path


def write_csv(path: Path, columns: dict) -> str:
    """Write ``columns`` (name -> values) as a CSV file; returns its path."""
    names = list(columns)
    rows = zip(*columns.values(), strict=True)
    path.write_text(",".join(names) + "\n" + "".join(",".join(map(repr, r)) + "\n" for r in rows))
    return str(path)


def separable_csv(path: Path, n: int = 60) -> str:
    """Two classes of 2-D points, 6 standard deviations apart: linearly separable."""
    rng = np.random.default_rng(0)
    label = np.arange(n) % 2
    x = rng.normal(size=(n, 2))
    x[:, 0] += 3.0 * (2 * label - 1)
    a, b = x.T.tolist()
    return write_csv(path, {"a": a, "b": b, "label": ["ab"[k] for k in label]})


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


def run_state(db: str, run_id: int) -> dict:
    """Everything a scan stores that the report and exports read back."""
    engine = open_db(db, create=False)
    try:
        train = points.read_points(engine, run_id, "train")
        run = runs.get_run(engine, run_id, with_theta=True).as_dict()
        return {
            "status": run["status"],
            "theta": run["theta"],
            "pairs": pairs.read_pair_scores(engine, run_id),
            "train": {k: [p[k] for p in train] for k in train[0]} if train else {},
            "test": points.read_points(engine, run_id, "test"),
            "metrics": run["metrics"],
            "solver": run["solver"],
        }
    finally:
        engine.dispose()


def assert_same_run(got: dict, want: dict) -> None:
    """Pair for pair and point for point identical (bit for bit)."""
    assert got["status"] == want["status"] == "complete"
    assert got["theta"] == want["theta"]
    assert got["pairs"].shape == want["pairs"].shape
    assert np.array_equal(got["pairs"], want["pairs"])
    for key in ("self_influence", "harmfulness", "suspicion", "rank", "flags", "loss"):
        assert got["train"][key] == want["train"][key], key
    assert got["test"] == want["test"]


def write_remove_decisions(engine, run_id: int, path: Path) -> list[dict]:
    """A decisions file for ``auditor apply`` removing every flagged training point of
    ``run_id``; returns those points."""
    flagged = [p for p in points.read_points(engine, run_id, "train") if p["flags"]]
    decisions = {
        "run": run_id,
        "data_fingerprint": runs.get_run(engine, run_id).as_dict()["data_fingerprint"],
        "decisions": [
            {"index": p["idx"], "id": p["point_id"], "action": "remove"} for p in flagged
        ],
    }
    path.write_text(json.dumps(decisions))
    return flagged


def robust_z_reference(v: np.ndarray) -> np.ndarray:
    """``(v - median) / (1.4826 * MAD)`` with numpy's median (the README's formula)."""
    median = np.median(v)
    return (v - median) / (1.4826 * np.median(np.abs(v - median)))


def error_lines(output: str) -> list[str]:
    """The ``Error:`` lines of a command's output."""
    return [line for line in output.splitlines() if line.startswith("Error:")]


def one_error(output: str, *needles: str) -> str:
    """The one ``Error:`` line of ``output`` (no traceback), holding every needle."""
    assert "Traceback" not in output
    errors = error_lines(output)
    assert len(errors) == 1, output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]
