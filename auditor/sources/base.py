"""The :class:`Format` seam: everything one data format brings, in one object.

A format is a detector (is this path mine?), a reader (path -> :class:`Dataset`) and a
writer (the cleaned copy ``auditor apply`` writes). :data:`auditor.sources.FORMATS` lists
them in detection order; adding a format is one module defining a :class:`Format` and one
line in that list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from auditor.data import Dataset, SourceInfo
from auditor.errors import DataError

#: Point id -> ``(action, new label or None)``, action ``keep``, ``remove`` or ``relabel``.
Decisions = dict[str, tuple[str, str | None]]


@dataclass(frozen=True)
class ReadOptions:
    """The loader options a reader may use, already validated by :func:`auditor.sources.load`.

    Attributes:
        role: ``"train"`` or ``"test"``: which part of a data set holding both to read.
        normalize: Pixel feature scaling, ``"unit"`` or ``"none"``.
        resize: ``(H, W)`` to resize images to; only given to a ``resizable`` format.
        seed: Seed of generated data.
    """

    role: str
    normalize: str
    resize: tuple[int, int] | None
    seed: int


#: ``read(path, options)``: the path is ``None`` for a built-in data set.
Reader = Callable[[Path | None, ReadOptions], Dataset]
#: ``write(source, decisions, out_dir, unlisted)``: the files written into ``out_dir``.
Writer = Callable[[SourceInfo, Decisions, Path, str], list[Path]]


@dataclass(frozen=True)
class Format:
    """One data format: how to recognise it, read it and write a cleaned copy of it.

    Attributes:
        name: The :attr:`SourceInfo.format` its reader records; writers are found by it.
        detect: Whether an existing, readable path is of this format. Formats are asked in
            registry order and the first that says yes reads the path, so ``detect`` may
            assume that the formats before it said no. It may raise :class:`OSError`.
            ``None`` for a built-in data set: the spec equal to ``name`` selects it, no
            file is looked at, and its reader gets no path.
        read: The dataset at a path, every class of it (the caller picks ``classes``).
        write: The cleaned copy of the data a :class:`SourceInfo` of this format names:
            its records minus the removed ones, relabelled ones changed (see
            :func:`auditor.sources.writers.write_cleaned`, which checks the decisions and
            the output folder first).
        describes: What it reads, for the "unknown data format" message ("a .csv file");
            empty for a built-in data set.
        resizable: Whether its reader takes ``resize``; other formats refuse the option.
    """

    name: str
    detect: Callable[[Path], bool] | None
    read: Reader
    write: Writer
    describes: str = ""
    resizable: bool = False

    @property
    def builtin(self) -> bool:
        """Whether this is a built-in data set, named by a spec rather than a path."""
        return self.detect is None


def plan(
    ids: list[str], decisions: Decisions, where: str, unlisted: str
) -> tuple[list[int], dict[int, str]]:
    """What a writer keeps: the record indexes to keep, in order, and the new label of each
    relabelled one.

    Args:
        ids: The id of every record of the source, in record order.
        decisions: Well-formed decisions (checked by ``write_cleaned``).
        where: The source, named in the message about unknown ids.
        unlisted: The action of the ids that ``decisions`` does not list.

    Raises:
        DataError: A decision names an id that is not in the source.
    """
    known = set(ids)
    unknown = [point_id for point_id in decisions if point_id not in known]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise DataError(f"{where}: {len(unknown)} decision id(s) not in the data: {shown}")
    keep: list[int] = []
    relabel: dict[int, str] = {}
    for i, point_id in enumerate(ids):
        action, new = decisions.get(point_id, (unlisted, None))
        if action != "remove":
            keep.append(i)
        if action == "relabel":
            assert new is not None  # check_decisions: a relabel carries a new label
            relabel[i] = new.strip()
    return keep, relabel
