"""A run's writer: a scan killed outright leaves its run ``running``; the recorded owner
(host, pid, process start) tells a dead writer (``stale``) from a live one, which
``scan --resume`` must not race."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from auditor.cli import cli
from auditor.store import open_db, runs


@pytest.fixture
def toy_run(tmp_path):
    db = str(tmp_path / "a.db")
    result = CliRunner().invoke(cli, ["scan", "--train", "toy-linear", "--db", db])
    assert result.exit_code == 0, result.output
    engine = open_db(db)
    yield db, engine
    engine.dispose()


#: The commands that read a complete run 1 (``compare`` against itself), given a folder.
READERS = [
    lambda tmp: ["show", "1", "--test-index", "0"],
    lambda tmp: ["export", "1", "--out", str(tmp / "x.json")],
    lambda tmp: ["report", "1", "--out", str(tmp / "r.html")],
    lambda tmp: ["apply", "1", str(tmp / "decisions.json"), "--out", str(tmp / "clean")],
    lambda tmp: ["compare", "1", "1"],
]


def owned_by(engine, pid: int, start: str | None = None) -> None:
    """Make run 1 look like a scan in process ``pid`` is writing it."""
    owner = runs.current_owner() | {"owner_pid": pid}
    if start is not None:
        owner["owner_start"] = start
    runs.update_run(engine, 1, status="running", phase="pair_scores", **owner)


def test_a_finished_scan_records_its_process(toy_run):
    _, engine = toy_run
    run = runs.get_run(engine, 1).as_dict()
    assert run["owner_pid"] == os.getpid() and run["owner_host"]
    assert run["heartbeat_at"] >= run["created_at"] and run["finished_at"] == run["heartbeat_at"]
    assert runs.writer_state(runs.get_run(engine, 1)) == ""  # complete: nothing to check


def test_a_run_whose_writer_died_is_listed_stale_and_resumes(toy_run, tmp_path):
    db, engine = toy_run
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owned_by(engine, dead.pid)
    assert runs.writer_state(runs.get_run(engine, 1)) == "gone"
    listing = CliRunner().invoke(cli, ["runs", "--db", db])
    assert listing.exit_code == 0
    assert listing.output.splitlines()[1].split()[:2] == ["1", "stale"]
    assert f"process {dead.pid}" in listing.output and "scan --resume 1" in listing.output
    (tmp_path / "decisions.json").write_text("{}")
    for command in READERS:  # every reader of a complete run says how to finish it
        refused = CliRunner().invoke(cli, [*command(tmp_path), "--db", db])
        assert refused.exit_code == 1 and f"scan --resume 1 --db {db}" in refused.output
    resumed = CliRunner().invoke(cli, ["scan", "--resume", "1", "--db", db])
    assert resumed.exit_code == 0, resumed.output
    run = runs.get_run(engine, 1).as_dict()
    assert run["status"] == "complete" and run["owner_pid"] == os.getpid()


def test_resume_refuses_a_run_that_a_live_scan_is_writing(toy_run, tmp_path):
    db, engine = toy_run
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owned_by(engine, writer.pid, runs._process_start(writer.pid))
        assert runs.writer_state(runs.get_run(engine, 1)) == "alive"
        resumed = CliRunner().invoke(cli, ["scan", "--resume", "1", "--db", db])
        assert resumed.exit_code == 1
        assert f"still being written by process {writer.pid}" in resumed.output
        assert "Traceback" not in resumed.output
        (tmp_path / "decisions.json").write_text("{}")
        for command in READERS:
            refused = CliRunner().invoke(cli, [*command(tmp_path), "--db", db])
            assert refused.exit_code == 1, refused.output
            assert f"still being written by process {writer.pid}" in refused.output
        listing = CliRunner().invoke(cli, ["runs", "--db", db])
        assert listing.output.splitlines()[1].split()[:2] == ["1", "running"]
        assert runs.get_run(engine, 1).as_dict()["status"] == "running"  # the refusal wrote nothing
    finally:
        writer.kill()
        writer.wait()
    assert runs.writer_state(runs.get_run(engine, 1)) == "gone"


def test_a_reused_pid_is_not_taken_for_the_writer(toy_run):
    _, engine = toy_run
    # this process is alive, but did not start when the recorded writer did
    owned_by(engine, os.getpid(), start="1")
    assert runs.writer_state(runs.get_run(engine, 1)) == "gone"


def test_a_run_from_another_host_or_before_owners_is_unknown(toy_run):
    _, engine = toy_run
    runs.update_run(engine, 1, status="running", owner_host="elsewhere")
    assert runs.writer_state(runs.get_run(engine, 1)) == "unknown"
    runs.update_run(engine, 1, owner_host=None, owner_pid=None)
    assert runs.writer_state(runs.get_run(engine, 1)) == "unknown"
