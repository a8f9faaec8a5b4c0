"""The report of a big colour-image run (issue 17): colour thumbnails, the flagged table
paged, and a page whose size does not grow with the number of training points.

The runs are built through the store API (``benchmarks/report_scale.py``), not scanned:
random 32x32x3 pixels, random pair scores.
"""

from __future__ import annotations

import base64
import struct

import numpy as np
import pytest
import torch
from bs4 import BeautifulSoup
from click.testing import CliRunner

from auditor.cli import cli
from auditor.config import DataArgs
from auditor.report.collect import MAX_MARKS, MAX_TEST_PANELS, MAX_TOP, PAGE_SIZE, scatter_sample
from auditor.report.thumbnails import png_data_uri
from auditor.store import open_db, points
from benchmarks.report_scale import build_run
from tests.helpers import run_scan, write_csv
from tests.report.test_report import assert_self_contained, decode_data_uri

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def big_run(tmp_path_factory):
    """5,000 colour training points (250 flagged) x 40 test points."""
    db = tmp_path_factory.mktemp("big") / "big.db"
    run_id = build_run(db, 5000, 40, flagged=0.05)
    return str(db), run_id


def report(tmp_path, db: str, *args: str) -> tuple:
    out = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["report", *args, "--out", str(out), "--db", db])
    html = out.read_text(encoding="utf-8") if out.exists() else ""
    return result, html, BeautifulSoup(html, "html.parser") if html else None


def png_colour_type(uri: str) -> int:
    """The IHDR colour type of a PNG data URI: 0 grey, 2 RGB, 6 RGBA."""
    png = base64.b64decode(uri.split(",", 1)[1])
    width, height, depth, colour = struct.unpack(">IIBB", png[16:26])
    assert depth == 8
    return colour


@pytest.mark.parametrize("size", [32, 20])  # shown as stored, and enlarged 2x
def test_colour_thumbnail_is_an_rgb_png_with_the_stored_pixels(size):
    rng = np.random.default_rng(size)
    image = rng.integers(0, 256, (3, size, size), dtype=np.uint8)
    image[:, 0, 0] = (255, 0, 0)  # a pure red corner: the channels are not mixed up
    uri = png_data_uri(image.tobytes(), [3, size, size])
    assert png_colour_type(uri) == 2
    png = decode_data_uri(uri)
    k = png.shape[1] // size
    assert k == (2 if size == 20 else 1) and tuple(png.shape) == (3, k * size, k * size)
    assert torch.equal(png[:, ::k, ::k], torch.from_numpy(image))
    assert png[:, 0, 0].tolist() == [255, 0, 0]


