"""``auditor report``: the HTML page parsed with BeautifulSoup, checked against the database."""

from __future__ import annotations

import base64
import csv
import json
import math

import numpy as np
import pytest
import torch
from bs4 import BeautifulSoup
from click.testing import CliRunner
from torchvision.io import decode_png

from auditor.cleaning.exports import attach_flag_tests, train_records
from auditor.cli import cli
from auditor.config import DataArgs, FlagRule
from auditor.evaluation.metrics import RANKINGS
from auditor.report import charts
from auditor.report.collect import shown_z
from auditor.report.render import num as render_num
from auditor.report.thumbnails import thumbnail
from auditor.store import open_db, pairs, points, runs
from auditor.store.evaluations import read_evaluation
from tests.helpers import robust_z_reference, run_scan

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script>"
EVIL_FILE = "<b onmouseover=alert(1)>.csv"
OUR_SCRIPTS = {"run-data", "report-script"}


@pytest.fixture(scope="module")
def mnist_db(tmp_path_factory, mnist_dir):
    db = tmp_path_factory.mktemp("mnist") / "audit.db"
    data = DataArgs(train=str(mnist_dir), classes=["1", "7"], test_split=0.2)
    engine, result = run_scan(db, data, solver="cg")
    return str(db), engine, result.run_id


@pytest.fixture(scope="module")
def toy_db(tmp_path_factory):
    db = tmp_path_factory.mktemp("toy") / "audit.db"
    engine, result = run_scan(db, DataArgs(train="toy-linear"))
    return str(db), engine, result.run_id


def report(tmp_path, db: str, *args: str) -> tuple:
    """Run ``auditor report`` and return ``(CliResult, soup or None)``."""
    out = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["report", *args, "--out", str(out), "--db", db])
    soup = BeautifulSoup(out.read_text(encoding="utf-8"), "html.parser") if out.exists() else None
    return result, soup


def run_data(soup) -> dict:
    return json.loads(soup.select_one("script#run-data").string)


def decode_data_uri(uri: str) -> torch.Tensor:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    png = base64.b64decode(uri[len(prefix) :])
    assert png[:8] == PNG_SIGNATURE
    return decode_png(torch.frombuffer(bytearray(png), dtype=torch.uint8))


def flagged_rows(engine, run_id: int) -> list[dict]:
    train = points.read_points(engine, run_id, "train")
    return sorted((p for p in train if p["flags"]), key=lambda p: p["rank"])


def assert_self_contained(soup) -> None:
    csp = soup.find("meta", attrs={"http-equiv": "Content-Security-Policy"})
    assert csp is not None and "default-src 'none'" in csp["content"]
    for tag in soup.find_all(src=True):
        assert tag["src"].startswith("data:"), tag
    for tag in soup.find_all(href=True):
        assert tag["href"].startswith(("data:", "#")), tag
    assert not soup.find_all("link", rel="stylesheet")
    scripts = soup.find_all("script")
    assert {s.get("id") for s in scripts} == OUR_SCRIPTS
    assert all(not s.has_attr("src") for s in scripts)


def test_mnist_report_shows_every_flagged_point_with_its_thumbnail(tmp_path, mnist_db):
    db, engine, run_id = mnist_db
    result, soup = report(tmp_path, db)
    assert result.exit_code == 0, result.output
    assert_self_contained(soup)
    flagged = flagged_rows(engine, run_id)
    rows = soup.select("table#flagged tbody tr[data-index]")
    assert len(rows) == min(200, len(flagged)) > 0
    assert [int(r["data-index"]) for r in rows] == [p["idx"] for p in flagged]  # rank order
    shape = runs.get_run(engine, run_id).as_dict()["image_shape"]
    blobs = points.read_point_blobs(engine, run_id, "train", [p["idx"] for p in flagged])
    for row in rows:
        png = decode_data_uri(row.select_one("img.thumb")["src"])
        k = png.shape[1] // shape[1]
        assert k >= 2 and tuple(png.shape) == (shape[0], k * shape[1], k * shape[2])
        stored = np.frombuffer(blobs[int(row["data-index"])][0], dtype=np.uint8).reshape(shape)
        assert np.array_equal(png[:, ::k, ::k].numpy(), stored)
        assert 0 < len(row.select(".hurts img.thumb")) <= 3
    # a mislabel's reason names its strongest test and that test's z
    records = {r["index"]: r for r in train_records(engine, run_id)}
    mislabels = [r for r in rows if "mislabel" in records[int(r["data-index"])]["flags"]]
    assert mislabels
    for row in mislabels:
        r = records[int(row["data-index"])]
        reason = row.select_one("td.reason div").get_text()
        assert f"≠ given {r['label']} and {r['strongest_test']} z " in reason, reason
        # and how sure the rule is: the label's leave-one-out probability, by hand
        left_out = math.exp(-(r["loss"] - r["self_influence"] / len(records)))
        assert reason.endswith(f"give {r['label']} a probability of {left_out:.2f}"), reason
        # z-scores print as three digits or capped; the tooltips carry the exact values
        z_cell = row.select("td.num")[-1]
        assert float(z_cell["title"].removeprefix("z ")) == pytest.approx(r["suspicion"])
        assert z_cell.get_text() == shown_z(r["suspicion"])
        assert "strongest test z " in row.select_one("td.reason")["title"]


