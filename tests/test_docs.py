"""The documentation (README.md and docs/*.md) against the code: every command and option
is documented, every relative link resolves, and the scan options table matches the CLI."""

import os
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import click
import pytest

from auditor.cli import cli
from auditor.cli.group import all_commands

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`]*`")
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.M)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _docs_text() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in DOCS)


def _commands() -> list[tuple[str, click.Command]]:
    """``("auditor", group)`` and ``("auditor NAME", command)`` for every command."""
    return [("auditor", cli), *((f"auditor {name}", cmd) for name, cmd in all_commands().items())]


def _long_options(command: click.Command) -> list[str]:
    """Every ``--long`` flag of ``command`` (both halves of ``--x/--no-x``), not ``--help``."""
    flags = []
    for param in command.params:
        if isinstance(param, click.Option):
            flags += [o for o in param.opts + param.secondary_opts if o.startswith("--")]
    return [flag for flag in flags if flag != "--help"]


def _mentions(text: str, word: str) -> bool:
    """Whether ``word`` occurs as a whole token (``--top`` is not found in ``--top-k``)."""
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def test_docs_exist():
    assert (ROOT / "README.md").is_file()
    assert len(DOCS) > 1, "no docs/*.md pages"


@pytest.mark.parametrize(("label", "command"), _commands(), ids=[c[0] for c in _commands()])
def test_every_command_and_option_is_documented(label, command):
    text = _docs_text()
    missing = [] if _mentions(text, label) else [f"the command `{label}`"]
    missing += [f"`{label} {flag}`" for flag in _long_options(command) if not _mentions(text, flag)]
    assert not missing, (
        f"not documented in README.md or docs/*.md: {', '.join(missing)}; "
        "document each (for scan options: the table in docs/usage.md)"
    )


def _prose(markdown: str) -> str:
    """``markdown`` without fenced code blocks and code spans, where links are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", markdown))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: rendered text, lower case, punctuation dropped
    (letters, digits, marks, ``_``, ``-`` and spaces kept), spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = text.replace("`", "").replace("**", "").lower()
    kept = "".join(c for c in text if c in " -" or unicodedata.category(c)[0] in "LMN" or c == "_")
    return kept.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = _slug(heading)
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _relative_links(path: Path) -> list[str]:
    prose = _prose(path.read_text(encoding="utf-8"))
    targets = INLINE_LINK.findall(prose) + REFERENCE.findall(prose)
    return [t for t in targets if not SCHEME.match(t) and not t.startswith("//")]


@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_every_relative_link_resolves(doc):
    broken = []
    for target in _relative_links(doc):
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / unquote(file_part)).resolve() if file_part else doc
        if not linked.exists():
            broken.append(f"{target} (no such file: {os.path.relpath(linked, ROOT)})")
        elif anchor and linked.suffix == ".md" and unquote(anchor) not in _anchors(linked):
            broken.append(f"{target} (no heading with anchor #{anchor} in {linked.name})")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links: {'; '.join(broken)}"
