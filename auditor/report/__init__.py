"""``auditor report``: one self-contained HTML page that audits a run.

``collect`` reads the run from the database into a view model, ``thumbnails`` and
``charts`` turn pixels and numbers into PNG data URIs and SVG geometry, ``render`` fills
the Jinja templates, and ``command`` is the Click command.
"""

from auditor.report.collect import ReportView, collect
from auditor.report.render import render_report

__all__ = ["ReportView", "collect", "render_report"]