def test_z_scores_print_capped_at_100_with_three_digits_below():
    assert [shown_z(z) for z in (4.567, -2.0, 99.94, 100.0, 6231.4, -150.0)] == [
        "4.57", "-2", "99.9", "above 100", "above 100", "below -100"
    ]  # fmt: skip


def test_mnist_report_rows_carry_the_decision_controls(tmp_path, mnist_db):
    db, engine, run_id = mnist_db
    _, soup = report(tmp_path, db, str(run_id), "--top", "5")
    run = runs.get_run(engine, run_id).as_dict()
    data = run_data(soup)
    assert data["run"] == run_id and data["data_fingerprint"] == run["data_fingerprint"]
    rows = soup.select("tr[data-index]")
    assert len(rows) == 5
    for row in rows:
        i = row["data-index"]
        radios = row.select(f'input[type="radio"][name="action-{i}"]')
        assert [r["value"] for r in radios] == ["keep", "relabel", "remove"]
        options = row.select(f'select[name="label-{i}"] option')
        # the reviewer chooses: the control starts on an empty choice, never on a class
        assert [o["value"] for o in options] == ["", *run["class_names"]]
        assert [o.get("value") for o in options if o.has_attr("selected")] == [""]
        assert data["ids"][i] == row.select_one("td.id").contents[0].strip()
    assert soup.select_one("button#download-decisions") is not None
    assert soup.select_one("#decision-count").get_text() == "0"


def test_top_limits_rows_and_says_how_many_are_left_out(tmp_path, mnist_db):
    db, engine, run_id = mnist_db
    n_flagged = len(flagged_rows(engine, run_id))
    assert n_flagged > 3
    result, soup = report(tmp_path, db, "--top", "3")
    assert result.exit_code == 0
    assert len(soup.select("table#flagged tbody tr")) == 3
    summary = soup.select_one("#flagged-summary").get_text(" ", strip=True)
    assert f"{n_flagged - 3} more" in summary


def test_test_panels_default_to_the_highest_test_loss(tmp_path, mnist_db):
    db, engine, run_id = mnist_db
    _, soup = report(tmp_path, db)
    losses = [p["loss"] for p in points.read_points(engine, run_id, "test")]
    worst = list(np.argsort(-np.array(losses), kind="stable")[:3])
    assert [int(p["data-test-index"]) for p in soup.select(".panel")] == worst


def test_test_index_selects_panels_with_the_stored_scores(tmp_path, mnist_db):
    db, engine, run_id = mnist_db
    result, soup = report(tmp_path, db, "--test-index", "5", "--test-index", "17")
    assert result.exit_code == 0, result.output
    panels = soup.select(".panel")
    assert [int(p["data-test-index"]) for p in panels] == [5, 17]
    for panel in panels:
        scores = pairs.read_test_scores(engine, run_id, int(panel["data-test-index"]))
        order = np.argsort(-scores, kind="stable")
        harmful = [int(f["data-train-index"]) for f in panel.select(".strip.harmful figure")]
        helpful = [int(f["data-train-index"]) for f in panel.select(".strip.helpful figure")]
        assert harmful == list(order[:6]) and helpful == list(order[::-1][:6])
        assert len(panel.select("img.thumb")) == 13  # the test point and its 12 neighbours


def test_out_of_range_test_index_and_unknown_run(tmp_path, mnist_db):
    db, engine, run_id = mnist_db
    n_test = runs.get_run(engine, run_id).as_dict()["n_test"]
    result, soup = report(tmp_path, db, "--test-index", str(n_test))
    assert result.exit_code == 2 and soup is None
    message = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert message == [
        f"Error: --test-index {n_test} is out of range: run {run_id} has {n_test} test points"
    ]
    result, soup = report(tmp_path, db, "999")
    assert result.exit_code == 1 and soup is None
    assert "run 999 does not exist" in result.output


