"""The format registry is the one place a format is added: a format registered in a test is
detected, read and written through the public functions, and named in their messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from auditor import sources
from auditor.data import Dataset, SourceInfo
from auditor.errors import ConfigError, DataError
from auditor.sources import Format, ReadOptions, detect_format, load
from auditor.sources.base import Decisions, plan
from auditor.sources.writers import write_cleaned

# --- a tiny format: ".pts" files, one "x label" line per point ---------------------------


def read_pts(path: Path, options: ReadOptions) -> Dataset:
    rows = [line.split() for line in path.read_text().splitlines()]
    names = sorted({label for _, label in rows})
    return Dataset(
        torch.tensor([[float(x)] for x, _ in rows]),
        torch.tensor([names.index(label) for _, label in rows]),
        [f"{path.name}#{i}" for i in range(len(rows))],
        "classification",
        class_names=names,
        source=SourceInfo("pts", str(path.resolve()), {"normalize": options.normalize}),
        name=path.name,
    )


def write_pts(source: SourceInfo, decisions: Decisions, out_dir: Path, unlisted: str) -> list[Path]:
    path = Path(source.path)
    rows = [line.split() for line in path.read_text().splitlines()]
    keep, relabel = plan(
        [f"{path.name}#{i}" for i in range(len(rows))], decisions, str(path), unlisted
    )
    out = out_dir / path.name
    out.write_text("".join(f"{rows[i][0]} {relabel.get(i, rows[i][1])}\n" for i in keep))
    return [out]


PTS = Format(
    "pts", lambda path: path.suffix == ".pts", read_pts, write_pts, describes="a .pts file"
)


def read_demo(path: None, options: ReadOptions) -> Dataset:
    """A built-in data set: two points, the second one's label depending on the seed."""
    return Dataset(
        torch.tensor([[0.0], [1.0]]),
        torch.tensor([0.0, float(options.seed)]),
        ["a", "b"],
        "regression",
        source=SourceInfo("demo", None, {"seed": options.seed}),
        name="demo",
    )


def write_demo(
    source: SourceInfo, decisions: Decisions, out_dir: Path, unlisted: str
) -> list[Path]:
    keep, _ = plan(["a", "b"], decisions, "demo", unlisted)
    out = out_dir / "demo.csv"
    out.write_text("x,target\n" + "".join(f"{i},0\n" for i in keep))
    return [out]


DEMO = Format("demo", None, read_demo, write_demo)


@pytest.fixture
def registered(monkeypatch):
    """The shipped formats plus the test's: one registry line."""
    monkeypatch.setattr(sources, "FORMATS", (*sources.FORMATS, PTS, DEMO))


@pytest.fixture
def pts_file(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "points.pts"
    path.parent.mkdir()
    path.write_text("1 cat\n2 dog\n3 cat\n4 dog\n")
    return path


# --- tests -------------------------------------------------------------------------------


def test_a_registered_format_is_detected_read_and_written(registered, pts_file, tmp_path):
    assert detect_format(pts_file) is PTS
    data = load(str(pts_file), classes=["dog", "cat"])
    assert data.source.format == "pts"
    assert data.class_names == ["dog", "cat"]
    assert data.source.options == {"normalize": "unit", "classes": ["dog", "cat"]}
    decisions = {"points.pts#0": ("remove", None), "points.pts#3": ("relabel", "cat")}
    (out,) = write_cleaned(data.source, decisions, tmp_path / "out")
    assert out.read_text() == "2 dog\n3 cat\n4 cat\n"
    again = load(str(out))
    assert again.features[:, 0].tolist() == [2.0, 3.0, 4.0]
    assert [again.class_names[t] for t in again.targets.tolist()] == ["dog", "cat", "cat"]
    # The shared checks of write_cleaned run before the format's writer.
    with pytest.raises(DataError, match="not in the data: 'points.pts#9'"):
        write_cleaned(data.source, {"points.pts#9": ("remove", None)}, tmp_path / "o2")
    with pytest.raises(DataError, match="refusing"):
        write_cleaned(data.source, {}, pts_file.parent)


def test_a_registered_format_is_named_in_the_messages(registered, pts_file, tmp_path):
    unknown = tmp_path / "points.txt"
    unknown.write_text("1 cat\n")
    with pytest.raises(DataError, match=r"unknown data format; expected .* or a \.pts file$"):
        load(str(unknown))
    with pytest.raises(ConfigError, match=r"not to pts data"):
        load(str(pts_file), resize=(2, 2))
    with pytest.raises(DataError, match=r"cannot write 'nope' data; known: .*, pts, demo$"):
        write_cleaned(SourceInfo("nope", str(pts_file)), {}, tmp_path / "out")


def test_without_its_registry_line_the_format_is_unknown(pts_file, tmp_path):
    with pytest.raises(DataError, match="unknown data format") as info:
        load(str(pts_file))
    assert ".pts" not in str(info.value).split("expected")[1]
    source = SourceInfo("pts", str(pts_file))
    with pytest.raises(DataError, match="cannot write 'pts' data"):
        write_cleaned(source, {}, tmp_path / "out")


def test_a_registered_builtin_data_set_is_named_by_its_spec(registered, tmp_path):
    data = load("demo", role="test", seed=3)
    assert data.targets.tolist() == [0.0, 3.0]
    assert data.source.path is None
    with pytest.raises(ConfigError, match="resize only applies to image folders, not demo"):
        load("demo", resize=(2, 2))
    (out,) = write_cleaned(data.source, {"a": ("remove", None)}, tmp_path)
    assert out.read_text() == "x,target\n1,0\n"


def test_the_shipped_registry():
    """One format per name; the path formats are detected in order, the image folder (any
    folder) after idx; every name is what the format's reader records."""
    names = [f.name for f in sources.FORMATS]
    assert names == ["toy-linear", "csv", "npz", "idx", "imagefolder"]
    assert [f.name for f in sources.FORMATS if f.builtin] == ["toy-linear"]
    assert [f.name for f in sources.FORMATS if f.resizable] == ["imagefolder"]
    assert all(sources.find_format(name).name == name for name in names)
    assert sources.find_format("memory") is None
    assert load("toy-linear").source.format == "toy-linear"
