"""The command line: a thin Click shell over the library (one module per command group;
each imported when its command runs, :mod:`auditor.cli.group`)."""

from auditor.cli.group import cli, main

__all__ = ["cli", "main"]
