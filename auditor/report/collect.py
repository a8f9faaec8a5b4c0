"""Read one run from the database into the report's view model (plain dataclasses).

Everything the report shows comes from here, and from the database alone: the run row,
the points (with their stored pixels or features) and the pair scores.

What a page holds is bounded whatever the run's size (docs/usage.md, "Reading a run"): at
most :data:`MAX_TOP` flagged rows, shown :data:`PAGE_SIZE` at a time, each with
:data:`HURTS` test points; at most :data:`MAX_TEST_PANELS` test panels of ``2 x``
:data:`NEIGHBOURS` training points; at most :data:`MAX_MARKS` points in the regression
scatter. The pixels of those points alone are read, and the pair scores are streamed one
block at a time (:func:`auditor.store.pairs.read_slices`), never held whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.engine import Engine

from auditor.cleaning.exports import flag_rule, label_name, run_summary, train_records
from auditor.config import FlagRule
from auditor.errors import ConfigError
from auditor.evaluation.metrics import RANKINGS
from auditor.ranking.rule import left_out_probability
from auditor.report import charts
from auditor.report.charts import INFLUENCE_LABELS
from auditor.report.thumbnails import png_data_uri
from auditor.store import evaluations, pairs, points, runs
from auditor.store.runs import StoredRun

if TYPE_CHECKING:
    from auditor.data import Task

HURTS = 3  # test points listed per flagged row
NEIGHBOURS = 6  # most harmful / most helpful training points per test panel
DEFAULT_TESTS = 3  # test panels when no --test-index is given: the highest test loss
DEFAULT_TOP = 200  # flagged rows shown when no --top is given
MAX_TOP = 1000  # most flagged rows a page holds (``auditor export`` lists them all)
PAGE_SIZE = 50  # flagged rows shown at once; the page's script pages through the rest
MAX_TEST_PANELS = 20  # most --test-index panels
MAX_MARKS = 2000  # most training points drawn in the regression scatter
BLOCK_BYTES = 8 << 20  # pair scores held at once while streaming them (8 MiB)


@dataclass
class Fact:
    """One line of a header card; ``tone`` is ``""``, ``"good"`` or ``"bad"``."""

    name: str
    value: str
    tone: str = ""


@dataclass
class Card:
    title: str
    facts: list[Fact]


@dataclass
class PointRef:
    """A point shown inside another point's panel, with its pair score there."""

    split: str  # train | test
    index: int
    id: str
    label: str | float | None
    predicted: str | float | None
    loss: float | None
    score: float | None = None
    flags: list[str] = field(default_factory=list)
    thumb: str | None = None  # PNG data URI
    features: list[float] | None = None


@dataclass
class FlaggedRow:
    """One flagged training point: its export record plus what the table shows."""

    record: dict  # exports.train_records entry (index, id, label, predicted, ...)
    point: PointRef  # the same point, carrying its thumbnail or features
    reason: str
    #: The exact z-scores the reason rounds or caps (its tooltip).
    reason_exact: str
    #: The model's prediction, shown as a hint beside the relabel control; the control
    #: itself starts empty (the reviewer chooses: a hasty one must not copy the model).
    predicted_label: str
    hurts: list[PointRef]


@dataclass
class TestPanel:
    point: PointRef
    harmful: list[PointRef]
    helpful: list[PointRef]


@dataclass
class ReportView:
    """Everything ``report.html`` renders."""

    run: dict  # exports.run_summary
    cards: list[Card]
    warnings: list[str]
    rows: list[FlaggedRow]
    n_flagged: int
    tests: list[TestPanel]
    tests_chosen: bool  # True when --test-index picked them
    histogram: charts.Histogram | None
    scatter: charts.Scatter | None
    has_images: bool
    page_size: int = PAGE_SIZE
    max_top: int = MAX_TOP
    script_data: dict = field(default_factory=dict)  # goes to JS through |tojson
    detection: charts.DetectionChart | None = None  # when an evaluation scanned this run


