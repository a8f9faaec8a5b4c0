"""The ``auditor evaluate`` command (registered on the ``auditor`` group in ``cli.py``)."""

from __future__ import annotations

import json
import math
from typing import Any

import click

from auditor.cli.common import db_option, dispose_on_close, handle_errors
from auditor.cli.help import SectionedCommand
from auditor.cli.options import scan_config, scan_options
from auditor.cli.progress import PhaseProgress
from auditor.cli.tables import echo_table
from auditor.evaluation.evaluate import EvalArgs, Evaluation, evaluation_dict, summary_rows
from auditor.evaluation.evaluate import evaluate as run_evaluate
from auditor.evaluation.faults import FaultSpec
from auditor.store import open_db
from auditor.store.evaluations import json_safe


def _ints(_ctx: click.Context, _param: click.Parameter, value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


def _fractions(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated fractions, got {value!r}") from None


@click.command(cls=SectionedCommand)
@scan_options(without=("--seed",))
@click.option(
    "--faults",
    default="flip",
    show_default=True,
    metavar="KIND",
    help="flip, class-flip:SOURCE>TARGET[,SOURCE>TARGET...] (e.g. class-flip:7>1 or "
    "class-flip:1>7,7>1), class-flip:cycle (every class to the next, the last to the "
    "first), confusion (to the class a held-out model most confuses, on ambiguous "
    "points), outlier or none.",
)
@click.option(
    "--rate",
    type=float,
    default=0.1,
    show_default=True,
    help="Share of the training points faulted (of each SOURCE class for class-flip).",
)
@click.option(
    "--seeds",
    callback=_ints,
    default="0",
    show_default=True,
    help="One scan per seed (split, faults, fit): e.g. 0,1,2.",
)
@click.option(
    "--checked",
    callback=_fractions,
    default="0.05,0.1,0.2",
    show_default=True,
    help="Shares of the data checked, for 'found' and the fix experiment's k.",
)
@click.option("--fix/--no-fix", default=True, show_default=True, help="Run the fix experiment.")
@click.option(
    "--baseline/--no-baseline",
    default=True,
    show_default=True,
    help="Measure the confident-learning ranking (5 cross-validated fits per seed).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead.")
@db_option
@handle_errors
def evaluate(**opts: Any) -> None:
    """Inject known faults, scan, and measure how well each ranking finds them.

    Rankings: training loss, self-influence, harmfulness, combined (the product's
    ranking), confident learning (the baseline, on out-of-fold probabilities of the same
    model; class labels only) and random. Metrics per seed: AUROC, average precision,
    share of the faults found after checking 5/10/20% of the data, the precision and
    recall of the scan's flags and of confident learning's label issues, paired tests of
    the combined ranking against each other one (two seeds or more), and the fix
    experiment (restore the faults among the top k, retrain, test loss and accuracy
    against k random points). Prints mean ± standard deviation over seeds and stores
    every row in the database; `auditor report RUN` then shows the detection curve of
    that run.

    \b
    Examples:
        auditor evaluate --train ../shared/data/mnist --classes 1,7 --test-split 0.2 \\
            --solver exact --faults flip --rate 0.1 --seeds 0,1,2
        auditor evaluate --train ../shared/data/mnist --classes 1,7 --test-split 0.2 \\
            --solver exact --faults 'class-flip:7>1' --rate 0.2
        auditor evaluate --train ../shared/data/mnist --test-split 0.2 --model cnn \\
            --params last --solver exact --faults class-flip:cycle --rate 0.1
        auditor evaluate --train ../shared/data/mnist --classes 1,7 --test-split 0.2 \\
            --faults confusion --rate 0.1 --seeds 0,1,2 --no-fix
        auditor evaluate --train toy-linear --solver exact --faults outlier --rate 0.1
    """
    config = scan_config(opts)
    if opts["faults"] == "none" and opts["fix"]:
        opts["fix"] = False  # nothing to fix
    args = EvalArgs(  # a ConfigError here is a usage error (handle_errors)
        faults=FaultSpec.parse(opts["faults"], opts["rate"]),
        seeds=opts["seeds"],
        fractions=opts["checked"],
        fix=opts["fix"],
        baseline=opts["baseline"],
    )
    engine = dispose_on_close(open_db(opts["db"]))
    with PhaseProgress() as progress:
        evaluation = run_evaluate(engine, config, args, progress=progress)
    for seed, run_id in dict.fromkeys((r["seed"], r["run_id"]) for r in evaluation.results):
        for warning in evaluation.warnings[run_id]:  # as scan prints them
            click.secho(f"warning: seed {seed} (run {run_id}): {warning}", fg="yellow", err=True)
    if opts["as_json"]:
        click.echo(json.dumps(json_safe(evaluation_dict(evaluation)), indent=2, allow_nan=False))
    else:
        _echo_summary(evaluation)
        click.echo(_runs_line(evaluation))


def _runs_line(evaluation: Evaluation) -> str:
    """``runs scanned: 3 (seed 0), 4 (seed 1); ...``: each seed's run, for ``report``."""
    scanned = dict.fromkeys((r["run_id"], r["seed"]) for r in evaluation.results)
    listed = ", ".join(f"{run_id} (seed {seed})" for run_id, seed in scanned)
    return f"runs scanned: {listed}; `auditor report RUN` shows one with its detection curve"


def _echo_summary(evaluation: Evaluation) -> None:
    """The summary as tables: detection per ranking, then the fix experiment's; cells are
    ``mean ± spread`` over the seeds."""
    summary = summary_rows(evaluation)
    click.echo(summary.heading)
    rows = [(name, *map(_pm, cells)) for name, cells in summary.detection]
    echo_table(["ranking", *summary.columns], rows, right=summary.columns)
    if summary.flags:
        click.echo("\nflagged points against the faults")
        flag_columns = ("flagged", "count", "precision", "recall")
        rows = [
            (name, _pm(count, 1), _pm(precision), _pm(recall))
            for name, (count, precision, recall) in summary.flags
        ]
        echo_table(flag_columns, rows, right=flag_columns[1:])
    if summary.paired:
        share = summary.paired[0].fraction
        click.echo(
            f"\ncombined against each ranking, paired over the seeds (share found after "
            f"checking {share:.0%}; one-sided p that combined finds fewer)"
        )
        paired_columns = ("ranking", "combined - it", "sign p", "Wilcoxon p", "verdict")
        rows = [
            (
                c.other,
                f"{c.mean_difference:+.4f}",
                f"{c.sign_p:.3g}",
                f"{c.wilcoxon_p:.3g}",
                "worse" if c.worse else "not worse",
            )
            for c in summary.paired
        ]
        echo_table(paired_columns, rows, right=paired_columns[1:4])
    if not summary.fix:
        return
    click.echo("\nfix experiment: faults among the top k restored, model retrained")
    rows = [(f"{f:.0%}", name, _pm(acc), _pm(loss)) for f, name, acc, loss in summary.fix]
    fix_columns = ("checked", "ranking", "test accuracy", "test loss")
    echo_table(fix_columns, rows, right=fix_columns[2:])
    b = summary.baseline
    assert b is not None, "the fix experiment ran: its first row is the baseline"
    click.echo(
        f"(first seed: faulty model {_num(b['faulty_test_accuracy'])} accuracy, "
        f"{b['faulty_test_loss']:.4f} loss; clean {_num(b['clean_test_accuracy'])}, "
        f"{b['clean_test_loss']:.4f})"
    )


def _pm(pair: list[float], digits: int = 4) -> str:
    mean, spread = pair
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
