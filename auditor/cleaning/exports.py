"""Read a run back as records: exports (JSON, CSV) and the rows of ``auditor show``."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

import numpy as np
from sqlalchemy.engine import Engine

from auditor.config import FlagRule
from auditor.errors import ConfigError
from auditor.ranking.rule import influence_z, suspicion_tests
from auditor.store import pairs, points, runs
from auditor.store.runs import StoredRun

EXPORT_FIELDS = [
    "index",
    "id",
    "label",
    "predicted",
    "probability",
    "loss",
    "self_influence",
    "harmfulness",
    "suspicion",
    "rank",
    "flags",
    "union_z",
    "influence_z",
    "strongest_test",
]


def label_name(run: StoredRun, value: float | None) -> str | float | None:
    """A label as the user knows it: the class name, or the regression value."""
    if value is None:
        return None
    if run.task == "classification" and run.class_names:
        return run.class_names[int(value)]
    return float(f"{value:.6g}")


def train_records(engine: Engine, run_id: int, run: StoredRun | None = None) -> list[dict]:
    """One record per training point, in training-index order, with the z-scores its
    flags were decided on (:func:`attach_flag_tests`). ``run``: the run's row, if the
    caller has read it already."""
    run = run or runs.get_run(engine, run_id)
    records = [
        {
            "index": p["idx"],
            "id": p["point_id"],
            "label": label_name(run, p["label"]),
            "predicted": label_name(run, p["predicted"]),
            "probability": p["probability"],
            "loss": p["loss"],
            "self_influence": p["self_influence"],
            "harmfulness": p["harmfulness"],
            "suspicion": p["suspicion"],
            "rank": p["rank"],
            "flags": p["flags"] or [],
            "union_z": p["union_z"],
            "influence_z": p["influence_z"],
            "strongest_test": None,
        }
        for p in points.read_points(engine, run_id, "train")
    ]
    attach_flag_tests(records, flag_rule(run).influence_scale)
    return records


def flag_rule(run: StoredRun) -> FlagRule:
    """The flag rule a run applied (as stored with its ranking), thresholds unchecked: a
    run stored before they were checked keeps what it applied (the charts guard it)."""
    stored = (run.ranking or {}).get("rule") or run.config["rule"]
    return FlagRule.from_dict(stored, checked=False)


def attach_flag_tests(train: list[dict], scale: str = "log") -> None:
    """Give each training record the z-scores its flags were decided on, ``union_z`` (the
    strongest of the three tests: mislabel flags) and ``influence_z`` (the influence z
    after the masking refits: outlier flags), and ``strongest_test``, the name of the test
    that ``union_z`` is (:data:`~auditor.ranking.rule.TEST_NAMES`).

    Scans store both z-scores (revision 0003); for runs stored before, they are recomputed
    from the stored loss, harmfulness and self-influence with the run's influence
    ``scale``. Records of an unfinished run, without those values, are left as they are.
    """
    columns = [[r[k] for r in train] for k in ("loss", "harmfulness", "self_influence")]
    if not train or any(v is None for column in columns for v in column):
        return
    loss, harm, si = (np.array(c, dtype=np.float64) for c in columns)
    tests = suspicion_tests(loss, harm, si)
    for r, name in zip(train, tests.strongest(), strict=True):
        r["strongest_test"] = name
    if all(r["union_z"] is not None and r["influence_z"] is not None for r in train):
        return
    union, influence = tests.union.tolist(), influence_z(si, scale).tolist()
    for r, u, z in zip(train, union, influence, strict=True):
        r["union_z"], r["influence_z"] = u, z


def run_summary(run: StoredRun) -> dict:
    """The parts of a run an export carries (configuration, metrics, diagnostics)."""
    keys = [
        "id",
        "status",
        "created_at",
        "finished_at",
        "dataset",
        "task",
        "model",
        "n_train",
        "n_test",
        "n_params",
        "data_fingerprint",
        "class_names",
        "config",
        "metrics",
        "solver",
        "ranking",
        "timings",
        "warnings",
    ]
    summary = {k: getattr(run, k) for k in keys}
    for k in ("created_at", "finished_at"):
        summary[k] = summary[k].isoformat() if summary[k] else None
    if summary["solver"]:
        summary["solver"] = {k: v for k, v in summary["solver"].items() if k != "history"}
    return summary


def export_json(engine: Engine, run_id: int) -> str:
    """``{"run": {...}, "train": [...]}`` as JSON text."""
    run = runs.get_run(engine, run_id)
    payload = {"run": run_summary(run), "train": train_records(engine, run_id, run)}
    return json.dumps(payload, indent=1, default=str) + "\n"


def export_csv(engine: Engine, run_id: int) -> str:
    """CSV text with a header row; ``flags`` joined by ``;``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_FIELDS, lineterminator="\n")
    writer.writeheader()
    for record in train_records(engine, run_id):
        writer.writerow({**record, "flags": ";".join(record["flags"])})
    return buffer.getvalue()


