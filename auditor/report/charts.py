"""Geometry of the report's inline SVG charts; the markup is in ``templates/_scatter.html``
and ``templates/_histogram.html`` (autoescaped, so titles built from data are safe).

Everything here is plain numbers in SVG user units: a chart is ``width x height`` with
the plot area inside ``MARGIN``; data coordinates map linearly to pixels (the histogram's
counts on a ``log(1 + count)`` scale so a single flagged point stays visible next to
thousands of ordinary ones).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeGuard

MARGIN = {"left": 64, "right": 16, "top": 14, "bottom": 44}
#: ``(width, height)`` of each chart, in SVG user units.
SCATTER_SIZE, HISTOGRAM_SIZE, DETECTION_SIZE = (900, 360), (900, 240), (640, 320)
BINS = 40  # regular histogram bins (an overflow bin may follow)
TICKS = 6  # about this many ticks per numeric axis
LOW, HIGH = (83, 131, 176), (240, 138, 20)  # colour ramp: ordinary -> suspicious
FLAG_ORDER = ("none", "mislabel", "outlier")


@dataclass
class Axis:
    """Tick marks of one axis: ``ticks`` are ``(pixel position, label)``."""

    label: str
    ticks: list[tuple[float, str]]


@dataclass
class Mark:
    """One point of a scatter plot (data and pixel coordinates)."""

    index: int
    x: float
    y: float
    px: float
    py: float
    fill: str
    flagged: bool
    title: str


@dataclass
class Scatter:
    """A scatter plot of training points (and test points) with a fitted line or curve.

    ``line`` is an SVG ``points`` string (``"x1,y1 x2,y2 ..."``) or ``""``.
    """

    width: int
    height: int
    box: dict[str, float]  # left, top, right, bottom of the plot area
    x_axis: Axis
    y_axis: Axis
    marks: list[Mark]
    tests: list[Mark]
    line: str
    line_label: str
    colour_label: str
    note: str = ""  # e.g. which points a sample kept


@dataclass
class Bar:
    """One histogram bin ``[lo, hi)``; ``segments`` are ``(y, height, kind)`` stacked bottom
    up, ``kind`` in :data:`FLAG_ORDER`."""

    lo: float
    hi: float
    px: float
    width: float
    count: int
    counts: dict[str, int]
    segments: list[tuple[float, float, str]] = field(default_factory=list)
    overflow: bool = False


@dataclass
class Threshold:
    """A vertical line at a flag threshold; its label goes left of the line when the line
    stands near the right edge (``label_left``), so that it is not cut off."""

    kind: str
    value: float
    px: float
    label_left: bool = False


@dataclass
class Histogram:
    """Histogram of the influence z with the flag thresholds."""

    width: int
    height: int
    box: dict[str, float]
    x_axis: Axis
    y_axis: Axis
    bars: list[Bar]
    thresholds: list[Threshold]
    overflow_from: float | None


def nice_ticks(lo: float, hi: float) -> list[float]:
    """About :data:`TICKS` round values (steps of 1, 2, 2.5 or 5 times a power of ten) in
    ``[lo, hi]``."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / (TICKS - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = min((m * power for m in (1, 2, 2.5, 5, 10)), key=lambda st: abs(st - raw))
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 12) for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def fmt(value: float) -> str:
    """A tick or tooltip number: 4 significant digits, no trailing zeros."""
    return f"{value:.4g}"


def ramp(t: float) -> str:
    """Colour ``#rrggbb`` at ``t`` in ``[0, 1]`` along the ordinary -> suspicious ramp."""
    t = min(1.0, max(0.0, t))
    rgb = (round(a + (b - a) * t) for a, b in zip(LOW, HIGH, strict=True))
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _linear(d0: float, d1: float, p0: float, p1: float) -> Callable[[float], float]:
    if d1 == d0:
        d0, d1 = d0 - 1, d1 + 1
    return lambda v: round(p0 + (v - d0) * (p1 - p0) / (d1 - d0), 2)


