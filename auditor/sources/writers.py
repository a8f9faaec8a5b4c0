"""Write a cleaned copy of a dataset, in its own format, for the cleaning loop.

:func:`write_cleaned` checks the decisions and the output folder, then hands over to the
writer of the source's format (:attr:`Format.write`, found in the registry
:data:`auditor.sources.FORMATS`). That writer re-reads the original files a
:class:`SourceInfo` names (every record, whatever ``classes`` filter the audit used), drops
the points marked ``remove``, gives the points marked ``relabel`` their new label, and
writes the result into the new folder, where :func:`auditor.sources.load` reads it again.
"""

from __future__ import annotations

from pathlib import Path

from auditor import sources
from auditor.data import SourceInfo
from auditor.errors import DataError
from auditor.sources.base import Decisions
from auditor.sources.tabular import target_value

__all__ = ["Decisions", "check_decisions", "target_value", "write_cleaned"]

ACTIONS = ("keep", "remove", "relabel")


def write_cleaned(
    source: SourceInfo, decisions: Decisions, out_dir: Path, *, unlisted: str = "keep"
) -> list[Path]:
    """Write the cleaned dataset into ``out_dir`` (created if needed).

    Args:
        source: Where the audited data came from (``Dataset.source``).
        decisions: Point id -> ``("keep", None)``, ``("remove", None)`` or
            ``("relabel", new class name)`` (for regression, the new target value).
            Points not listed are kept unchanged.
        out_dir: The output folder; must not be the folder the source lives in.
        unlisted: What happens to the points ``decisions`` does not list: ``"keep"`` them
            (unchanged) or ``"remove"`` them (to write a chosen part of the source).

    Returns:
        The files written.

    Raises:
        DataError: An unknown id, a malformed decision, a label the format cannot hold,
            an output folder that would overwrite the source, or unreadable source data.
    """
    check_decisions(decisions)
    fmt = sources.find_format(source.format)
    if fmt is None:
        known = ", ".join(f.name for f in sources.FORMATS)
        raise DataError(f"cannot write {source.format!r} data; known: {known}")
    if source.path is None and not fmt.builtin:
        raise DataError(f"the {source.format} source records no path to re-read")
    out_dir = Path(out_dir)
    _check_not_source(source, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return fmt.write(source, decisions, out_dir, unlisted)


def check_decisions(decisions: Decisions) -> None:
    """Raise :class:`DataError` unless every decision is a well-formed (action, label)."""
    for point_id, decision in decisions.items():
        try:
            action, new = decision
        except (TypeError, ValueError):
            raise DataError(
                f"decision for {point_id!r} must be (action, new label), got {decision!r}"
            ) from None
        if action not in ACTIONS:
            raise DataError(f"decision for {point_id!r}: unknown action {action!r}")
        if action == "relabel" and (not isinstance(new, str) or not new.strip()):
            raise DataError(f"decision for {point_id!r}: relabel needs a new label, got {new!r}")


def _check_not_source(source: SourceInfo, out_dir: Path) -> None:
    """Refuse an output folder that is, or lies inside, the folder of the source data."""
    if source.path is None:
        return
    src = Path(source.path).resolve()
    folder = src if src.is_dir() else src.parent
    out = out_dir.resolve()
    if out == folder or (src.is_dir() and folder in out.parents):
        raise DataError(f"{out_dir}: refusing to write the cleaned data over its source {src}")