def test_flagged_table_is_paged_and_every_thumbnail_is_in_colour(tmp_path, big_run):
    db, run_id = big_run
    result, _, soup = report(tmp_path, db)
    assert result.exit_code == 0, result.output
    assert_self_contained(soup)
    rows = soup.select("table#flagged tbody tr[data-index]")
    assert len(rows) == 200  # the default --top, of 250 flagged
    pages = [int(r["data-page"]) for r in rows]
    assert pages == [k // PAGE_SIZE + 1 for k in range(200)]
    assert [r for r in rows if not r.has_attr("hidden")] == rows[:PAGE_SIZE]
    pager = soup.select_one("#flagged-pager")
    buttons = pager.select("button[data-page]")
    assert [b.get_text() for b in buttons] == ["1", "2", "3", "4"]
    assert [b.get("aria-current") for b in buttons] == ["page", None, None, None]
    assert pager.select_one('button[data-step="-1"]').has_attr("disabled")
    assert pager.select_one(".page-status").get_text() == f"rows 1–{PAGE_SIZE} of 200"
    assert len(soup.select('.pager[data-table="flagged"]')) == 2  # above and below the table
    summary = soup.select_one("#flagged-summary").get_text(" ", strip=True)
    assert "50 more" in summary and "--top 250" in summary
    # every thumbnail on every page: an RGB PNG of the stored pixels
    engine = open_db(db)
    stored = points.read_point_blobs(engine, run_id, "train", [int(r["data-index"]) for r in rows])
    for row in rows:
        uri = row.select_one("img.thumb")["src"]
        assert png_colour_type(uri) == 2
        want = np.frombuffer(stored[int(row["data-index"])][0], dtype=np.uint8).reshape(SHAPE)
        assert np.array_equal(decode_data_uri(uri).numpy(), want)
        for hurt in row.select(".hurts img.thumb"):
            assert decode_data_uri(hurt["src"]).shape == SHAPE
    for panel in soup.select(".panel"):
        assert all(decode_data_uri(i["src"]).shape == SHAPE for i in panel.select("img.thumb"))


def test_a_short_table_has_one_page_and_no_pager(tmp_path, big_run):
    db, _ = big_run
    _, _, soup = report(tmp_path, db, "--top", str(PAGE_SIZE))
    rows = soup.select("table#flagged tbody tr[data-index]")
    assert len(rows) == PAGE_SIZE and not [r for r in rows if r.has_attr("hidden")]
    assert soup.select(".pager") == []


def test_report_size_does_not_grow_with_the_training_points(tmp_path, big_run):
    small = tmp_path / "small.db"
    build_run(small, 1000, 40, flagged=0.25)  # 250 flagged, as in big_run
    sizes = {}
    for name, db in (("1k", str(small)), ("5k", big_run[0])):
        result, html, soup = report(tmp_path, db, "--top", "100")
        assert result.exit_code == 0, result.output
        assert len(soup.select("table#flagged tbody tr[data-index]")) == 100
        sizes[name] = len(html.encode())
    # 5x the training points, the same page: within 5% (ids and numbers differ), and under
    # the bound docs/usage.md states (about 20 KB a row with 32x32 colour thumbnails of
    # random pixels, plus the charts and test panels)
    assert abs(sizes["5k"] - sizes["1k"]) < 0.05 * sizes["1k"], sizes
    assert sizes["5k"] < 100 * 22_000 + 400_000, sizes


def test_top_and_test_panels_are_bounded(tmp_path, big_run):
    db, _ = big_run
    result, _, soup = report(tmp_path, db, "--top", str(MAX_TOP + 1))
    assert result.exit_code == 2 and soup is None
    assert f"{MAX_TOP}" in result.output
    many = [a for j in range(MAX_TEST_PANELS + 1) for a in ("--test-index", str(j))]
    result, _, soup = report(tmp_path, db, *many)
    assert result.exit_code == 2 and soup is None
    assert f"at most {MAX_TEST_PANELS} test panels" in result.output


def test_scatter_sample_keeps_the_flagged_points_and_spreads_the_rest():
    n = 5 * MAX_MARKS
    flagged = {17, 4000, 9999}
    train = [
        {"index": i, "flags": ["outlier"] if i in flagged else [], "rank": i} for i in range(n)
    ]
    keep = scatter_sample(train)
    assert len(keep) == MAX_MARKS and keep == sorted(set(keep))
    assert flagged <= set(keep)
    assert max(np.diff(keep)) <= 6  # an even sample: no long stretch left out
    assert scatter_sample(train[:10]) == list(range(10))


def test_regression_scatter_draws_a_bounded_sample(tmp_path):
    n = MAX_MARKS + 500
    rng = np.random.default_rng(0)
    x = rng.normal(size=n)
    y = 2 * x + rng.normal(0, 0.1, n)
    y[:3] += 40  # three outliers
    train = write_csv(tmp_path / "train.csv", {"x": x.tolist(), "target": y.tolist()})
    test = write_csv(tmp_path / "test.csv", {"x": [0.5], "target": [1.0]})
    db = tmp_path / "reg.db"
    engine, scanned = run_scan(db, DataArgs(train=train, test=test))
    flagged = {p["idx"] for p in points.read_points(engine, scanned.run_id, "train") if p["flags"]}
    assert flagged, "the setup needs a flagged point"
    result, _, soup = report(tmp_path, str(db))
    assert result.exit_code == 0, result.output
    marks = soup.select("svg#scatter [data-train-index]")
    assert len(marks) == MAX_MARKS
    drawn = {int(m["data-train-index"]) for m in marks}
    assert (
        flagged <= drawn
        and {int(m["data-train-index"]) for m in marks if m.get("data-flagged")} == flagged
    )
    note = soup.select_one(".sample-note").get_text()
    assert f"{MAX_MARKS:,} of {n:,} training points drawn" in note