def _padded(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 or 1.0
    return lo - pad, hi + pad


def _usable(threshold: float | None) -> TypeGuard[float]:
    """Whether a threshold can scale a chart: positive and finite (a run stored before they
    were checked may hold 0, NaN or infinity)."""
    return threshold is not None and math.isfinite(threshold) and threshold > 0


def _box(width: int, height: int) -> dict[str, float]:
    return {
        "left": MARGIN["left"],
        "top": MARGIN["top"],
        "right": width - MARGIN["right"],
        "bottom": height - MARGIN["bottom"],
    }


def scatter(
    x: Sequence[float],
    y: Sequence[float],
    colour: Sequence[float],
    flagged: Sequence[bool],
    titles: Sequence[str],
    *,
    x_label: str,
    y_label: str,
    colour_max: float | None,
    line: Callable[[float], float] | None = None,
    line_label: str = "",
    tests: Sequence[tuple[float, float, str]] = (),
    indexes: Sequence[int] | None = None,
    note: str = "",
) -> Scatter:
    """Scatter plot of training points coloured by ``colour`` (the suspicion, ramped over
    ``[0, colour_max]``; ``None`` or a threshold that cannot scale it: the largest
    positive colour), with ``line`` (the fitted model) drawn across.

    Args:
        x, y, colour, flagged, titles: One entry per training point, ``(n,)``.
        tests: ``(x, y, title)`` of test points, drawn as hollow squares.
        indexes: The training index of each point, ``(n,)`` (default ``0 .. n - 1``;
            a sample of the training points names its own).
        note: A line for the legend (what a sample left out).
    """
    if not _usable(colour_max):  # a run stored with --outlier-z 0, nan or inf
        colour_max = max((c for c in colour if math.isfinite(c) and c > 0), default=1.0)
    xs = list(x) + [t[0] for t in tests]
    ys = list(y) + [t[1] for t in tests]
    (x0, x1), (y0, y1) = _padded(xs), _padded(ys)
    width, height = SCATTER_SIZE
    box = _box(width, height)
    sx = _linear(x0, x1, box["left"], box["right"])
    sy = _linear(y0, y1, box["bottom"], box["top"])
    index = range(len(x)) if indexes is None else indexes
    marks = [
        Mark(i, xi, yi, sx(xi), sy(yi), ramp(ci / colour_max), bool(fi), ti)
        for i, xi, yi, ci, fi, ti in zip(index, x, y, colour, flagged, titles, strict=True)
    ]
    test_marks = [
        Mark(j, tx, ty, sx(tx), sy(ty), "none", False, tt) for j, (tx, ty, tt) in enumerate(tests)
    ]
    path = ""
    if line is not None:
        steps = [x0 + (x1 - x0) * k / 64 for k in range(65)]
        inside = [(xv, line(xv)) for xv in steps if y0 <= line(xv) <= y1]
        path = " ".join(f"{sx(xv)},{sy(yv)}" for xv, yv in inside)
    return Scatter(
        width,
        height,
        box,
        Axis(x_label, [(sx(t), fmt(t)) for t in nice_ticks(x0, x1)]),
        Axis(y_label, [(sy(t), fmt(t)) for t in nice_ticks(y0, y1)]),
        marks,
        test_marks,
        path,
        line_label,
        f"colour: suspicion (combined z), 0 to {fmt(colour_max)}",
        note,
    )


def histogram_range(z: Sequence[float], thresholds: Sequence[float]) -> tuple[float, float]:
    """``(lo, hi)`` of the regular bins: from ``min(z, 0)`` to twice the largest threshold
    (every point beyond a threshold is flagged, so the bulk lies left of it). A tail that
    reaches further than three times the threshold goes into one overflow bin instead of
    squeezing the bulk into a single bar."""
    top = max((t for t in thresholds if _usable(t)), default=1.0)
    lo, z_max = min(min(z), 0.0), max(z)
    if z_max <= 3 * top:
        return lo, max(z_max, 1.1 * top)
    return lo, 2 * top


#: The influence z's axis label, by the run's ``influence_scale``.
INFLUENCE_LABELS = {
    "log": "robust z of log |self-influence|",
    "sqrt": "robust z of the influence norm √|self-influence|",
}


def histogram(
    z: Sequence[float],
    kinds: Sequence[str],
    thresholds: dict[str, float],
    *,
    label: str = INFLUENCE_LABELS["log"],
) -> Histogram:
    """Histogram of ``z`` (the influence z, ``(n,)``; the x axis is ``label``), each bar stacked by
    the points' flag ``kinds`` (``"none"``, ``"mislabel"``, ``"outlier"``), with a line at
    each threshold (``{"mislabel": 3.0, "outlier": 6.0}``)."""
    lo, hi = histogram_range(z, list(thresholds.values()))
    bins, (width, height) = BINS, HISTOGRAM_SIZE
    step = (hi - lo) / bins
    overflow = max(z) > hi
    counts = [dict.fromkeys(FLAG_ORDER, 0) for _ in range(bins + overflow)]
    for value, kind in zip(z, kinds, strict=True):
        b = bins if value > hi else min(bins - 1, int((value - lo) / step))
        counts[b][kind if kind in FLAG_ORDER else "none"] += 1
    box = _box(width, height)
    slots = bins + (2 if overflow else 0)  # the overflow bar stands one slot apart
    slot = (box["right"] - box["left"]) / slots
    peak = max(sum(c.values()) for c in counts)
    sy = _linear(0, math.log1p(peak), box["bottom"], box["top"])
    bars = []
    for b, c in enumerate(counts):
        is_over = b == bins
        edge = lo + b * step
        bar = Bar(
            edge if not is_over else hi,
            edge + step if not is_over else max(z),
            round(box["left"] + (b + (1 if is_over else 0)) * slot + 1, 2),
            round(slot - 2, 2),
            sum(c.values()),
            c,
            overflow=is_over,
        )
        top_px = sy(math.log1p(bar.count))
        base, full = box["bottom"], box["bottom"] - top_px
        for kind in FLAG_ORDER:
            if c[kind]:
                h = round(full * c[kind] / bar.count, 2)
                bar.segments.append((round(base - h, 2), h, kind))
                base -= h
        bars.append(bar)
    sx = _linear(lo, hi, box["left"], box["left"] + bins * slot)
    ticks = [1, 10, 100, 1000, 10000, 100000]
    y_ticks = [(box["bottom"], "0")] + [(sy(math.log1p(t)), str(t)) for t in ticks if t <= peak]
    right_quarter = box["left"] + 0.75 * (box["right"] - box["left"])
    lines = [
        Threshold(k, v, sx(v), label_left=sx(v) > right_quarter)
        for k, v in sorted(thresholds.items(), key=lambda kv: kv[1])
        if math.isfinite(v)
    ]
    return Histogram(
        width,
        height,
        box,
        Axis(label, [(sx(t), fmt(t)) for t in nice_ticks(lo, hi)]),
        Axis("points (log scale)", y_ticks),
        bars,
        lines,
        hi if overflow else None,
    )


@dataclass
class Series:
    """One ranking's detection curve: ``points`` is an SVG ``points`` string."""

    name: str
    css: str  # a class name derived from ``name``
    points: str
    auroc: float | None
    found10: float | None


@dataclass
class DetectionChart:
    """Share of the injected faults found (y) after checking a share of the data (x), one
    line per ranking (Koh & Liang's Fig. 6)."""

    width: int
    height: int
    box: dict[str, float]
    x_axis: Axis
    y_axis: Axis
    series: list[Series]
    title: str
    #: Per ranking with flags of its own (the scan's, confident learning's label issues):
    #: ``"12 flagged, precision 0.92, recall 0.85"``.
    flags: dict[str, str] = field(default_factory=dict)


def _found_at(curve: list[list[float]], share: float) -> float | None:
    """The share found at ``share`` checked on a stored curve, if it has that point."""
    return next((y for x, y in curve if abs(x - share) < 1e-9), None)


def detection_chart(
    curves: dict[str, list[list[float]]],
    auroc: dict[str, float | None],
    title: str,
    n_faults: int,
) -> DetectionChart:
    """Lay out detection curves ``{ranking: [[share checked, share found], ...]}``; each
    series also carries its share found after checking 10%, read off its curve (stored at
    every 1% whatever ``--checked`` the evaluation used)."""
    width, height = DETECTION_SIZE
    box = _box(width, height)
    px = _linear(0.0, 1.0, box["left"], box["right"])
    py = _linear(0.0, 1.0, box["bottom"], box["top"])
    ticks = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    series = [
        Series(
            name,
            "r-" + "".join(c if c.isalnum() else "-" for c in name),
            " ".join(f"{px(x)},{py(y)}" for x, y in curve),
            auroc.get(name),
            _found_at(curve, 0.1) if n_faults else None,  # no faults: nothing to find
        )
        for name, curve in curves.items()
    ]
    return DetectionChart(
        width,
        height,
        box,
        Axis("share of the training data checked", [(px(t), f"{t:.0%}") for t in ticks]),
        Axis("share of the faults found", [(py(t), f"{t:.0%}") for t in ticks]),
        series,
        title,
    )
