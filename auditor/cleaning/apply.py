"""The cleaning loop: apply a reviewer's decisions to the data (:mod:`.compare` compares runs).

A decisions file is what the report's "Download decisions" button writes::

    {"run": 3, "data_fingerprint": "...",
     "decisions": [{"index": 12, "id": "t10k-images-idx3-ubyte.gz#1207",
                    "action": "relabel", "label": "7"},
                   {"index": 40, "id": "...", "action": "remove"},
                   {"split": "test", "index": 5, "id": "...", "action": "relabel",
                    "label": "1"}]}

A decision names a training point unless its ``split`` is ``"test"``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeGuard

from sqlalchemy.engine import Engine

from auditor import sources
from auditor.config import DataArgs, ScanConfig
from auditor.data import SourceInfo
from auditor.errors import DataError
from auditor.pipeline.scan import check_fingerprint, load_data
from auditor.sources.writers import Decisions, target_value, write_cleaned
from auditor.store import points, runs
from auditor.store.runs import StoredRun

ACTIONS = ("keep", "relabel", "remove")


@dataclass
class ReviewDecisions:
    """A decisions file's decisions by point id, for the training and the test points."""

    train: Decisions
    test: Decisions


@dataclass
class ApplyResult:
    """What ``apply_decisions`` wrote and what to scan next.

    Attributes:
        written: The files written.
        counts: How many decisions of each action were applied (training points).
        test_counts: The same for the test points.
        config: The run's configuration, for the rescan.
        train, test: The rescan's data specs (``test`` ``None``: ``train`` holds both).
    """

    written: list[Path]
    counts: dict[str, int]
    test_counts: dict[str, int]
    config: ScanConfig
    train: str
    test: str | None


def read_decisions(
    path: Path, run: StoredRun, train_ids: list[str], test_ids: list[str] | None = None
) -> ReviewDecisions:
    """Parse and check a decisions file against the run it was made for (the ids of its
    training and test points, by index).

    Raises:
        DataError: unreadable JSON, another run's file, an unknown split, an index or id
            that does not match the run's points of its split, an unknown action or class.
    """
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read decisions file {path}: {exc}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("decisions"), list):
        raise DataError(f"{path}: expected an object with a 'decisions' list")
    if payload.get("run") not in (None, run.id) or isinstance(payload.get("run"), bool):
        raise DataError(f"{path} holds decisions for run {payload['run']!r}, not run {run.id}")
    fp = payload.get("data_fingerprint")
    if fp is not None and fp != run.data_fingerprint:
        raise DataError(f"{path} was made for other data (fingerprint differs from run {run.id})")
    ids = {"train": train_ids, "test": test_ids or []}
    decided: dict[str, Decisions] = {"train": {}, "test": {}}
    first: dict[tuple[str, int], int] = {}  # (split, index) -> the decision that named it
    for n, item in enumerate(payload["decisions"]):
        where = f"{path}: decision {n + 1}"
        if not isinstance(item, dict):
            raise DataError(f"{where} is not an object")
        index, point_id, action = item.get("index"), item.get("id"), item.get("action")
        split = item.get("split", "train")
        if split not in ids:
            raise DataError(f"{where}: split must be train or test, got {split!r}")
        what = "training point" if split == "train" else "test point"
        if not _is_index(index, len(ids[split])):
            raise DataError(f"{where}: index {index!r} is not a {what} of run {run.id}")
        if (split, index) in first:
            raise DataError(
                f"{where}: index {index} was already decided by decision {first[split, index]}"
            )
        first[split, index] = n + 1
        if point_id is not None and point_id != ids[split][index]:
            raise DataError(
                f"{where}: id {point_id!r} is not {what} {index} ({ids[split][index]!r})"
            )
        if action not in ACTIONS:
            raise DataError(f"{where}: action must be one of {', '.join(ACTIONS)}, got {action!r}")
        label = None
        if action == "relabel":
            label = _check_label(str(item.get("label", "")).strip(), run, where)
        decided[split][ids[split][index]] = (action, label)
    return ReviewDecisions(decided["train"], decided["test"])


def _is_index(value: object, n: int) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n


