"""Report safety (issue 6): every string from data is escaped, in text and in attributes,
and the Content-Security-Policy forbids loading anything from the network."""

from __future__ import annotations

import csv

import pytest
import torch
from bs4 import BeautifulSoup
from click.testing import CliRunner
from torchvision.io import encode_png

from auditor.cli import cli
from auditor.store import open_db, points

CLASS_A = '"><img src=x onerror=alert(1)>'
CLASS_B = "<b onclick=alert('b')>B"  # no '/': it names a folder
FILE = "x'\"><svg onload=alert(3)>{i}.png"
HEADER = "<script>alert(4)</script>"
EVIL = [CLASS_A, CLASS_B, HEADER, "<img src=x", "<svg onload", "<b onclick"]  # never raw


def render(tmp_path, args: list[str]) -> tuple[str, BeautifulSoup, str]:
    db = str(tmp_path / "a.db")
    result = CliRunner().invoke(cli, ["scan", *args, "--solver", "exact", "--db", db])
    assert result.exit_code == 0, result.output
    out = tmp_path / "r.html"
    result = CliRunner().invoke(cli, ["report", "--out", str(out), "--db", db])
    assert result.exit_code == 0, result.output
    html = out.read_text(encoding="utf-8")
    return html, BeautifulSoup(html, "html.parser"), db


def assert_inert(html: str, soup: BeautifulSoup) -> None:
    for raw in EVIL:
        assert raw not in html  # escaped everywhere, JSON included (|tojson escapes < > ')
    assert not soup.find_all(["img", "svg"], src=lambda s: s and not s.startswith("data:"))
    assert not soup.find_all("svg", onload=True)
    assert not [t for t in soup.find_all(True) if any(a.startswith("on") for a in t.attrs)]
    assert [s.get("id") for s in soup.find_all("script")] == ["run-data", "report-script"]


def csp_directives(soup: BeautifulSoup) -> dict[str, list[str]]:
    metas = soup.find_all("meta", attrs={"http-equiv": "Content-Security-Policy"})
    assert len(metas) == 1 and metas[0] is soup.head.find("meta", attrs={"http-equiv": True})
    directives = {}
    for part in metas[0]["content"].split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


def test_image_folder_names_are_escaped_and_nothing_loads_from_the_network(tmp_path):
    gen = torch.Generator().manual_seed(0)
    for c, name in enumerate([CLASS_A, CLASS_B]):
        folder = tmp_path / "imgs" / name
        folder.mkdir(parents=True)
        for i in range(8):
            image = torch.randint(0, 90, (1, 6, 6), generator=gen, dtype=torch.uint8)
            image[:, :, 3 * c : 3 * c + 3] += 160
            (folder / FILE.format(i=i)).write_bytes(encode_png(image).numpy().tobytes())
    html, soup, db = render(tmp_path, ["--train", str(tmp_path / "imgs"), "--test-split", "0.25"])
    assert_inert(html, soup)
    shown = soup.get_text()
    ids = [p["point_id"] for p in points.read_points(open_db(db), 1, "test")]
    assert any(i in shown for i in ids)  # the names are shown, as text
    assert CLASS_A in shown and CLASS_B in shown
    options = {o["value"] for o in soup.select("select option")}
    assert {CLASS_A, CLASS_B} <= options  # attribute values survive intact

    csp = csp_directives(soup)
    assert csp["default-src"] == ["'none'"]
    assert csp["img-src"] == ["data:"]
    assert csp["base-uri"] == ["'none'"] and csp["form-action"] == ["'none'"]
    for name, values in csp.items():  # nothing names a host, a scheme or a wildcard
        for value in values:
            assert value in ("'none'", "'unsafe-inline'", "data:"), (name, value)
    assert "connect-src" not in csp or csp["connect-src"] == ["'none'"]


@pytest.mark.parametrize("label", ["plain", "<b>bold</b>"])
def test_csv_headers_and_labels_from_data_are_escaped(tmp_path, label):
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([HEADER, "b", "label"])
        for i in range(24):
            c = i % 2
            writer.writerow([c * 2 + 0.1 * (i % 5), -c + 0.05 * i, [label, CLASS_B][c]])
    html, soup, _ = render(tmp_path, ["--train", str(path), "--test-split", "0.25"])
    assert_inert(html, soup)
    assert "<b>bold</b>" not in html and not soup.find_all("b")
    assert CLASS_B in soup.get_text()
