"""Tables on standard output, laid out by rich.

The library returns rows; the commands print them here. On a terminal a table fits its
width and its header is bold; piped or redirected it is plain text, one line per row,
never wrapped or cut (a reader can ``split()`` it), without trailing blanks.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterable, Sequence

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from auditor.cli.terminal import isatty

PIPED_WIDTH = 10_000
"""Columns a piped table may take: wide enough that no row is ever wrapped or cut."""


def render_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    right: Collection[str] = (),
    terminal: bool = False,
) -> str:
    """``rows`` under ``headers`` as text: columns two spaces apart, those named in
    ``right`` (numbers) right-justified, the others left. Cells are printed as ``str(cell)``,
    literally (no rich markup); ``None`` is an empty cell. With ``terminal`` the text fits
    the terminal's width and carries its styles (ANSI codes)."""
    table = Table(box=None, pad_edge=False, header_style="bold", highlight=False)
    for header in headers:
        table.add_column(header, justify="right" if header in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(Text("" if cell is None else str(cell)) for cell in row))
    console = Console(
        force_terminal=terminal,
        width=None if terminal else PIPED_WIDTH,
        highlight=False,
        markup=False,
        emoji=False,
    )
    with console.capture() as captured:
        console.print(table)
    return "\n".join(line.rstrip() for line in captured.get().splitlines())


def echo_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], *, right: Collection[str] = ()
) -> None:
    """Print :func:`render_table` on standard output, styled for a terminal only."""
    click.echo(render_table(headers, rows, right=right, terminal=isatty(sys.stdout)))
