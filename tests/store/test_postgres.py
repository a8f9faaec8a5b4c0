"""PostgreSQL: every command against a real server (tests/pg.py), the same results as SQLite."""

import json
import shlex
import threading
import time

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from bs4 import BeautifulSoup
from click.testing import CliRunner

from auditor.cli import cli
from auditor.store import database_url, display_url, migrate, open_db, runs
from auditor.store.evaluations import read_evaluation
from auditor.store.schema import metadata
from tests.helpers import assert_same_run, run_state, write_remove_decisions


def test_postgresql_urls_get_the_psycopg_driver_and_paths_stay_sqlite(tmp_path):
    assert database_url("postgresql://me@db.example/audit") == (
        "postgresql+psycopg://me@db.example/audit"
    )
    assert database_url("postgres://me@h/a") == "postgresql+psycopg://me@h/a"
    assert database_url("postgresql+psycopg2://me@h/a") == "postgresql+psycopg2://me@h/a"
    assert database_url(str(tmp_path / "a.db")) == f"sqlite:///{tmp_path / 'a.db'}"
    assert display_url("postgresql://me:s3cret@h:5432/a") == "postgresql://me:***@h:5432/a"
    assert display_url("audit.db") == "audit.db"


def test_an_unreachable_server_is_one_line_without_the_password():
    pytest.importorskip("psycopg")
    result = CliRunner().invoke(cli, ["runs", "--db", "postgresql://me:s3cret@127.0.0.1:1/x"])
    assert result.exit_code == 1
    assert "cannot open database postgresql://me:***@127.0.0.1:1/x" in result.output
    assert "s3cret" not in result.output and "Traceback" not in result.output


def test_migrations_build_the_declared_schema_on_postgresql(pg_url):
    engine = open_db(pg_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
        blob_type = conn.execute(
            sa.text(
                "select data_type from information_schema.columns "
                "where table_name = 'pair_scores' and column_name = 'scores'"
            )
        ).scalar()
    assert diff == []
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert blob_type == "bytea"
    open_db(pg_url).dispose()  # a second open finds the schema at head
    engine.dispose()


def test_two_openers_of_one_new_postgresql_database_create_its_schema_once(pg_url, monkeypatch):
    """The second opener of a new database waits for the first one's upgrade to commit and
    then finds the schema at head (it created the tables too, and failed on a duplicate
    ``alembic_version`` type, before upgrades took an advisory lock)."""
    created, go, errors = threading.Event(), threading.Event(), []
    real_upgrade = migrate.command.upgrade

    def upgrade_then_pause(config, revision):  # the first opener, before its commit
        real_upgrade(config, revision)
        if threading.current_thread().name == "first":
            created.set()
            go.wait(60)

    def opener():
        try:
            open_db(pg_url).dispose()
        except Exception as exc:
            errors.append(exc)

    monkeypatch.setattr(migrate.command, "upgrade", upgrade_then_pause)
    first = threading.Thread(target=opener, name="first")
    second = threading.Thread(target=opener, name="second")
    first.start()
    try:
        assert created.wait(60)
        second.start()
        waiting = sa.text(
            "select count(*) from pg_stat_activity "
            "where datname = current_database() and wait_event_type = 'Lock'"
        )
        watcher = sa.create_engine(database_url(pg_url))
        deadline = time.monotonic() + 60
        with watcher.connect() as conn:  # until the second opener waits on a lock
            while not conn.execute(waiting).scalar() and time.monotonic() < deadline:
                conn.rollback()
                time.sleep(0.05)
        watcher.dispose()
    finally:
        go.set()
        first.join(60)
        if second.ident is not None:
            second.join(60)
    assert errors == []
    engine = open_db(pg_url)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.slow
def test_mnist_scan_in_postgresql_equals_sqlite_and_every_read_command_agrees(
    tmp_path, mnist_dir, pg_url
):
    sqlite = str(tmp_path / "audit.db")
    scan = ["scan", "--train", str(mnist_dir), "--classes", "1,7", "--test-split", "0.2"]
    scan += ["--solver", "exact"]
    assert invoke(*scan, "--db", sqlite).strip() == "1"
    assert invoke(*scan, "--db", pg_url).strip() == "1"
    assert_same_run(run_state(pg_url, 1), run_state(sqlite, 1))

    listing = invoke("runs", "--db", pg_url).splitlines()
    assert listing[1].split()[:2] == ["1", "complete"] and "749,090" in listing[1]
    for args in (
        ["show", "1", "--test-index", "5", "--top", "7"],
        ["show", "--train-index", "11"],
        ["export", "--format", "csv"],
    ):
        assert invoke(*args, "--db", pg_url) == invoke(*args, "--db", sqlite), args
    exported = json.loads(invoke("export", "1", "--db", pg_url))
    assert exported["train"] == json.loads(invoke("export", "1", "--db", sqlite))["train"]
    assert exported["run"]["status"] == "complete"

    out = tmp_path / "report.html"
    invoke("report", "1", "--out", str(out), "--db", pg_url)
    soup = BeautifulSoup(out.read_text(encoding="utf-8"), "html.parser")
    data = json.loads(soup.select_one("script#run-data").string)
    assert data  # the report's data block was read back from PostgreSQL
    assert len(soup.select("img")) > 0


def test_cleaning_loop_on_postgresql(tmp_path, pg_url):
    invoke("scan", "--train", "toy-linear", "--db", pg_url)
    engine = open_db(pg_url, create=False)
    flagged = write_remove_decisions(engine, 1, tmp_path / "d.json")
    out = invoke(
        "apply", "1", str(tmp_path / "d.json"), "--out", str(tmp_path / "c"), "--db", pg_url
    )
    rescan = shlex.split(out.strip().splitlines()[-1])
    assert rescan[-2:] == ["--db", pg_url]
    assert invoke(*rescan[1:]).strip() == "2"
    assert runs.get_run(engine, 2).as_dict()["n_train"] == 20 - len(flagged)
    compared = invoke("compare", "1", "2", "--db", pg_url)
    assert "test loss" in compared
    engine.dispose()


def test_an_evaluation_without_some_metrics_is_stored_in_postgresql(pg_url):
    """Regression outliers have no accuracy (NaN in memory): PostgreSQL's json refuses the
    NaN token, so such metrics are stored as null, and the evaluation is kept."""
    out = invoke(
        "evaluate", "--train", "toy-linear", "--solver", "exact", "--faults", "outlier",
        "--rate", "0.1", "--seeds", "0", "--db", pg_url,
    )  # fmt: skip
    assert "combined" in out
    engine = open_db(pg_url, create=False)
    evaluation, rows = read_evaluation(engine, 1)
    assert evaluation["seeds"] == [0] and len(rows) == 5
    fixed = [r["fix"][0] for r in rows if r["fix"]]
    assert fixed and all(f["test_accuracy"] is None for f in fixed)
    engine.dispose()
