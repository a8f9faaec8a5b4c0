"""The cleaning loop: apply a reviewer's decisions to the data, compare runs.

A decisions file is what the report's "Download decisions" button writes::

    {"run": 3, "data_fingerprint": "...",
     "decisions": [{"index": 12, "id": "t10k-images-idx3-ubyte.gz#1207",
                    "action": "relabel", "label": "7"},
                   {"index": 40, "id": "...", "action": "remove"}]}
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine

from auditor import sources
from auditor.data import SourceInfo
from auditor.errors import DataError
from auditor.sources.writers import Decisions, write_cleaned
from auditor.store import points, runs

ACTIONS = ("keep", "relabel", "remove")


@dataclass
class ApplyResult:
    """What ``apply_decisions`` wrote and how to scan it again."""

    written: list[Path]
    counts: dict[str, int]
    rescan: list[str]  # the argv of the next `auditor scan`


def read_decisions(path: Path, run: dict, train_ids: list[str]) -> Decisions:
    """Parse and check a decisions file against the run it was made for.

    Raises:
        DataError: unreadable JSON, another run's file, an index or id that does not
            match the run's training points, an unknown action or class.
    """
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read decisions file {path}: {exc}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("decisions"), list):
        raise DataError(f"{path}: expected an object with a 'decisions' list")
    if payload.get("run") not in (None, run["id"]):
        raise DataError(f"{path} holds decisions for run {payload['run']}, not run {run['id']}")
    fp = payload.get("data_fingerprint")
    if fp is not None and fp != run["data_fingerprint"]:
        raise DataError(
            f"{path} was made for other data (fingerprint differs from run {run['id']})"
        )
    decisions: Decisions = {}
    for n, item in enumerate(payload["decisions"]):
        where = f"{path}: decision {n + 1}"
        if not isinstance(item, dict):
            raise DataError(f"{where} is not an object")
        index, point_id, action = item.get("index"), item.get("id"), item.get("action")
        if not isinstance(index, int) or not 0 <= index < len(train_ids):
            raise DataError(f"{where}: index {index!r} is not a training point of run {run['id']}")
        if point_id is not None and point_id != train_ids[index]:
            raise DataError(
                f"{where}: id {point_id!r} is not training point {index} ({train_ids[index]!r})"
            )
        if action not in ACTIONS:
            raise DataError(f"{where}: action must be one of {', '.join(ACTIONS)}, got {action!r}")
        label = None
        if action == "relabel":
            label = _check_label(str(item.get("label", "")).strip(), run, where)
        decisions[train_ids[index]] = (action, label)
    return decisions


def apply_decisions(
    engine: Engine, run_id: int, decisions_path: Path, out_dir: Path
) -> ApplyResult:
    """Write the cleaned training data of a run into ``out_dir`` in its own format.

    With a ``--test-split`` run the held-out test points are written beside it, unchanged,
    so the next scan is evaluated on exactly the same test points.
    """
    run = runs.get_run(engine, run_id)
    if run["status"] != "complete":
        raise DataError(f"run {run_id} is {run['status']}, not complete")
    train_ids = [p["point_id"] for p in points.read_points(engine, run_id, "train")]
    decisions = read_decisions(decisions_path, run, train_ids)
    source = SourceInfo(**run["sources"]["train"])
    data = run["config"]["data"]
    out_dir = Path(out_dir)
    if data["test_split"] is None:
        written = write_cleaned(source, decisions, out_dir)
        train_spec, test_spec = _spec(source, out_dir), _original_test(run)
    else:
        test_ids = {p["point_id"] for p in points.read_points(engine, run_id, "test")}
        every_id = sources.load(source.path, role=source.options.get("role", "train"),
                                normalize=data["normalize"]).ids  # fmt: skip
        train_decisions = {**{i: ("remove", None) for i in test_ids}, **decisions}
        test_decisions = {i: ("remove", None) for i in every_id if i not in test_ids}
        written = write_cleaned(source, train_decisions, out_dir / "train")
        written += write_cleaned(source, test_decisions, out_dir / "test")
        train_spec, test_spec = _spec(source, out_dir / "train"), _spec(source, out_dir / "test")
    counts = {a: sum(1 for act, _ in decisions.values() if act == a) for a in ACTIONS}
    return ApplyResult(written, counts, rescan_argv(run, train_spec, test_spec))


def rescan_argv(run: dict, train: str, test: str | None) -> list[str]:
    """The ``auditor scan`` arguments that repeat ``run``'s configuration on new data."""
    config = run["config"]
    data, model, solver = config["data"], config["model"], config["solver"]
    argv = ["auditor", "scan", "--train", train]
    if test is not None:
        argv += ["--test", test]
    if data["classes"]:
        argv += ["--classes", ",".join(data["classes"])]
    argv += ["--normalize", data["normalize"], "--seed", str(data["seed"])]
    argv += ["--model", model["name"] or run["model"], "--weight-decay", str(model["weight_decay"])]
    argv += ["--solver", solver["solver"]]
    return argv