def apply_decisions(
    engine: Engine, run_id: int, decisions_path: Path, out_dir: Path
) -> ApplyResult:
    """Write the cleaned training data of a run into ``out_dir`` in its own format.

    The data is re-read first and must be what the run read (its fingerprint), since the
    decisions name points by position. ``out_dir`` must be new or empty. With a
    ``--test-split`` run the held-out test points are written beside it, unchanged, so
    the next scan is evaluated on exactly the same test points; otherwise the rescan reads
    the run's own test data. Decisions on test points are applied to them (a run with its
    own test data then gets ``train`` and ``test`` folders in ``out_dir`` too). The run must be
    complete: the CLI checks it (:func:`auditor.cli.common.resolve_run`, which says how to
    finish it).
    """
    run = runs.get_run(engine, run_id)
    out_dir = Path(out_dir)
    _check_empty(out_dir)
    train_ids = [p["point_id"] for p in points.read_points(engine, run_id, "train")]
    test_ids = [p["point_id"] for p in points.read_points(engine, run_id, "test")]
    review = read_decisions(decisions_path, run, train_ids, test_ids)
    decisions = review.train
    config = ScanConfig.from_dict(run.config)
    data = _as_read(run, config.data)
    train, test = load_data(data)
    check_fingerprint(run, train, test)
    source = SourceInfo(**_sources(run)["train"])
    if data.test_split is None and not review.test:
        written = write_cleaned(source, decisions, out_dir)
        train_spec, test_spec = _spec(source, out_dir), _original_test(run)
    elif data.test_split is None:  # the test data changes too: both get a folder
        test_source = SourceInfo(**_sources(run)["test"])
        written = write_cleaned(source, decisions, out_dir / "train")
        written += write_cleaned(test_source, review.test, out_dir / "test")
        train_spec = _spec(source, out_dir / "train")
        test_spec = _spec(test_source, out_dir / "test")
    else:
        train_decisions: Decisions = {**{i: ("remove", None) for i in test.ids}, **decisions}
        # the test points are kept (but for the reviewer's decisions); the rest goes
        test_decisions: Decisions = {**{i: ("keep", None) for i in test.ids}, **review.test}
        written = write_cleaned(source, train_decisions, out_dir / "train")
        written += write_cleaned(source, test_decisions, out_dir / "test", unlisted="remove")
        train_spec, test_spec = _spec(source, out_dir / "train"), _spec(source, out_dir / "test")
    return ApplyResult(
        written, _counts(decisions), _counts(review.test), config, train_spec, test_spec
    )


def _counts(decisions: Decisions) -> dict[str, int]:
    """How many decisions of each action."""
    return {a: sum(1 for act, _ in decisions.values() if act == a) for a in ACTIONS}


def _as_read(run: StoredRun, data: DataArgs) -> DataArgs:
    """``data`` naming the files the run read by their resolved paths (``apply`` may run
    in another folder than the scan; a ``--download`` run read two idx files)."""
    train, test = (_sources(run)[part]["path"] for part in ("train", "test"))
    if train is None:  # toy-linear
        return data
    separate = data.test is not None or (data.download and data.test_split is None)
    return replace(data, train=train, test=test if separate else None, download=None)


def _check_empty(out_dir: Path) -> None:
    """Refuse an existing ``out_dir`` that holds anything (stale files would be read back
    with the cleaned data) or that is not a folder."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"{out_dir}: not an empty folder; give a new one for the cleaned data")


def _check_label(label: str, run: StoredRun, where: str) -> str:
    if run.task == "classification":
        class_names = run.class_names or []
        if label not in class_names:
            raise DataError(
                f"{where}: unknown class {label!r}; classes are {', '.join(class_names)}"
            )
        return label
    target_value(label, where)
    return label


def _spec(source: SourceInfo, out_dir: Path) -> str:
    """The data spec that reads back what ``write_cleaned`` wrote into ``out_dir``."""
    if source.path is None:  # toy-linear
        return str(out_dir / "toy-linear.csv")
    path = Path(source.path)
    return str(out_dir if path.is_dir() else out_dir / path.name)


def _original_test(run: StoredRun) -> str:
    """The rescan's ``--test``: the test data the run read, by its resolved path (so the
    command works from any folder, and for ``--download`` runs)."""
    test = _sources(run)["test"]
    return sources.TOY_LINEAR if test["format"] == "toy-linear" else test["path"]


def _sources(run: StoredRun) -> dict[str, Any]:
    """Where the run's ``train`` and ``test`` data came from (every run stores it)."""
    assert run.sources is not None, f"run {run.id} stored no sources"
    return run.sources