def test_toy_linear_scatter_marks_exactly_the_two_outliers(tmp_path, toy_db):
    db, engine, run_id = toy_db
    result, soup = report(tmp_path, db)
    assert result.exit_code == 0, result.output
    assert_self_contained(soup)
    svg = soup.select_one("svg#scatter")
    flagged = svg.select(".flagged")
    assert sorted(float(m["data-x"]) for m in flagged) == [-4.5, 2.5]
    assert all(float(m["data-y"]) == 100.0 for m in flagged)
    assert len(svg.select("circle.point")) == 18 and len(svg.select(".test-point")) == 1
    assert svg.select_one("polyline.fit") is not None
    lines = soup.select("svg#histogram line.threshold")
    # the calibrated default for 20 points: the largest of 20 standard normals exceeds
    # it with probability 0.05, Phi^-1(1 - 0.05 / 20) = 2.807
    [line] = lines
    assert line["data-kind"] == "outlier" and float(line["data-value"]) == pytest.approx(
        2.807, abs=1e-3
    )
    rows = soup.select("tr[data-index]")
    assert sorted(int(r["data-index"]) for r in rows) == [1, 15]
    targets = [r.select_one('input[type="number"][name^="label-"]') for r in rows]
    assert all(t is not None and t["value"] == "" and t["placeholder"] for t in targets)
    # Only 5 training points raise the toy test point's loss: the harmful strip stops there.
    scores = pairs.read_test_scores(engine, run_id, 0)
    panel = soup.select_one('.panel[data-test-index="0"]')
    harmful = [int(f["data-train-index"]) for f in panel.select(".strip.harmful figure")]
    assert sorted(harmful) == sorted(np.flatnonzero(scores > 0).tolist())
    assert len(harmful) == 5


def test_stored_warnings_are_shown_prominently(tmp_path):
    engine, result = run_scan(tmp_path / "w.db", DataArgs(train="toy-linear"))
    warning = "fit far from optimum: gradient norm 0.02 > 0.001"
    runs.update_run(engine, result.run_id, warnings=[warning])
    _, soup = report(tmp_path, str(tmp_path / "w.db"))
    box = soup.select_one("header .warnings[role=alert]")
    assert [li.get_text() for li in box.select("li")] == [warning]


def test_strings_from_data_are_escaped(tmp_path):
    csv_path = tmp_path / EVIL_FILE
    rng = np.random.default_rng(0)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "label"])
        for i in range(40):
            label = EVIL if i % 2 else "ok"
            centre = 2.0 if label == EVIL else -2.0
            if i == 0:  # an "ok" point in the middle of the other class: a mislabel
                centre = 2.5
            writer.writerow([centre + rng.normal(0, 0.3), centre + rng.normal(0, 0.3), label])
    db = tmp_path / "evil.db"
    rule = FlagRule(mislabel_z=2.0, outlier_z=4.0)
    engine, result = run_scan(db, DataArgs(train=str(csv_path), test_split=0.25), rule=rule)
    assert flagged_rows(engine, result.run_id), "the setup needs a flagged row"
    out, soup = report(tmp_path, str(db))
    assert out.exit_code == 0, out.output
    assert_self_contained(soup)
    assert not soup.find_all("b")
    assert not [t for t in soup.find_all(True) if any(a.startswith("on") for a in t.attrs)]
    assert EVIL_FILE in soup.select_one("h1").get_text()
    options = soup.select("select[name^='label-'] option")
    assert EVIL in {o["value"] for o in options}
    assert EVIL in [o.get_text().removesuffix(" (model)").removesuffix(" (given)") for o in options]
    assert set(run_data(soup)["class_names"]) == {"ok", EVIL}  # through |tojson, intact


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_run_stored_with_a_threshold_no_longer_accepted_still_reports(tmp_path, bad):
    """Scans once accepted --outlier-z / --mislabel-z 0, nan and inf; the report of such a
    stored run draws its charts instead of crashing."""
    engine, result = run_scan(tmp_path / "z.db", DataArgs(train="toy-linear"))
    run = runs.get_run(engine, result.run_id).as_dict()
    rule = {**run["ranking"]["rule"], "outlier_z": bad, "mislabel_z": bad}
    ranking = {**run["ranking"], "rule": rule}
    config = {**run["config"], "rule": {**run["config"]["rule"], "outlier_z": bad}}
    runs.update_run(engine, result.run_id, ranking=ranking, config=config)
    out, soup = report(tmp_path, str(tmp_path / "z.db"))
    assert out.exit_code == 0, out.output
    assert_self_contained(soup)
    bars = soup.select("svg#histogram g.bar")
    assert sum(int(b["data-count"]) for b in bars) == 20  # every training point, once
    assert len(soup.select("svg#scatter circle.point")) == 18
    lines = soup.select("svg#histogram line.threshold")
    assert [float(line["data-value"]) for line in lines] == ([bad] if math.isfinite(bad) else [])


