"""Errors nobody planned for (issue 18).

Data too large for the fit is refused with the scale found; a NaN risk or a broken line
search inside the fit is a clear error; and any other exception that escapes a reader or
the fit (a bug) is one ``Error:`` line naming a crash log that holds the traceback, exit
status 70, with the run marked failed. Every case goes through the real command line
(CliRunner) and reads the run back from the database.
"""

from __future__ import annotations

import math
import re
import sqlite3
import sys
import tempfile
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from auditor import sources
from auditor.cli import cli
from auditor.cli.common import INTERNAL_ERROR_EXIT, write_crash_log
from auditor.errors import DataError, SolverError
from auditor.models import build_model
from auditor.models import fit as fit_module
from auditor.models.fit import check_scale, data_scale, fit
from auditor.pipeline import scan as scan_module
from auditor.store import open_db, runs
from tests.helpers import error_lines, one_error, separable_csv, write_csv

LOG_LINE = re.compile(r"the traceback is in (\S+); please report it$")


@pytest.fixture
def log_dir(tmp_path, monkeypatch) -> Path:
    """``$AUDITOR_LOG_DIR`` for the test: a folder that does not exist yet."""
    folder = tmp_path / "logs"
    monkeypatch.setenv("AUDITOR_LOG_DIR", str(folder))
    return folder


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def crash_log(result, *needles: str) -> Path:
    """The crash log a command that failed with an internal error names: exit status 70,
    one ``Error:`` line (holding ``needles``) and no traceback on the terminal."""
    assert result.exit_code == INTERNAL_ERROR_EXIT, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    line = one_error(result.output, "internal error (a bug in auditor)", *needles)
    found = LOG_LINE.search(line)
    assert found is not None, line
    return Path(found.group(1))


