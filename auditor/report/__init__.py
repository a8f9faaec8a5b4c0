"""``auditor report``: one self-contained HTML page that audits a run.

``collect`` reads the run from the database into a view model, ``thumbnails`` and
``charts`` turn pixels and numbers into PNG data URIs and SVG geometry, and ``render``
fills the Jinja templates; the Click command is :mod:`auditor.cli.report`.
"""
