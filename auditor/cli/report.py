"""The ``auditor report`` command (registered on the ``auditor`` group in ``cli.py``)."""

from __future__ import annotations

from pathlib import Path

import click

from auditor.cli.common import db_option, handle_errors, open_existing, resolve_run
from auditor.cli.progress import PhaseProgress
from auditor.pipeline.phases import one_step
from auditor.report.collect import DEFAULT_TOP, MAX_TEST_PANELS, MAX_TOP, PAGE_SIZE, collect
from auditor.report.render import render_report


@click.command()
@click.argument("run", type=int, required=False)
@click.option(
    "--out",
    default="report.html",
    show_default=True,
    type=click.Path(dir_okay=False, writable=True),
    help="The HTML file to write.",
)
@click.option(
    "--top",
    type=click.IntRange(min=1, max=MAX_TOP),
    default=DEFAULT_TOP,
    show_default=True,
    help=f"Most flagged rows (with their thumbnails) the page holds, {PAGE_SIZE} per page "
    f"(at most {MAX_TOP}; `auditor export` lists them all).",
)
@click.option(
    "--test-index",
    "test_indexes",
    type=int,
    multiple=True,
    help="Show this test point's most harmful and helpful training points (repeatable, "
    f"at most {MAX_TEST_PANELS} times; default: the 3 test points with the highest loss).",
)
@db_option
@handle_errors
def report(run: int | None, out: str, top: int, test_indexes: tuple[int, ...], db: str) -> None:
    """Write a self-contained HTML audit of a run: flagged points, charts, decisions.

    RUN defaults to the latest run. The page needs no network: thumbnails, charts, CSS
    and JavaScript are all inline. Its size is bounded whatever the run's size: the
    flagged table holds at most --top rows, paged, and only the points shown are read.
    Mark flagged rows keep / relabel / remove and press
    "Download decisions" to save decisions-run-RUN.json for `auditor apply`.

    \b
    Examples:
        auditor report --out report.html
        auditor report 2 --top 500 --test-index 0 --test-index 17 --db audit.db
    """
    engine = open_existing(db)
    run_id = resolve_run(engine, run, db)
    with PhaseProgress() as progress:
        with one_step(progress, "read the run"):
            view = collect(engine, run_id, top=top, test_indexes=test_indexes)
        with one_step(progress, "render"):
            html = render_report(view)
            Path(out).write_text(html, encoding="utf-8")
    click.echo(f"wrote {out} (run {run_id}, {len(html) / 1e6:.1f} MB)", err=True)
