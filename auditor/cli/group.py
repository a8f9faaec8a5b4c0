"""The ``auditor`` command group. Each command's module is imported when that command
runs, not before: ``auditor --version``, ``--help``, ``runs``, ``show``, ``export``,
``compare`` and ``report`` read stored rows and never load torch (seconds and about 800 MB
of a process that has to print a table)."""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple

import click

from auditor import __version__
from auditor.cli.terminal import isatty
from auditor.pipeline import job
from auditor.pipeline.interrupts import exit_after_interrupt


class LazyCommand(NamedTuple):
    """Where a command lives (``module:attribute``), its one-line help for ``auditor
    --help`` (tests check that it is the command's own), and whether its module loads
    torch (seconds: the command says it is starting first)."""

    target: str
    short_help: str
    loads_torch: bool = False


#: Every command, by name.
COMMANDS: dict[str, LazyCommand] = {
    "apply": LazyCommand(
        "auditor.cli.commands:apply",
        "Apply a reviewer's decisions (keep / relabel / remove) to the run's training data.",
        loads_torch=True,
    ),
    "compare": LazyCommand(
        "auditor.cli.reading:compare",
        "Compare two runs' test loss and accuracy (e.g. before and after cleaning).",
    ),
    "evaluate": LazyCommand(
        "auditor.cli.evaluate:evaluate",
        "Inject known faults, scan, and measure how well each ranking finds them.",
        loads_torch=True,
    ),
    "export": LazyCommand(
        "auditor.cli.reading:export",
        "Export one record per training point (rank, scores, flags) as JSON or CSV.",
    ),
    "report": LazyCommand(
        "auditor.cli.report:report",
        "Write a self-contained HTML audit of a run: flagged points, charts, decisions.",
    ),
    "runs": LazyCommand(
        "auditor.cli.reading:list_runs", "List the runs in a database, newest first."
    ),
    "scan": LazyCommand(
        "auditor.cli.commands:scan",
        "Fit a model, score every (train, test) pair by influence, rank and flag.",
        loads_torch=True,
    ),
    "show": LazyCommand(
        "auditor.cli.reading:show",
        "Show the most harmful and most helpful training points for a test point.",
    ),
}


class LazyGroup(click.Group):
    """A group whose commands (:data:`COMMANDS`) are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """Resolve (and import) the command. On a terminal, one that loads torch says it is
        starting while it does (seconds), so that something shows at once; the line is
        erased when the command takes over (its progress bars, or an error's one line).
        Not for ``--help``, nor on torchrun's ranks other than 0."""
        name = args[0] if args else None
        starting = (
            name in COMMANDS
            and COMMANDS[name].loads_torch
            and "--help" not in args[1:]
            and not ctx.resilient_parsing
            and job.rank() == 0
            and isatty(sys.stderr)
        )
        if starting:
            sys.stderr.write(f"auditor {name}: starting…")
            sys.stderr.flush()
        try:
            return super().resolve_command(ctx, args)
        finally:
            if starting:
                sys.stderr.write("\r\033[K")  # back to the line's start, erase it
                sys.stderr.flush()

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, _, attribute = COMMANDS[cmd_name].target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command), f"{module}:{attribute} is not a command"
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands' one-line help from :data:`COMMANDS`, without importing them."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = [(name, _shortened(COMMANDS[name].short_help, limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _shortened(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters as Click cuts a command's help in a listing."""
    return click.Command(None, help=text).get_short_help_str(limit)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="auditor")
def cli() -> None:
    """Find the training points most likely to be mislabelled or outliers.

    \b
    Example:
        auditor scan --train toy-linear
        auditor export --format csv
    """


def all_commands() -> dict[str, click.Command]:
    """Every command by name, imported (for the docs and the tests)."""
    ctx = click.Context(cli)
    found = {name: cli.get_command(ctx, name) for name in cli.list_commands(ctx)}
    return {name: command for name, command in found.items() if command is not None}


def main() -> None:
    """The ``auditor`` process: it exits once interrupted (see :mod:`auditor.pipeline.interrupts`)."""
    exit_after_interrupt()
    cli.main(prog_name="auditor")
