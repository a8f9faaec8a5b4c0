"""The report in headless Chromium: a reviewer's clicks become a decisions file for ``apply``.

Needs Debian's ``chromium`` (``.ci/run`` installs it) and the ``playwright`` driver. Without
Chromium the tests skip, unless ``AUDITOR_REQUIRE_BROWSER=1`` (set by CI) makes that a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter

import pytest
from click.testing import CliRunner

from auditor import sources
from auditor.cli import cli
from auditor.config import DataArgs
from auditor.pipeline.scan import load_data
from auditor.store import points, runs
from benchmarks.report_scale import build_run
from tests.helpers import run_scan

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("AUDITOR_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory, mnist_dir):
    """A 1-vs-7 scan of the shared MNIST files and its report."""
    root = tmp_path_factory.mktemp("browser")
    data = DataArgs(train=str(mnist_dir), classes=["1", "7"], test_split=0.2)
    engine, result = run_scan(root / "audit.db", data, solver="cg")
    html = root / "report.html"
    db = str(root / "audit.db")
    out = CliRunner().invoke(cli, ["report", str(result.run_id), "--out", str(html), "--db", db])
    assert out.exit_code == 0, out.output
    return root, db, engine, result.run_id, data


def open_page(browser, html, problems: list[str]):
    """Open ``html`` and record every console error or warning and uncaught exception."""
    page = browser.new_page(accept_downloads=True)
    page.on(
        "console",
        lambda m: (
            problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None
        ),
    )
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.goto(html.as_uri())
    return page


def test_report_loads_without_console_errors_or_network(browser, mnist_run):
    root, *_ = mnist_run
    problems: list[str] = []
    requests: list[str] = []
    page = browser.new_page()
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto((root / "report.html").as_uri())
    page.wait_for_load_state("load")
    assert problems == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert page.locator("tr[data-index]").count() > 0
    decoded = "[...document.images].every(i => i.complete && i.naturalWidth > 0)"
    assert page.evaluate(decoded), "a thumbnail failed to decode"
    # Sorting by a numeric header reorders the rows without errors.
    page.locator("table.sortable th[data-type=num]").first.click()
    assert problems == []
    page.close()


def test_two_clicked_rows_become_exactly_two_applied_decisions(browser, mnist_run, tmp_path):
    root, db, engine, run_id, data = mnist_run
    problems: list[str] = []
    page = open_page(browser, root / "report.html", problems)
    rows = page.locator("tr[data-index]")
    first, second = (int(rows.nth(k).get_attribute("data-index")) for k in (0, 1))
    train = points.read_points(engine, run_id, "train")
    given = train[first]["label"]
    new_label = "1" if given == "7" else "7"

    # Row one: choose a new label (which selects "relabel"); row two: remove.
    page.select_option(f'select[name="label-{first}"]', new_label)
    page.check(f'input[name="action-{second}"][value="remove"]')
    assert page.locator("#decision-count").inner_text() == "2"
    with page.expect_download() as info:
        page.click("#download-decisions")
    download = info.value
    assert download.suggested_filename == f"decisions-run-{run_id}.json"
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    assert problems == []
    page.close()

    decisions = json.loads(path.read_text())
    assert decisions["run"] == run_id
    assert decisions["decisions"] == sorted(
        [
            {"index": first, "id": train[first]["point_id"], "action": "relabel",
             "label": new_label},
            {"index": second, "id": train[second]["point_id"], "action": "remove"},
        ],
        key=lambda d: d["index"],
    )  # fmt: skip

    out = tmp_path / "clean"
    result = CliRunner().invoke(
        cli, ["apply", str(run_id), str(path), "--out", str(out), "--db", db]
    )
    assert result.exit_code == 0, result.output

    # The cleaned training split holds the same images with the same labels, except the two.
    original, _ = load_data(data)
    cleaned = sources.load(str(out / "train"), role="train", classes=["1", "7"])
    expected = Counter()
    for i in range(len(original.ids)):
        label = original.class_names[int(original.targets[i])]
        if i == second:
            continue
        expected[(_digest(original.images[i]), new_label if i == first else label)] += 1
    got = Counter(
        (_digest(cleaned.images[i]), cleaned.class_names[int(cleaned.targets[i])])
        for i in range(len(cleaned.ids))
    )
    assert got == expected


def _digest(image) -> str:
    return hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()


def test_paging_shows_each_page_and_keeps_decisions_of_hidden_pages(browser, tmp_path):
    """120 flagged rows, 50 per page: the pager walks the pages, sorting re-pages, and a
    decision made on page 3 is still downloaded while page 1 is shown."""
    db = str(tmp_path / "paged.db")
    run_id = build_run(db, 1000, 20, flagged=0.12)
    html = tmp_path / "report.html"
    out = CliRunner().invoke(cli, ["report", str(run_id), "--out", str(html), "--db", db])
    assert out.exit_code == 0, out.output
    problems: list[str] = []
    page = open_page(browser, html, problems)
    visible = page.locator("#flagged tbody tr:visible")
    pager = page.locator("#flagged-pager")
    assert visible.count() == 50
    first_page = [visible.nth(k).get_attribute("data-index") for k in range(50)]
    pager.locator('button[data-page="3"]').click()
    assert visible.count() == 20
    assert pager.locator(".page-status").inner_text() == "rows 101–120 of 120"
    assert pager.locator('button[data-step="1"]').is_disabled()
    last = visible.nth(19).get_attribute("data-index")
    page.check(f'input[name="action-{last}"][value="remove"]')
    pager.locator('button[data-step="-1"]').click()
    pager.locator('button[data-step="-1"]').click()
    assert [visible.nth(k).get_attribute("data-index") for k in range(50)] == first_page
    assert page.locator("#decision-count").inner_text() == "1"
    # sorting by rank descending puts the least suspicious row first, on page 1
    rank = page.locator("#flagged th[data-type=num]").first
    rank.click()
    rank.click()
    assert visible.count() == 50 and visible.first.get_attribute("data-index") == last
    assert pager.locator('button[data-page="1"]').get_attribute("aria-current") == "page"
    with page.expect_download() as info:
        page.click("#download-decisions")
    path = tmp_path / "decisions.json"
    info.value.save_as(path)
    assert [d["index"] for d in json.loads(path.read_text())["decisions"]] == [int(last)]
    assert problems == []
    page.close()


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (390, 844)])
def test_every_decision_control_is_in_view_and_usable_at_laptop_and_phone_width(
    browser, mnist_run, width, height
):
    """The decision column stays on screen (sticky) however wide the table is: at a
    1,280 x 800 laptop window and a 390-pixel phone, each control of each row of the first
    page lies inside the window when the row is scrolled to, and clicking it works."""
    root, *_ = mnist_run
    problems: list[str] = []
    page = open_page(browser, root / "report.html", problems)
    page.set_viewport_size({"width": width, "height": height})
    table_width = page.evaluate("document.getElementById('flagged').scrollWidth")
    if width < 1000:
        assert table_width > width  # the table overflows the phone: the sticky column matters
    rows = page.locator("tr[data-index]:not([hidden])")
    assert rows.count() > 0
    for k in range(min(rows.count(), 5)):
        index = rows.nth(k).get_attribute("data-index")
        # Scroll the page down to the row only (not sideways), as a reader scrolls.
        page.evaluate(
            f"""window.scrollTo(0, document.querySelector('tr[data-index="{index}"]')
                .getBoundingClientRect().top + window.scrollY - 200)"""
        )
        controls = [
            f'input[name="action-{index}"][value="keep"]',
            f'input[name="action-{index}"][value="relabel"]',
            f'input[name="action-{index}"][value="remove"]',
            f'[name="label-{index}"]',
        ]
        for selector in controls:
            box = page.locator(selector).bounding_box()
            assert box is not None, selector
            inside = box["x"] >= 0 and box["x"] + box["width"] <= width
            inside = inside and box["y"] >= 0 and box["y"] + box["height"] <= height
            assert inside, f"{selector} at {box} is outside the {width}x{height} window"
            top = page.evaluate(
                f"""(() => {{ const b = document.querySelector('{selector}')
                    .getBoundingClientRect();
                    const el = document.elementFromPoint(b.x + b.width / 2, b.y + b.height / 2);
                    return el === document.querySelector('{selector}') ||
                        el.closest('label') === document.querySelector('{selector}').closest('label'); }})()"""
            )
            assert top, f"{selector} is covered by another element"
        page.click(f'input[name="action-{index}"][value="remove"]', trial=False)
        assert page.is_checked(f'input[name="action-{index}"][value="remove"]')
    assert page.locator("#decision-count").inner_text() == str(min(rows.count(), 5))
    assert problems == []
    page.close()


def test_a_test_point_marked_in_its_panel_becomes_a_test_decision(browser, mnist_run, tmp_path):
    root, db, engine, run_id, data = mnist_run
    problems: list[str] = []
    page = open_page(browser, root / "report.html", problems)
    panel = page.locator(".panel").first
    index = int(panel.get_attribute("data-test-index"))
    test = points.read_points(engine, run_id, "test")
    names = runs.get_run(engine, run_id).class_names
    given = names[int(test[index]["label"])]
    new_label = "1" if given == "7" else "7"
    page.select_option(f'select[name="test-label-{index}"]', new_label)  # selects "relabel"
    assert page.is_checked(f'input[name="test-action-{index}"][value="relabel"]')
    assert page.locator("#decision-count").inner_text() == "1"
    with page.expect_download() as info:
        page.click("#download-decisions")
    path = tmp_path / "d.json"
    info.value.save_as(path)
    assert problems == []
    page.close()
    assert json.loads(path.read_text())["decisions"] == [
        {"index": index, "id": test[index]["point_id"], "action": "relabel", "label": new_label,
         "split": "test"}
    ]  # fmt: skip