def collect(
    engine: Engine, run_id: int, top: int = DEFAULT_TOP, test_indexes: Sequence[int] = ()
) -> ReportView:
    """Build the view model of run ``run_id``.

    Args:
        top: Most flagged rows (and their thumbnails) shown, ``1 .. MAX_TOP``.
        test_indexes: Test points to open panels for (at most ``MAX_TEST_PANELS``);
            default the ``DEFAULT_TESTS`` with the highest test loss.

    Raises:
        ConfigError: A test index out of range, too many of them, or ``top`` outside
            ``1 .. MAX_TOP``.
        RunNotFound: No such run. The run must be complete: the CLI checks it
            (:func:`auditor.cli.common.resolve_run`, which says how to finish it).
    """
    if not 1 <= top <= MAX_TOP:
        raise ConfigError(
            f"--top must be between 1 and {MAX_TOP}; `auditor export` lists every flagged point"
        )
    if len(set(test_indexes)) > MAX_TEST_PANELS:
        raise ConfigError(
            f"--test-index was given {len(set(test_indexes))} times: a report shows at most "
            f"{MAX_TEST_PANELS} test panels (`auditor show --test-index` prints any other)"
        )
    run = runs.get_run(engine, run_id, with_theta=True)
    for i in test_indexes:
        if not 0 <= i < run.n_test:
            raise ConfigError(
                f"--test-index {i} is out of range: run {run_id} has {run.n_test} test points"
            )
    train = train_records(engine, run_id, run)
    test = points.read_points(engine, run_id, "test")
    rule = flag_rule(run)
    thresholds = _thresholds(rule, run.task)
    scale = rule.influence_scale

    flagged = sorted((r for r in train if r["flags"]), key=lambda r: r["rank"])
    shown = flagged[:top]
    chosen = list(dict.fromkeys(test_indexes))
    picks = chosen or [
        int(j)
        for j in np.argsort([-(p["loss"] or 0.0) for p in test], kind="stable")[:DEFAULT_TESTS]
    ]
    # One streamed pass over the pair scores: the rows of the picked test points and the
    # columns of the shown training points, BLOCK_BYTES of scores at a time (the whole
    # matrix may not fit in memory).
    block = max(1, min(256, BLOCK_BYTES // (pairs.DTYPE.itemsize * max(1, run.n_train))))
    shown_idx = [r["index"] for r in shown]
    test_rows, columns = pairs.read_slices(engine, run_id, picks, shown_idx, rows=block)
    rows = [
        FlaggedRow(
            r,
            _ref(run, "train", r),
            _reason(r, thresholds, run.n_train),
            _reason_exact(r),
            _predicted_label(r),
            _hurts(run, test, columns[:, k]),
        )
        for k, r in enumerate(shown)
    ]
    panels = [_panel(run, train, test, test_rows[j], j) for j in picks]

    _attach_pictures(engine, run, rows, panels)
    # Stored features only draw the regression scatter.
    tabular_regression = run.task == "regression" and not run.image_shape
    features = _all_features(engine, run_id, run) if tabular_regression else None
    view = ReportView(
        run=run_summary(run),
        cards=_cards(run, rule, len(flagged)),
        warnings=list(run.warnings or []),
        rows=rows,
        n_flagged=len(flagged),
        tests=panels,
        tests_chosen=bool(chosen),
        histogram=_histogram(train, thresholds, scale),
        scatter=_scatter(run, train, test, features, thresholds) if features else None,
        has_images=bool(run.image_shape),
        detection=_detection(engine, run_id),
    )
    view.script_data = {
        "run": run_id,
        "data_fingerprint": run.data_fingerprint,
        "task": run.task,
        "class_names": run.class_names or [],
        "ids": {str(r.record["index"]): r.record["id"] for r in rows},
        "test_ids": {str(p.point.index): p.point.id for p in view.tests},
    }
    return view


def _detection(engine: Engine, run_id: int) -> charts.DetectionChart | None:
    """The detection curves of the evaluation that scanned this run, if one did."""
    rows = evaluations.results_for_run(engine, run_id)
    if not rows:
        return None
    order = {name: i for i, name in enumerate(RANKINGS)}
    rows.sort(key=lambda r: order.get(r["ranking"], len(order)))
    chart = charts.detection_chart(
        {r["ranking"]: r["curve"] for r in rows},
        {r["ranking"]: r["auroc"] for r in rows},
        f"{rows[0]['n_faults']} injected faults among {rows[0]['n_train']} training points",
        rows[0]["n_faults"],
    )
    chart.flags = {r["ranking"]: _flags_text(r["flags"]) for r in rows if r.get("flags")}
    return chart


def _flags_text(flags: dict) -> str:
    """``"12 flagged, precision 0.92, recall 0.85"`` (``—`` for an undefined share)."""
    shares = []
    for name in ("precision", "recall"):
        value = flags.get(name)
        shares.append(f"{name} " + ("—" if value is None else f"{value:.2f}"))
    return ", ".join([f"{flags['count']} flagged", *shares])


def _thresholds(rule: FlagRule, task: Task) -> dict[str, float | None]:
    """The thresholds the run applied, by flag; ``outlier`` is ``None`` only for a rule
    never resolved (a run that stopped before its ranking, with ``--outlier-z auto``)."""
    out: dict[str, float | None] = {"outlier": rule.outlier_z}
    if task == "classification":
        out["mislabel"] = rule.mislabel_z
    return out


def _reason(record: dict, thresholds: dict[str, float | None], n_train: int) -> str:
    """Why a point was flagged, in words: the rule and the z-scores it compared, and for a
    mislabel how sure the rule is: the label's leave-one-out probability."""
    union = _first_known(record.get("union_z"), record["suspicion"])
    influence = _first_known(record.get("influence_z"), record["suspicion"])
    if "mislabel" in record["flags"]:
        test = record.get("strongest_test") or "strongest test"
        left_out = float(left_out_probability(record["loss"], record["self_influence"], n_train))
        return (
            f"predicted {record['predicted']} ≠ given {record['label']} and "
            f"{test} z {shown_z(union)} ≥ {thresholds['mislabel']:.3g}; refitted without "
            f"it, the model would give {record['label']} a probability of {left_out:.2f}"
        )
    return f"influence z {shown_z(influence)} ≥ {thresholds['outlier']:.3g}"


def _first_known(value: float | None, fallback: float) -> float:
    return fallback if value is None else value


#: Largest |z| a report prints as a number; beyond it the text says "above" and the cell's
#: tooltip holds the exact value (a z of 6,231 only says "far beyond any threshold").
Z_SHOWN = 100.0


def shown_z(value: float) -> str:
    """A z-score for reading: three digits, or ``above 100`` / ``below -100``."""
    if value >= Z_SHOWN:
        return f"above {Z_SHOWN:g}"
    if value <= -Z_SHOWN:
        return f"below -{Z_SHOWN:g}"
    return f"{value:.3g}"


def _reason_exact(record: dict) -> str:
    """The exact z-scores behind a row's reason, for its tooltip."""
    union = _first_known(record.get("union_z"), record["suspicion"])
    influence = _first_known(record.get("influence_z"), record["suspicion"])
    return f"strongest test z {union:.6g}; influence z {influence:.6g}"


def _predicted_label(record: dict) -> str:
    """The model's prediction of a training point (its given label when there is none)."""
    return str(record["predicted"] if record["predicted"] is not None else record["label"])


def _ref(run: StoredRun, split: str, p: dict, score: float | None = None) -> PointRef:
    """A :class:`PointRef` from a ``points`` row (test) or an export record (train)."""
    if "point_id" in p:  # a points row
        return PointRef(
            split,
            p["idx"],
            p["point_id"],
            label_name(run, p["label"]),
            label_name(run, p["predicted"]),
            p["loss"],
            score,
        )
    return PointRef(
        split, p["index"], p["id"], p["label"], p["predicted"], p["loss"], score, p["flags"]
    )


def _hurts(run: StoredRun, test: list[dict], column: np.ndarray) -> list[PointRef]:
    """The ``HURTS`` test points a training point harms most (positive scores only), from
    its column ``(n_test,)`` of pair scores."""
    order = np.argsort(-column, kind="stable")[:HURTS]
    return [_ref(run, "test", test[j], float(column[j])) for j in order if column[j] > 0]


def _panel(
    run: StoredRun, train: list[dict], test: list[dict], row: np.ndarray, j: int
) -> TestPanel:
    """Test point ``j`` with its most harmful and most helpful training points (``row`` is
    its ``(n_train,)`` pair scores). A harmful point has a positive score, a helpful one a
    negative score, so either list may be shorter than ``NEIGHBOURS``."""
    order = np.argsort(-row, kind="stable")
    harmful = [
        _ref(run, "train", train[i], float(row[i])) for i in order[:NEIGHBOURS] if row[i] > 0
    ]
    helpful = [
        _ref(run, "train", train[i], float(row[i])) for i in order[::-1][:NEIGHBOURS] if row[i] < 0
    ]
    return TestPanel(_ref(run, "test", test[j]), harmful, helpful)


def _attach_pictures(
    engine: Engine, run: StoredRun, rows: list[FlaggedRow], panels: list[TestPanel]
) -> None:
    """Fill ``thumb`` (image data) or ``features`` (tabular data) of every shown point,
    reading the blobs of those points only."""
    items: list[PointRef] = []
    for row in rows:
        items += [row.point, *row.hurts]
    for panel in panels:
        items += [panel.point, *panel.harmful, *panel.helpful]
    wanted: dict[str, set[int]] = {"train": set(), "test": set()}
    for item in items:
        wanted[item.split].add(item.index)
    blobs = {
        s: points.read_point_blobs(engine, run.id, s, sorted(ix)) for s, ix in wanted.items() if ix
    }
    shape = run.image_shape
    cache: dict[tuple[str, int], str] = {}
    for item in items:
        split, index = item.split, item.index
        image, feats = blobs[split][index]
        if image is not None and shape:
            if (split, index) not in cache:
                cache[split, index] = png_data_uri(image, shape)
            item.thumb = cache[split, index]
        elif feats is not None:
            item.features = np.frombuffer(feats, dtype="<f4").tolist()


def _all_features(engine: Engine, run_id: int, run: StoredRun) -> dict[str, np.ndarray] | None:
    """``{"train": (n_train, d), "test": (n_test, d)}`` stored features, or None."""
    out = {}
    for split in ("train", "test"):
        rows = points.read_points(engine, run_id, split, with_blobs=True)
        if not rows or any(r["features"] is None for r in rows):
            return None
        out[split] = np.stack([np.frombuffer(r["features"], dtype="<f4") for r in rows])
    return out


def _histogram(
    train: list[dict], thresholds: dict[str, float | None], scale: str
) -> charts.Histogram | None:
    """The influence z of every training point, with the outlier threshold (the one that
    applies to this quantity; mislabel flags come from the strongest of the tests)."""
    known = [r.get("influence_z") for r in train]
    z: list[float] = [v for v in known if v is not None]
    if not z or len(z) < len(known):  # no points, or one without its z
        return None
    outlier = thresholds["outlier"]
    assert outlier is not None, "a run that ranked its points resolved --outlier-z"
    kinds = [r["flags"][0] if r["flags"] else "none" for r in train]
    return charts.histogram(z, kinds, {"outlier": outlier}, label=INFLUENCE_LABELS[scale])


def _scatter(
    run: StoredRun,
    train: list[dict],
    test: list[dict],
    features: dict[str, np.ndarray],
    thresholds: dict[str, float | None],
) -> charts.Scatter:
    """Regression only (:func:`collect` reads ``features`` for regression alone). One
    feature: ``x`` against the target with the line fitted from ``theta``; more features:
    the target against the prediction with the diagonal. At most :data:`MAX_MARKS`
    training points are drawn (:func:`scatter_sample`)."""
    line: Callable[[float], float] | None = None  # charts.scatter's defaults: no line
    line_label = ""
    if features["train"].shape[1] == 1:
        x = features["train"][:, 0].tolist()
        y = [float(r["label"]) for r in train]
        tests = [(float(features["test"][p["idx"], 0]), float(p["label"])) for p in test]
        x_label, y_label = "x (the one feature)", "target"
        dtype = run.config["model"].get("dtype", "float32")
        theta = runs.theta_from_bytes(run.theta or b"", dtype)
        if run.model == "linear" and theta.numel() == 2:
            w, b = float(theta[0]), float(theta[1])
            line, line_label = _fitted_line(w, b), f"fitted y = {w:.4g}·x + {b:.4g}"
    else:
        x = [float(r["label"]) for r in train]
        y = [float(r["predicted"]) for r in train]
        tests = [(float(p["label"]), float(p["predicted"])) for p in test]
        x_label, y_label = "given target", "prediction"
        line, line_label = _identity, "prediction = target"
    keep = scatter_sample(train)
    drawn = [train[i] for i in keep]
    titles = [
        f"#{r['index']} {r['id']}: target {r['label']}, predicted {r['predicted']}, "
        f"z {charts.fmt(r['suspicion'] or 0.0)}" + "".join(f", {f}" for f in r["flags"])
        for r in drawn
    ]
    notes = []
    if len(keep) < len(train):
        notes.append(
            f"{len(keep):,} of {len(train):,} training points drawn: the most suspicious "
            "flagged ones and an even sample of the rest"
        )
    if len(test) > MAX_MARKS:
        notes.append(f"the first {MAX_MARKS:,} of {len(test):,} test points")
    return charts.scatter(
        [x[i] for i in keep],
        [y[i] for i in keep],
        [r["suspicion"] or 0.0 for r in drawn],
        [bool(r["flags"]) for r in drawn],
        titles,
        x_label=x_label,
        y_label=y_label,
        colour_max=thresholds["outlier"],
        line=line,
        line_label=line_label,
        tests=[
            (tx, ty, f"test #{p['idx']} {p['point_id']}")
            for (tx, ty), p in zip(tests, test, strict=True)
        ][:MAX_MARKS],
        indexes=keep,
        note="; ".join(notes),
    )


def scatter_sample(train: list[dict], limit: int = MAX_MARKS) -> list[int]:
    """The training indexes the scatter draws, in index order: all of them up to ``limit``;
    beyond, the ``limit // 2`` most suspicious flagged points and evenly spaced others up
    to ``limit``."""
    n = len(train)
    if n <= limit:
        return list(range(n))
    flagged = sorted((r for r in train if r["flags"]), key=lambda r: r["rank"] or 0)
    chosen = {r["index"] for r in flagged[: limit // 2]}
    rest = [i for i in range(n) if i not in chosen]
    step = len(rest) / (limit - len(chosen))
    chosen.update(rest[int(k * step)] for k in range(limit - len(chosen)))
    return sorted(chosen)


def _fitted_line(w: float, b: float) -> Callable[[float], float]:
    """``v -> w * v + b``."""
    return lambda v: w * v + b


def _identity(v: float) -> float:
    return v


def _model_file_facts(run: StoredRun) -> list[Fact]:
    """A ``--model-file`` run's model: the file (its factory, its SHA-256), whether it was
    used as trained or its last layer refitted, and what influence was taken over."""
    args = run.config["model"]
    path = args.get("model_file")
    if path is None:
        return []
    source = (run.sources or {}).get("model") or {}
    facts = [Fact("model file", str(source.get("path", path)))]
    if args.get("model_factory"):
        facts.append(Fact("model factory", args["model_factory"]))
    if source.get("sha256"):
        facts.append(Fact("file SHA-256", source["sha256"][:16]))
    refitted = args.get("fit") == "last"
    facts.append(Fact("fit", "last layer refitted" if refitted else "as trained"))
    over = "last linear layer" if args.get("params", "last") == "last" else "all parameters"
    facts.append(Fact("influence over", over))
    return facts


def _weight_decay_facts(weight_decay: float | None, choice: dict | None) -> list[Fact]:
    """The weight decay (``None``: a run that stopped before its load phase resolved
    ``auto``), and when ``--weight-decay auto`` validated it, the held-out accuracy of each
    weight decay it tried."""
    tried = (choice or {}).get("held_out_accuracy") or {}
    if weight_decay is None or not tried:
        return [Fact("weight decay", "auto" if weight_decay is None else f"{weight_decay:g}")]
    accuracies = ", ".join(f"{a:.1%} at {wd}" for wd, a in tried.items())
    return [
        Fact("weight decay", f"{weight_decay:g}, chosen by held-out accuracy"),
        Fact("held-out accuracy", accuracies),
    ]


def _cards(run: StoredRun, rule: FlagRule, n_flagged: int) -> list[Card]:
    """The header: data, model, solver, flag rule (as applied), time per phase."""
    m, s = run.metrics or {}, run.solver or {}
    ranking = run.ranking or {}
    cfg = run.config
    data = [Fact("dataset", run.dataset), Fact("task", run.task)]
    data += [
        Fact("training points", f"{run.n_train:,}"),
        Fact("test points", f"{run.n_test:,}"),
    ]
    if run.class_names:
        data.append(Fact("classes", ", ".join(run.class_names)))
    if run.image_shape:
        data.append(Fact("image shape", "×".join(str(v) for v in run.image_shape)))
    data.append(Fact("fingerprint", run.data_fingerprint[:12]))
    model = [Fact("model", run.model), *_model_file_facts(run)]
    model.append(Fact("influence parameters", f"{run.n_params or 0:,}"))
    model += [Fact(label, str(text)) for label, text in m.get("model_facts", {}).items()]
    model += _weight_decay_facts(cfg["model"]["weight_decay"], m.get("weight_decay_choice"))
    for split in ("train", "test"):
        if f"{split}_accuracy" in m:
            model.append(Fact(f"{split} accuracy", f"{m[split + '_accuracy']:.2%}"))
        if f"{split}_loss" in m:
            model.append(Fact(f"{split} loss", f"{m[split + '_loss']:.4g}"))
    if "grad_norm" in m:
        bad = m["grad_norm"] > 1e-3 or not m.get("fit_converged", True)
        model.append(Fact("final gradient norm", f"{m['grad_norm']:.2e}", "bad" if bad else "good"))
    solver = [Fact("solver", str(s.get("solver", cfg["solver"]["solver"])))]
    if "converged" in s:
        solver.append(
            Fact(
                "converged", "yes" if s["converged"] else "NO", "good" if s["converged"] else "bad"
            )
        )
    for key, name, form in [
        ("residual_max", "max relative residual", "{:.2e}"),
        ("tol", "tolerance", "{:.0e}"),
        ("iterations", "iterations", "{}"),
        ("scale", "scale", "{:.4g}"),
        ("lambda_max", "λ_max", "{:.4g}"),
    ]:
        if s.get(key) is not None:
            solver.append(Fact(name, form.format(s[key])))
    solver.append(Fact("damping", f"{cfg['solver']['damping']:g}"))
    flags = ranking.get("flag_counts", {})
    calibrated = run.config["rule"].get("outlier_z", 0) is None
    rule_facts = [
        Fact(
            "outlier",
            f"{INFLUENCE_LABELS[rule.influence_scale]} ≥ {rule.outlier_z:.3g}"
            + (f" (calibrated to {run.n_train:,} points)" if calibrated else ""),
        )
    ]
    if run.task == "classification":
        left_out = (
            "" if rule.mislabel_p is None else f", label's leave-one-out p ≤ {rule.mislabel_p:g}"
        )
        rule_facts.append(
            Fact("mislabel", f"z ≥ {rule.mislabel_z:g} and prediction ≠ label{left_out}")
        )
    rule_facts.append(Fact("trim", f"{rule.trim:g} ({ranking.get('refits', 0)} refits)"))
    rule_facts.append(
        Fact("flagged", f"{n_flagged:,}" + "".join(f" · {n} {k}" for k, n in sorted(flags.items())))
    )
    timings = run.timings or {}
    time_facts = [Fact(k, f"{v:.2f} s") for k, v in timings.items()]
    time_facts.append(Fact("total", f"{sum(timings.values()):.2f} s"))
    return [
        Card("Data", data),
        Card("Model", model),
        Card("Influence solver", solver),
        Card("Flag rule", rule_facts),
        Card("Time per phase", time_facts),
    ]