def run_rows(db: Path) -> list[tuple[str, str, str | None]]:
    """``(status, phase, error)`` of every run of ``db`` (none if it holds no run table)."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master")}
        if "runs" not in tables:
            return []
        return conn.execute("select status, phase, error from runs order by id").fetchall()


def huge_csv(path: Path, n: int = 40) -> str:
    """Two classes of 2-D points with features between 1e30 and 3e38: finite in float32,
    but their squares overflow it."""
    rng = np.random.default_rng(0)
    a, b = rng.uniform(1e30, 3e38, size=(2, n)).tolist()
    return write_csv(path, {"a": a, "b": b, "label": ["ab"[k % 2] for k in range(n)]})


# --- the last line of defence ------------------------------------------------------------


def test_a_reader_that_crashes_is_one_error_line_and_a_crash_log(tmp_path, log_dir, monkeypatch):
    def broken_read(path, options):
        raise RuntimeError("reader exploded\nsecond line of the message")

    formats = tuple(replace(f, read=broken_read) if f.name == "csv" else f for f in sources.FORMATS)
    monkeypatch.setattr(sources, "FORMATS", formats)
    db = tmp_path / "audit.db"
    args = ["scan", "--train", separable_csv(tmp_path / "d.csv"), "--test-split", "0.25"]
    # the log records the process's command line (CliRunner leaves pytest's in sys.argv)
    monkeypatch.setattr(sys, "argv", ["auditor", *args])
    result = invoke(*args, "--db", str(db))
    log = crash_log(result, "RuntimeError: reader exploded")
    assert "second line" not in error_lines(result.output)[0]  # the first line of it only
    assert log.parent == log_dir and log.name.startswith("auditor-crash-")
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in broken_read" in text
    assert "second line of the message" in text and "command: auditor scan --train " in text
    assert not db.exists() or run_rows(db) == []  # it stopped before the run was written


def test_a_fit_that_crashes_marks_the_run_failed_with_the_error(tmp_path, log_dir, monkeypatch):
    def broken_fit(*args, **kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setattr(scan_module, "fit", broken_fit)
    db = tmp_path / "audit.db"
    result = invoke("scan", "--train", separable_csv(tmp_path / "d.csv"), "--test-split",
                    "0.25", "--db", str(db))  # fmt: skip
    log = crash_log(result, "IndexError: list index out of range")
    assert "in broken_fit" in log.read_text()
    [(status, phase, error)] = run_rows(db)
    assert (status, phase) == ("failed", "fit")
    assert error == "internal error (a bug in auditor): IndexError: list index out of range"
    listing = invoke("runs", "--db", str(db))
    assert listing.exit_code == 0 and "failed" in listing.output
    result = invoke(
        "show", "--test-index", "0", "--db", str(db)
    )  # a failed run is no result to read
    assert result.exit_code == 1 and "not complete" in one_error(result.output)


def test_the_crash_log_goes_to_the_temporary_folder_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("AUDITOR_LOG_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # what gettempdir() returns

    def broken_fit(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(scan_module, "fit", broken_fit)
    result = invoke("scan", "--train", separable_csv(tmp_path / "d.csv"), "--test-split",
                    "0.25", "--db", str(tmp_path / "a.db"))  # fmt: skip
    log = crash_log(result, "RuntimeError: boom")
    assert log.parent == tmp_path and log.is_file()


def test_an_unwritable_log_folder_still_gives_one_line(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("AUDITOR_LOG_DIR", str(not_a_folder))

    def broken_fit(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(scan_module, "fit", broken_fit)
    result = invoke("scan", "--train", separable_csv(tmp_path / "d.csv"), "--test-split",
                    "0.25", "--db", str(tmp_path / "a.db"))  # fmt: skip
    assert result.exit_code == INTERNAL_ERROR_EXIT
    one_error(result.output, "RuntimeError: boom", "could not be written", "AUDITOR_LOG_DIR")


def test_the_crash_log_hides_database_passwords(tmp_path, log_dir, monkeypatch):
    url = "postgresql://auditor:s3cret@db.example/audits"
    monkeypatch.setattr(sys, "argv", ["auditor", "runs", "--db", url, f"--db={url}"])
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        text = write_crash_log(exc).read_text()
    assert "s3cret" not in text and text.count("auditor:***@db.example") == 2


# --- the fit refuses data it cannot fit --------------------------------------------------


def test_features_too_large_for_a_float32_fit_are_refused_with_their_scale(tmp_path):
    db = tmp_path / "audit.db"
    data = huge_csv(tmp_path / "huge.csv")
    result = invoke("scan", "--train", data, "--test-split", "0.5", "--db", str(db))
    assert result.exit_code == 1, result.output
    line = one_error(result.output, "the fit overflowed float32", "largest row norm",
                     "--normalize standard", "--dtype float64")  # fmt: skip
    assert re.search(r"the features reach a scale of \d\.\d+e\+38", line), line
    assert re.search(r"beyond the \d\.\d+e\+18 .* of 20 points", line), line
    [(status, phase, error)] = run_rows(db)
    assert (status, phase) == ("failed", "fit") and error in line


def test_the_suggested_normalize_standard_fits_the_same_data(tmp_path):
    db = tmp_path / "audit.db"
    data = huge_csv(tmp_path / "huge.csv")
    args = ["--train", data, "--test-split", "0.5", "--solver", "exact", "--db", str(db)]
    result = invoke("scan", *args, "--normalize", "standard")
    assert result.exit_code == 0, result.output
    assert run_rows(db)[0][0] == "complete"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("mlp", ("the fit failed: L-BFGS's line search broke down", "IndexError")),
        ("logistic", ("the fit reached a non-finite risk (nan) after 0 iterations",)),
    ],
)
def test_a_nan_risk_inside_the_line_search_fails_the_run_cleanly(
    tmp_path, monkeypatch, model, message
):
    """L-BFGS (the MLP) breaks down on it; Newton-CG (logistic) finds no step and ends on
    a risk that is not finite. Either way: one line, a failed run."""
    real_risk = fit_module.risk
    calls = []

    def nan_after_the_first(model, theta, x, y, weight_decay):
        calls.append(1)
        return real_risk(model, theta, x, y, weight_decay) + (math.nan if len(calls) > 1 else 0)

    monkeypatch.setattr(fit_module, "risk", nan_after_the_first)
    db = tmp_path / "audit.db"
    result = invoke("scan", "--train", separable_csv(tmp_path / "d.csv"), "--test-split",
                    "0.25", "--model", model, "--db", str(db))  # fmt: skip
    assert result.exit_code == 1, result.output
    line = one_error(result.output, *message, "features of scale", "--dtype float64")
    [(status, phase, error)] = run_rows(db)
    assert (status, phase) == ("failed", "fit") and error in line


def _classification(n: int = 40, scale: float = 1.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(n, 2, generator=gen, dtype=torch.float64) * scale).to(dtype)
    return x, torch.arange(n) % 2


def test_the_scale_rule_follows_the_dtype_and_the_number_of_points():
    x, y = _classification()
    n, biggest = x.shape[0], torch.finfo(torch.float32).max
    bound = math.sqrt(biggest / n) / 2
    norms = np.linalg.norm(x.double().numpy(), axis=1)
    row = int(norms.argmax())
    assert data_scale(x, y) == (pytest.approx(math.hypot(norms[row], 1.0), rel=1e-12), "features")
    at = x.clone()
    at[row] *= 0.999 * bound / norms[row]  # a row norm just inside the bound
    check_scale(at, y)
    beyond = x.clone()
    beyond[row] *= 1.001 * bound / norms[row]
    with pytest.raises(DataError, match=r"scale of .* beyond the .* fit of 40 points") as info:
        check_scale(beyond, y)
    assert "--dtype float64" in str(info.value)
    check_scale(beyond.double(), y)  # float64 takes any float32 data
    check_scale(beyond[:1], y[:1])  # one point sums one row: within the bound of n = 1


def test_the_targets_of_a_regression_count_towards_the_scale():
    x, _ = _classification()
    y = torch.ones(x.shape[0]) * 1e19
    assert data_scale(x, y) == (pytest.approx(1e19, rel=1e-6), "targets")
    with pytest.raises(DataError, match=r"the targets reach a scale of 1e\+19"):
        check_scale(x, y)
    check_scale(x, torch.arange(x.shape[0]))  # class labels are no scale
    with pytest.raises(DataError, match="the fit overflowed float32"):
        fit(build_model("linear", "regression", 2, None), x, y, 0.01)  # refused up front


def test_a_line_search_failure_is_a_solver_error_and_a_model_error_stays(monkeypatch):
    x, y = _classification()
    model = build_model("mlp", "classification", 2, 2, hidden=4)  # fitted by L-BFGS
    real_risk = fit_module.risk
    calls = []

    def nan_after_the_first(model, theta, x, y, weight_decay):
        calls.append(1)
        return real_risk(model, theta, x, y, weight_decay) + (math.nan if len(calls) > 1 else 0)

    monkeypatch.setattr(fit_module, "risk", nan_after_the_first)
    with pytest.raises(SolverError, match=r"line search broke down \(IndexError"):
        fit(model, x, y, 0.01)

    def broken_model(model, theta, x, y, weight_decay):
        raise ValueError("a bug in the model")

    monkeypatch.setattr(fit_module, "risk", broken_model)
    with pytest.raises(ValueError, match="a bug in the model"):
        fit(model, x, y, 0.01)


def test_a_non_finite_risk_at_the_end_of_the_fit_is_a_solver_error(monkeypatch):
    x, y = _classification()
    real_risk = fit_module.risk
    model = build_model("logistic", "classification", 2, 2)
    result = fit(model, x, y, 0.01)
    assert math.isfinite(result.risk) and result.converged

    def nan_risk(model, theta, x, y, weight_decay):
        return real_risk(model, theta, x, y, weight_decay) * math.nan

    monkeypatch.setattr(fit_module, "risk", nan_risk)
    with pytest.raises(SolverError, match=r"non-finite (risk|gradient) \(nan\) after 0 iterations"):
        fit(model, x, y, 0.01, max_iter=0)  # measured only (a model used as trained)


def test_an_existing_run_still_reads_after_an_internal_error(tmp_path, log_dir, monkeypatch):
    """A crash in one scan leaves the runs before it as they were."""
    db = tmp_path / "audit.db"
    data = separable_csv(tmp_path / "d.csv")
    assert invoke("scan", "--train", data, "--test-split", "0.25", "--db", str(db)).exit_code == 0

    def broken_fit(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(scan_module, "fit", broken_fit)
    crash_log(invoke("scan", "--train", data, "--test-split", "0.25", "--db", str(db)))
    engine = open_db(str(db), create=False)
    try:
        assert [runs.get_run(engine, i).status for i in (1, 2)] == ["complete", "failed"]
    finally:
        engine.dispose()
    assert invoke("show", "1", "--test-index", "0", "--db", str(db)).exit_code == 0