def compare_runs(engine: Engine, run_a: int, run_b: int) -> str:
    """A text table of test loss and accuracy for two runs, and the change from A to B."""
    a, b = runs.get_run(engine, run_a), runs.get_run(engine, run_b)
    for run in (a, b):
        if run["status"] != "complete":
            raise DataError(f"run {run['id']} is {run['status']}, not complete")
    rows = [("training points", "n_train", "{:.0f}"), ("test points", "n_test", "{:.0f}")]
    metric_rows = [("train loss", "train_loss", "{:.4f}"), ("test loss", "test_loss", "{:.4f}")]
    if a["task"] == "classification" and b["task"] == "classification":
        metric_rows += [("train accuracy", "train_accuracy", "{:.2%}"),
                        ("test accuracy", "test_accuracy", "{:.2%}")]  # fmt: skip
    lines = [f"{'':<16} {'run ' + str(a['id']):>12} {'run ' + str(b['id']):>12} {'change':>12}"]
    for label, key, fmt in rows:
        lines.append(_row(label, a[key], b[key], fmt))
    for label, key, fmt in metric_rows:
        lines.append(_row(label, a["metrics"][key], b["metrics"][key], fmt))
    if a["metrics"].get("test_fingerprint") != b["metrics"].get("test_fingerprint"):
        lines.append("note: the two runs were evaluated on different test points")
    return "\n".join(lines)


def _row(label: str, va: float, vb: float, fmt: str) -> str:
    change = vb - va
    sign = "+" if change >= 0 else "-"
    return f"{label:<16} {fmt.format(va):>12} {fmt.format(vb):>12} {sign + fmt.format(abs(change)):>12}"


def _check_label(label: str, run: dict, where: str) -> str:
    if run["task"] == "classification":
        if label not in run["class_names"]:
            raise DataError(
                f"{where}: unknown class {label!r}; classes are {', '.join(run['class_names'])}"
            )
        return label
    try:
        float(label)
    except ValueError:
        raise DataError(f"{where}: a regression target must be a number, got {label!r}") from None
    return label


def _spec(source: SourceInfo, out_dir: Path) -> str:
    """The data spec that reads back what ``write_cleaned`` wrote into ``out_dir``."""
    if source.path is None:  # toy-linear
        return str(out_dir / "toy-linear.csv")
    path = Path(source.path)
    return str(out_dir if path.is_dir() else out_dir / path.name)


def _original_test(run: dict) -> str | None:
    data = run["config"]["data"]
    if data["test"] is not None:
        return data["test"]
    if data["train"] == sources.TOY_LINEAR:
        return sources.TOY_LINEAR
    return None  # a folder holding both idx parts: the writer copied the test part


def format_command(argv: list[str]) -> str:
    return shlex.join(argv)
