"""Render the report's view model with Jinja2 (autoescape on, undefined names are errors)."""

from __future__ import annotations

import functools
import math

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from auditor.report.collect import ReportView, shown_z
from auditor.resources import resource_dir

CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)


def num(value: float | int | None) -> str:
    """A number for a table cell: 4 significant digits, thousands separated, ``—`` for None."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, int) or value == 0:
        return f"{value:,}"
    size = abs(value)
    if size >= 1e7 or size < 1e-3:
        return f"{value:.3e}"
    if size >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def label(value: str | float | None) -> str:
    """A given or predicted label: a class name as is, a regression value via :func:`num`."""
    return value if isinstance(value, str) else num(value)


def sort_key(value: float | int | str | None) -> str:
    """The ``data-sort`` value of a cell: the raw number (or text) the table sorts by."""
    if value is None:
        return ""
    return repr(float(value)) if isinstance(value, int | float) else str(value)


@functools.cache
def environment() -> Environment:
    """The one Jinja environment of the report (templates from ``templates/``)."""
    env = Environment(
        loader=FileSystemLoader(resource_dir("templates")),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=num, label=label, sort_key=sort_key, zscore=shown_z)
    env.globals["csp"] = CSP
    return env


def render_report(view: ReportView) -> str:
    """The complete, self-contained HTML page of one run."""
    return environment().get_template("report.html").render(view=view)
