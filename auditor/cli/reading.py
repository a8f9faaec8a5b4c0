"""The commands that only read a run: ``runs``, ``show``, ``export`` and ``compare``.

They read stored rows through :mod:`auditor.store` and :mod:`auditor.cleaning` and import
nothing that loads torch (``tests/cli/test_lazy_imports.py``).
"""

from __future__ import annotations

import click

from auditor.cleaning import exports
from auditor.cleaning.compare import compare_runs
from auditor.cli.common import (
    db_option,
    handle_errors,
    is_database_file,
    open_existing,
    resolve_run,
    resume_command,
)
from auditor.cli.tables import echo_table
from auditor.store import runs

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


@click.command("runs")
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


@click.command()
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


@click.command()
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


@click.command()
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
    comparison = compare_runs(engine, run_a, run_b)
    table = [
        (label, f"{a:{spec}}", f"{b:{spec}}", f"{b - a:+{spec}}")
        for label, a, b, spec in comparison.rows
    ]
    headers = ("", f"run {run_a}", f"run {run_b}", "change")
    echo_table(headers, table, right=headers[1:])
    if not comparison.same_test_points:
        click.echo("note: the two runs were evaluated on different test points")