def test_histogram_counts_every_point_once():
    z = [-1.0, 0.0, 0.5, 2.0, 3.5, 7.0, 1000.0]
    kinds = ["none", "none", "none", "none", "mislabel", "outlier", "outlier"]
    h = charts.histogram(z, kinds, {"mislabel": 3.0, "outlier": 6.0})
    assert sum(b.count for b in h.bars) == len(z)
    assert h.overflow_from == 12.0 and h.bars[-1].overflow and h.bars[-1].counts["outlier"] == 1
    assert [t.kind for t in h.thresholds] == ["mislabel", "outlier"]


def test_nice_ticks_and_thumbnail_sizes():
    assert charts.nice_ticks(0, 10) == [0, 2, 4, 6, 8, 10]
    small = (
        torch.arange(28 * 28, dtype=torch.int32).remainder(256).to(torch.uint8).reshape(1, 28, 28)
    )
    assert thumbnail(small).shape == (1, 56, 56)
    big = torch.zeros(3, 200, 100, dtype=torch.uint8)
    assert thumbnail(big).shape == (3, 56, 28)


#: The rankings of a regression's evaluation: confident learning needs class labels.
REGRESSION_RANKINGS = [name for name in RANKINGS if name != "confident learning"]


def test_report_shows_detection_curves_of_an_evaluated_run(tmp_path, toy_db):
    db = str(tmp_path / "eval.db")
    result = CliRunner().invoke(
        cli,
        ["evaluate", "--train", "toy-linear", "--solver", "exact", "--faults", "outlier"]
        + ["--rate", "0.1", "--no-fix", "--db", db],
    )
    assert result.exit_code == 0, result.output
    engine = open_db(db)
    _, rows = read_evaluation(engine, 1)
    result, soup = report(tmp_path, db, str(rows[0]["run_id"]))
    assert result.exit_code == 0, result.output
    assert_self_contained(soup)
    lines = soup.select("svg#detection polyline.curve")
    assert [line["data-ranking"] for line in lines] == REGRESSION_RANKINGS
    by = {r["ranking"]: r for r in rows}
    for line in lines:
        xy = [tuple(map(float, p.split(","))) for p in line["points"].split()]
        assert len(xy) == len(by[line["data-ranking"]]["curve"])
        # the y pixel falls as the share found rises: the curve never goes down on screen
        assert all(b[1] <= a[1] for a, b in zip(xy, xy[1:], strict=False))
    cells = soup.select('table.detection tr[data-ranking="combined"] td')
    assert cells[1].get_text() == render_num(by["combined"]["auroc"])
    flags = by["combined"]["flags"]  # the scan's flags against the injected outliers
    precision = "—" if flags["precision"] is None else f"{flags['precision']:.2f}"
    assert cells[3].get_text().startswith(f"{flags['count']} flagged, precision {precision}")
    assert soup.select_one('table.detection tr[data-ranking="random"] td.flags').get_text() == ""
    # a run without an evaluation has no detection section
    _, plain = report(tmp_path, toy_db[0])
    assert (
        plain.select_one("svg#detection") is None and plain.select_one("#detection-quality") is None
    )


def test_report_reads_found_after_10_percent_off_the_curve_when_checked_lacks_it(tmp_path):
    evaluate = ["evaluate", "--train", "toy-linear", "--solver", "exact", "--faults", "outlier"]
    evaluate += ["--rate", "0.2", "--no-fix", "--seeds", "3"]
    shown = {}
    for checked in ("0.1", "0.05,0.2"):
        db = str(tmp_path / f"eval-{checked}.db")
        result = CliRunner().invoke(cli, [*evaluate, "--checked", checked, "--db", db])
        assert result.exit_code == 0, result.output
        _, rows = read_evaluation(open_db(db), 1)
        _, soup = report(tmp_path, db, str(rows[0]["run_id"]))
        for row in soup.select("table.detection tr[data-ranking]"):
            shown.setdefault(row["data-ranking"], []).append(row.select("td")[2].get_text())
        if checked == "0.1":
            stored = {r["ranking"]: render_num(r["found"]["0.1"]) for r in rows}
    # the same seed scans the same data: both reports show the share found_after computed
    assert shown == {name: [stored[name]] * 2 for name in REGRESSION_RANKINGS}
    assert "—" not in stored.values()


