"""Help in sections: ``--help`` and the docs list a command's options under the section
(Data, Model, Solver, Ranking, Run) their settings field declares (:mod:`auditor.config`),
then the command's other options."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import click

from auditor.config import SECTIONS

#: The heading of the options that belong to no section (``--resume``, ``--db``, ``--help``).
OTHER = "Other options"
#: The markers around the generated option tables in a markdown file (docs/usage.md).
BEGIN, END = "<!-- scan-options -->", "<!-- /scan-options -->"


class SectionOption(click.Option):
    """A :class:`click.Option` listed under ``section`` (one of
    :data:`~auditor.config.SECTIONS`) by :class:`SectionedCommand`."""

    def __init__(self, *args: Any, section: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section


def heading(section: str | None) -> str:
    """The title a section is listed under: ``solver`` -> ``Solver``."""
    return OTHER if section is None else section.capitalize()


def sectioned(params: list[click.Parameter]) -> Iterator[tuple[str, list[click.Option]]]:
    """``(heading, options)`` per section, in the order of :data:`SECTIONS`, then the
    options that have none; each keeps the command's order, and empty sections are left
    out."""
    groups: dict[str | None, list[click.Option]] = {}
    for param in params:
        if isinstance(param, click.Option):
            groups.setdefault(getattr(param, "section", None), []).append(param)
    for section in (*SECTIONS, None):
        if groups.get(section):
            yield heading(section), groups[section]


class SectionedCommand(click.Command):
    """A command whose ``--help`` lists its options in sections (see :func:`sectioned`)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections = [
            (title, [r for r in (p.get_help_record(ctx) for p in params) if r is not None])
            for title, params in sectioned(self.get_params(ctx))
        ]
        # one column for the help texts of every section, as Click's single list has
        width = min(max((len(term) for _, rows in sections for term, _ in rows), default=0), 30)
        for title, rows in sections:
            if rows:
                with formatter.section(title):
                    formatter.write_dl([(term.ljust(width), text) for term, text in rows])


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _row(*cells: str) -> str:
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def _default(param: click.Option, ctx: click.Context) -> str:
    """The default ``--help`` shows for ``param``, as markdown code; empty when it shows none."""
    if not param.show_default or param.is_flag:
        return ""
    if isinstance(param.show_default, str):
        return _cell(param.show_default)
    default = param.get_default(ctx, call=False)
    if default is None or callable(default):
        return ""
    return f"`{_cell(str(default))}`"


def command_markdown(command: click.Command, *, level: int = 3) -> str:
    """``command``'s options as markdown: one table per section (:func:`sectioned`), each
    under a heading of ``level``, with columns option, default and what it does. ``--help``
    is left out."""
    ctx = click.Context(command, info_name=command.name)
    help_option = command.get_help_option(ctx)
    blocks = []
    for title, params in sectioned(command.get_params(ctx)):
        rows = [
            _row(f"`{_cell(record[0])}`", _default(param, ctx), _cell(param.help or ""))
            for param in params
            if param is not help_option and (record := param.get_help_record(ctx)) is not None
        ]
        if rows:
            head = ["#" * level + f" {title}", _row("option", "default", "what it does")]
            blocks.append("\n".join([*head, _row("---", "---", "---"), *rows]))
    return "\n\n".join(blocks) + "\n"


def region(text: str) -> str:
    """The text between the :data:`BEGIN` and :data:`END` markers of ``text`` (without the
    newlines right inside them); ``ValueError`` if they are missing."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {BEGIN} and {END} are missing (in this order)")
    return text[start + len(BEGIN) : end].strip("\n") + "\n"


def splice(text: str, body: str) -> str:
    """``text`` with the region between the markers replaced by ``body`` (see :func:`region`)."""
    region(text)  # raises if the markers are missing
    start, end = text.find(BEGIN) + len(BEGIN), text.find(END)
    return f"{text[:start]}\n\n{body.strip(chr(10))}\n\n{text[end:]}"
