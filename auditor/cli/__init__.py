"""The command line: a thin Click shell over the library (one module per command group)."""

from auditor.cli.commands import cli, main

__all__ = ["cli", "main"]