def test_report_of_an_evaluation_without_faults_shows_no_share_found(tmp_path):
    """With nothing injected the stored curve is flat at 0; "found after 10%" has no value
    (as evaluate's own table says n/a), not 0."""
    db = str(tmp_path / "none.db")
    args = ["evaluate", "--train", "toy-linear", "--solver", "exact", "--faults", "none"]
    result = CliRunner().invoke(cli, [*args, "--no-fix", "--db", db])
    assert result.exit_code == 0, result.output
    _, rows = read_evaluation(open_db(db), 1)
    _, soup = report(tmp_path, db, str(rows[0]["run_id"]))
    cells = [
        row.select("td")[2].get_text() for row in soup.select("table.detection tr[data-ranking]")
    ]
    assert cells == [render_num(None)] * len(REGRESSION_RANKINGS)


@pytest.mark.parametrize("fixture", ["mnist_db", "toy_db"])
def test_stored_flag_tests_reproduce_the_flags_and_the_fallback_recomputes_them(fixture, request):
    db, engine, run_id = request.getfixturevalue(fixture)
    run = runs.get_run(engine, run_id).as_dict()
    rule = FlagRule.from_dict(run["ranking"]["rule"])
    assert rule.influence_scale == "log" and rule.outlier_z is not None
    train = train_records(engine, run_id)
    n = len(train)
    for r in train:
        disagrees = run["task"] == "classification" and r["predicted"] != r["label"]
        mislabel = disagrees and r["union_z"] >= rule.mislabel_z
        if rule.mislabel_p is not None:  # the label's leave-one-out probability, by hand
            mislabel = mislabel and math.exp(-(r["loss"] - r["self_influence"] / n)) <= (
                rule.mislabel_p
            )
        outlier = not mislabel and (
            r["influence_z"] >= rule.outlier_z and r["union_z"] >= rule.outlier_support_z
        )
        expected = ["mislabel"] if mislabel else ["outlier"] if outlier else []
        assert r["flags"] == expected, r
    # union_z is the strongest of the three tests, and the records name it
    zs = {
        "training loss": robust_z_reference(np.log([r["loss"] for r in train])),
        "harmfulness": robust_z_reference(np.array([r["harmfulness"] for r in train])),
        "self-influence": robust_z_reference(np.log(np.abs([r["self_influence"] for r in train]))),
    }
    for i, r in enumerate(train):
        assert r["union_z"] == pytest.approx(max(z[i] for z in zs.values()), rel=1e-6, abs=1e-9)
        assert zs[r["strongest_test"]][i] == pytest.approx(r["union_z"], rel=1e-6, abs=1e-9)
    # runs stored before revision 0003 have no stored z-scores: the report recomputes them
    old = [dict(r, union_z=None, influence_z=None) for r in train]
    attach_flag_tests(old)
    for a, b in zip(old, train, strict=True):
        assert a["union_z"] == pytest.approx(b["union_z"], rel=1e-9, abs=1e-9)
        assert a["influence_z"] == pytest.approx(b["influence_z"], rel=1e-9, abs=1e-9)


def test_histogram_is_of_the_log_influence_with_the_outlier_threshold(tmp_path, toy_db):
    db, engine, run_id = toy_db
    result, soup = report(tmp_path, db)
    assert result.exit_code == 0, result.output
    [line] = soup.select("svg#histogram line.threshold")
    threshold = float(line["data-value"])
    assert "log |self-influence|" in soup.select_one("svg#histogram").get_text()
    si = np.array([r["self_influence"] for r in train_records(engine, run_id)])
    z = robust_z_reference(np.log(np.abs(si)))
    outliers = [
        int(row["data-index"])
        for row in soup.select("tr[data-index]")
        if "influence z" in row.get_text()
    ]
    assert sorted(outliers) == [1, 15]
    assert all(z[i] >= threshold for i in outliers)
    assert sorted(np.flatnonzero(z >= threshold)) == [1, 15]
