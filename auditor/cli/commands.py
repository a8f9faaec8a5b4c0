"""The commands that run the pipeline: ``auditor scan`` (and ``--resume``) and ``auditor
apply``; the group is :mod:`auditor.cli.group`, the commands that only read a run are in
:mod:`auditor.cli.reading`.

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

from auditor.cleaning import apply as cleaning
from auditor.cli.common import (
    db_option,
    dispose_on_close,
    handle_errors,
    open_existing,
    resolve_run,
    resume_command,
)
from auditor.cli.help import SectionedCommand
from auditor.cli.options import scan_argv, scan_config, scan_options
from auditor.cli.progress import PhaseProgress
from auditor.errors import AuditorError
from auditor.pipeline import distributed, job
from auditor.pipeline.interrupts import interruptible
from auditor.pipeline.scan import ScanResult
from auditor.pipeline.scan import resume as resume_scan
from auditor.pipeline.scan import scan as run_scan
from auditor.store import display_url


@click.command(cls=SectionedCommand)
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
    progress = PhaseProgress(quiet=job.rank() != 0)
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
    # from here a Ctrl-C says whether anything was written (opening the database and
    # joining the job come before the run exists; the scan says which run it left)
    with interruptible(None), distributed.process_group(config.device) as comm:
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
    if result.weight_decay_choice is not None and result.config is not None:
        solver = result.config.solver.solver
        click.echo(f"{result.weight_decay_choice.describe()}; solver {solver}", err=True)
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


@click.command()
@click.argument("run", type=int)
@click.argument("decisions", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@db_option
@handle_errors
def apply(run: int, decisions: str, out: str, db: str) -> None:
    """Apply a reviewer's decisions (keep / relabel / remove) to the run's training data.

    Writes the cleaned dataset into OUT in the input's own format (idx, CSV, NPZ, image
    folder) and prints the `auditor scan` command that audits it again. Decisions on test
    points (marked in the report's test panels) are applied to the test data, written
    under OUT/test; the rescan then reads it, so its test loss is not comparable with
    the run's.

    \b
    Example:
        auditor apply 1 decisions-run-1.json --out cleaned/
        auditor compare 1 2
    """
    engine = open_existing(db)
    resolve_run(engine, run, db)  # complete, or why not (a live writer, the resume command)
    result = cleaning.apply_decisions(engine, run, Path(decisions), Path(out))
    counts = ", ".join(f"{n} {a}" for a, n in result.counts.items())
    if any(result.test_counts.values()):
        test_counts = ", ".join(f"{n} {a}" for a, n in result.test_counts.items())
        counts += f" (training points); {test_counts} (test points)"
    click.echo(f"applied {counts}; wrote {len(result.written)} file(s) under {out}", err=True)
    click.echo("rescan with:", err=True)
    argv = scan_argv(result.config, result.train, result.test)
    click.echo(shlex.join([*argv, "--db", db]))