InfluenceRow = tuple[int, float, object, str]
"""``(index, score, label, id)``: a point of the other split and its pair's score."""


@dataclass(frozen=True)
class PointInfluence:
    """One point and the points of the other split most strongly paired with it
    (``auditor show``).

    Attributes:
        summary: One line on the point: run, index, id, label and how the run saw it.
        tables: ``(caption, rows)`` in order; each row is ``(index, score, label, id)`` of
            another point, ``score`` the influence score of the pair.
    """

    summary: str
    tables: list[tuple[str, list[InfluenceRow]]]


def influence_on_test(engine: Engine, run_id: int, test_index: int, top: int) -> PointInfluence:
    """The ``top`` most harmful and most helpful training points for one test point."""
    run = runs.get_run(engine, run_id)
    _check_index(test_index, run.n_test, "--test-index")
    scores = pairs.read_test_scores(engine, run_id, test_index)
    train = points.read_points(engine, run_id, "train")
    test = points.read_points(engine, run_id, "test")[test_index]
    order = np.argsort(-scores, kind="stable")
    summary = (
        f"run {run_id}, test point {test_index} ({test['point_id']}): label "
        f"{label_name(run, test['label'])}, predicted {label_name(run, test['predicted'])}, "
        f"loss {test['loss']:.4g}"
    )
    return PointInfluence(
        summary,
        [
            (
                "Most harmful training points (up-weighting raises this test loss):",
                _rows(run, train, order[:top], scores),
            ),
            (
                "Most helpful training points (up-weighting lowers this test loss):",
                _rows(run, train, order[::-1][:top], scores),
            ),
        ],
    )


def influence_of_train(engine: Engine, run_id: int, train_index: int, top: int) -> PointInfluence:
    """The ``top`` test points one training point hurts most."""
    run = runs.get_run(engine, run_id)
    _check_index(train_index, run.n_train, "--train-index")
    scores = pairs.read_train_scores(engine, run_id, train_index)
    train = points.read_points(engine, run_id, "train")[train_index]
    test = points.read_points(engine, run_id, "test")
    order = np.argsort(-scores, kind="stable")[:top]
    summary = (
        f"run {run_id}, training point {train_index} ({train['point_id']}): label "
        f"{label_name(run, train['label'])}, rank {train['rank']}, flags "
        f"{', '.join(train['flags'] or []) or 'none'}"
    )
    return PointInfluence(
        summary, [("Test points it hurts most:", _rows(run, test, order, scores))]
    )


def _rows(
    run: StoredRun, rows: list[dict], order: np.ndarray, scores: np.ndarray
) -> list[InfluenceRow]:
    return [
        (
            int(i),
            float(scores[int(i)]),
            label_name(run, rows[int(i)]["label"]),
            rows[int(i)]["point_id"],
        )
        for i in order
    ]


def _check_index(index: int, size: int, option: str) -> None:
    if not 0 <= index < size:
        raise ConfigError(f"{option} {index} is out of range: the run has {size} such points")
