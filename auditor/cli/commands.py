"""The ``auditor`` command line: a thin shell over the library.

Usage errors exit 2 (``click.UsageError``), expected runtime failures exit 1
(``click.ClickException``); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from auditor import __version__
from auditor.cleaning import apply as cleaning
from auditor.cleaning import exports
from auditor.cli.common import (
    db_option,
    dispose_on_close,
    handle_errors,
    is_database_file,
    open_existing,
    resolve_run,
    resume_command,
)
from auditor.cli.evaluate import evaluate
from auditor.cli.help import SectionedCommand
from auditor.cli.options import scan_argv, scan_config, scan_options
from auditor.cli.progress import PhaseProgress
from auditor.cli.report import report
from auditor.cli.tables import echo_table
from auditor.errors import AuditorError
from auditor.pipeline import distributed
from auditor.pipeline.interrupts import exit_after_interrupt
from auditor.pipeline.scan import ScanResult
from auditor.pipeline.scan import resume as resume_scan
from auditor.pipeline.scan import scan as run_scan
from auditor.store import display_url, runs


@click.group()
@click.version_option(__version__, prog_name="auditor")
def cli() -> None:
    """Find the training points most likely to be mislabelled or outliers.

    \b
    Example:
        auditor scan --train toy-linear
        auditor export --format csv
    """


@cli.command(cls=SectionedCommand)
@scan_options()
@click.option(
    "--resume",
    "resume_run",
    type=int,
    metavar="RUN",
    help="Finish an incomplete (killed, interrupted or failed) run with its stored options; "
    "under torchrun its missing blocks are spread over the ranks.",
)
@db_option
@handle_errors
def scan(**opts: Any) -> None:
    """Fit a model, score every (train, test) pair by influence, rank and flag.

    Prints the id of the run it wrote to standard output. Under torchrun the test points
    are sharded over the ranks (gloo on CPUs, nccl with --device cuda). Ctrl-C stops it
    with exit status 130 and leaves the run incomplete; --resume RUN finishes it.

    \b
    Examples:
        auditor scan --train toy-linear
        auditor scan --train ../shared/data/mnist --classes 1,7 --test-split 0.2
        auditor scan --train train.csv --test test.csv --solver exact --db audit.db
        auditor scan --train data/ --test-split 0.2 --model-file net.pt2 --fit last
        torchrun --nproc-per-node 4 -m auditor scan --train data/ --db postgresql://host/db
        auditor scan --resume 3 --db audit.db
    """
    progress = PhaseProgress(quiet=distributed.rank() != 0)
    if opts["resume_run"] is not None:
        ctx = click.get_current_context()
        given = [
            f"--{name.replace('_', '-')}"
            for name in opts
            if name not in ("resume_run", "db")
            and ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT
        ]
        if given:
            raise click.UsageError(
                f"--resume takes the run's stored options; drop {', '.join(given)}"
            )
        engine = open_existing(opts["db"])
        _report_scan(
            opts, progress, lambda: resume_scan(engine, opts["resume_run"], progress=progress)
        )
        return
    config = scan_config(opts)
    with distributed.process_group(config.device) as comm:
        engine = dispose_on_close(distributed.open_in_order(comm, opts["db"]))
        _report_scan(opts, progress, lambda: run_scan(engine, config, progress=progress, comm=comm))


def _report_scan(
    opts: dict[str, Any], progress: PhaseProgress, run: Callable[[], ScanResult | None]
) -> None:
    """Run a scan (or resume) with its progress shown and print its summary and run id
    (on rank 0 of a torchrun job only)."""
    start = time.perf_counter()
    try:
        with progress:  # drawn while it runs, stopped however it ends
            result = run()
    except AuditorError as exc:  # one that left a run incomplete says how to finish it
        if exc.run_id is None:
            raise
        hint = f"finish it with `{resume_command(exc.run_id, opts['db'])}`"
        raise type(exc)(f"{exc}: {hint}", exc.run_id) from None
    if result is None:  # another rank than 0
        return
    for warning in result.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    flags = ", ".join(f"{n} {f}" for f, n in sorted(result.flag_counts.items())) or "none"
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    if result.ranks > 1 or result.resumed:
        phases += f"; {result.ranks} rank(s) scored {result.scored:,} test point(s)"
    click.echo(
        f"run {result.run_id}: {result.n_pairs:,} pair scores in {time.perf_counter() - start:.1f}s "
        f"({phases}); flagged: {flags}; database: {display_url(opts['db'])}",
        err=True,
    )
    click.echo(result.run_id)


RUNS_COLUMNS = (
    "id",
    "status",
    "created",
    "dataset",
    "model",
    "solver",
    "train",
    "test",
    "pairs",
    "flagged",
)


@cli.command("runs")
@db_option
@handle_errors
def list_runs(db: str) -> None:
    """List the runs in a database, newest first.

    A run whose scan was killed outright (SIGKILL, power loss) is still marked running;
    on the host that ran it, it is listed as ``stale``, with the command that finishes it.

    \b
    Example:
        auditor runs --db audit.db
    """
    engine = open_existing(db)
    rows = runs.list_runs(engine)
    if not rows:
        click.echo("no runs yet")
        return
    stale, table = [], []
    for r in rows:
        flags = (r.ranking or {}).get("flag_counts", {})
        solver = (r.config.get("solver") or {}).get("solver", "")
        status: str = r.status
        if runs.writer_state(r) == "gone":
            status = "stale"
            stale.append(r)
        created = f"{r.created_at:%Y-%m-%d %H:%M:%S}"
        table.append(
            (
                r.id,
                status,
                created,
                r.dataset,
                r.model,
                solver,
                r.n_train,
                r.n_test,
                f"{int(r.n_pairs or 0):,}",  # list_runs counts them
                sum(flags.values()),
            )
        )
    echo_table(RUNS_COLUMNS, table, right=("id", "train", "test", "pairs", "flagged"))
    for r in stale:
        click.echo(
            f"run {r.id}: its scan (process {r.owner_pid}) ended without marking it, "
            f"in phase {r.phase}; finish it with `{resume_command(r.id, db)}`"
        )


@cli.command()
@click.argument("run", type=int, required=False)
@click.option(
    "--test-index", type=int, help="Training points that most harm / help this test point."
)
@click.option("--train-index", type=int, help="Test points this training point hurts most.")
@click.option("--top", type=int, default=10, show_default=True, help="Rows per table.")
@db_option
@handle_errors
def show(
    run: int | None, test_index: int | None, train_index: int | None, top: int, db: str
) -> None:
    """Show the most harmful and most helpful training points for a test point.

    RUN defaults to the latest run.

    \b
    Examples:
        auditor show 1 --test-index 0
        auditor show --train-index 15 --top 5
    """
    if (test_index is None) == (train_index is None):
        raise click.UsageError("give exactly one of --test-index or --train-index")
    if top < 1:
        raise click.UsageError("--top must be >= 1")
    engine = open_existing(db)
    run_id = resolve_run(engine, run, db)
    if test_index is not None:
        view = exports.influence_on_test(engine, run_id, test_index, top)
    else:
        assert train_index is not None, "exactly one index was given (checked above)"
        view = exports.influence_of_train(engine, run_id, train_index, top)
    click.echo(view.summary)
    for caption, rows in view.tables:
        click.echo(f"\n{caption}")
        table = [(i, f"{score:.5g}", label, point_id) for i, score, label, point_id in rows]
        echo_table(("index", "score", "label", "id"), table, right=("index", "score", "label"))


@cli.command()
@click.argument("run", type=int, required=False)
@click.option(
    "--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True
)
@click.option(
    "--out", type=click.Path(dir_okay=False, writable=True), help="File (default: stdout)."
)
@db_option
@handle_errors
def export(run: int | None, fmt: str, out: str | None, db: str) -> None:
    """Export one record per training point (rank, scores, flags) as JSON or CSV.

    RUN defaults to the latest run. JSON is {"run": {...}, "train": [...]}.

    \b
    Examples:
        auditor export --format csv --out ranking.csv
        auditor export 3 --format json | jq '.train[:5]'
    """
    if out and is_database_file(out, db):
        raise click.UsageError(f"--out {out} is the database itself; choose another file")
    engine = open_existing(db)
    run_id = resolve_run(engine, run, db)
    text = (
        exports.export_json(engine, run_id) if fmt == "json" else exports.export_csv(engine, run_id)
    )
    if out:
        with open(out, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text, nl=False)


@cli.command()
@click.argument("run", type=int)
@click.argument("decisions", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@db_option
@handle_errors
def apply(run: int, decisions: str, out: str, db: str) -> None:
    """Apply a reviewer's decisions (keep / relabel / remove) to the run's training data.

    Writes the cleaned dataset into OUT in the input's own format (idx, CSV, NPZ, image
    folder) and prints the `auditor scan` command that audits it again.

    \b
    Example:
        auditor apply 1 decisions-run-1.json --out cleaned/
        auditor compare 1 2
    """
    engine = open_existing(db)
    resolve_run(engine, run, db)  # complete, or why not (a live writer, the resume command)
    result = cleaning.apply_decisions(engine, run, Path(decisions), Path(out))
    counts = ", ".join(f"{n} {a}" for a, n in result.counts.items())
    click.echo(f"applied {counts}; wrote {len(result.written)} file(s) under {out}", err=True)
    click.echo("rescan with:", err=True)
    argv = scan_argv(result.config, result.train, result.test)
    click.echo(shlex.join([*argv, "--db", db]))


@cli.command()
@click.argument("run_a", type=int)
@click.argument("run_b", type=int)
@db_option
@handle_errors
def compare(run_a: int, run_b: int, db: str) -> None:
    """Compare two runs' test loss and accuracy (e.g. before and after cleaning).

    \b
    Example:
        auditor compare 1 2 --db audit.db
    """
    engine = open_existing(db)
    for run in (run_a, run_b):
        resolve_run(engine, run, db)
    comparison = cleaning.compare_runs(engine, run_a, run_b)
    table = [
        (label, f"{a:{spec}}", f"{b:{spec}}", f"{b - a:+{spec}}")
        for label, a, b, spec in comparison.rows
    ]
    headers = ("", f"run {run_a}", f"run {run_b}", "change")
    echo_table(headers, table, right=headers[1:])
    if not comparison.same_test_points:
        click.echo("note: the two runs were evaluated on different test points")


cli.add_command(report)
cli.add_command(evaluate)


def main() -> None:
    """The ``auditor`` process: it exits once interrupted (see :mod:`auditor.pipeline.interrupts`)."""
    exit_after_interrupt()
    cli(prog_name="auditor")


if __name__ == "__main__":
    main()
