"""The store: Alembic builds exactly the tables the code declares, runs round-trip."""

import sqlite3
import threading
import time
from contextlib import closing

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner

from auditor.cli import cli
from auditor.config import DataArgs
from auditor.errors import RunNotFound, StoreError
from auditor.store import migrate, open_db, pairs, points, runs
from auditor.store.schema import metadata
from tests.helpers import run_scan


def test_migrations_build_the_declared_schema(tmp_path):
    engine = open_db(str(tmp_path / "a.db"))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    assert migrate.current_revision(engine) == migrate.head_revision()


def test_pair_table_has_no_rowid(tmp_path):
    engine = open_db(str(tmp_path / "a.db"))
    with engine.connect() as conn:
        sql = conn.execute(
            sa.text("select sql from sqlite_master where name='pair_scores'")
        ).scalar()
    assert "WITHOUT ROWID" in sql


def test_a_scan_stores_every_pair_and_reads_them_back(tmp_path):
    engine, result = run_scan(tmp_path / "a.db", DataArgs(train="toy-linear"))
    run = runs.get_run(engine, result.run_id).as_dict()
    assert run["status"] == "complete"
    assert pairs.count_pairs(engine, result.run_id) == run["n_train"] * run["n_test"] == 20
    scores = pairs.read_pair_scores(engine, result.run_id)
    train = points.read_points(engine, result.run_id, "train")
    # harmfulness is the sum of the stored pair scores over test points
    np.testing.assert_allclose([p["harmfulness"] for p in train], scores.sum(axis=0), rtol=1e-5)
    assert sorted(p["rank"] for p in train) == list(range(1, 21))
    assert all(p["self_influence"] <= 0 for p in train)


def test_run_records_configuration_fingerprint_metrics_and_timings(tmp_path):
    engine, a = run_scan(tmp_path / "a.db", DataArgs(train="toy-linear"))
    _, b = run_scan(tmp_path / "a.db", DataArgs(train="toy-linear"))
    ra, rb = runs.get_run(engine, a.run_id).as_dict(), runs.get_run(engine, b.run_id).as_dict()
    assert ra["data_fingerprint"] == rb["data_fingerprint"]
    assert ra["config"]["data"]["train"] == "toy-linear"
    assert ra["metrics"]["grad_norm"] < 1e-3
    assert set(ra["timings"]) == {
        "load",
        "fit",
        "gradients",
        "ihvp",
        "pair_scores",
        "storage",
        "ranking",
    }
    assert ra["solver"]["converged"]


def test_unknown_run_and_empty_database(tmp_path):
    engine = open_db(str(tmp_path / "a.db"))
    with pytest.raises(RunNotFound):
        runs.get_run(engine, 7).as_dict()
    with pytest.raises(RunNotFound):
        runs.latest_run_id(engine)


def test_a_newer_schema_is_refused(tmp_path):
    engine = open_db(str(tmp_path / "a.db"))
    with engine.begin() as conn:
        conn.execute(sa.text("update alembic_version set version_num = 'ffff9999'"))
    with pytest.raises(StoreError, match="newer than this auditor"):
        open_db(str(tmp_path / "a.db"))


def _locked_new_file(path):
    """A new SQLite file whose write lock another connection holds, as a process opening
    it first holds it while it switches the file to WAL (a rollback journal's RESERVED lock)."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_a_new_file_another_process_is_switching_to_wal_is_waited_for(tmp_path):
    """Two processes opening one new database at once: the one that finds the other's write
    lock from the switch to WAL waits for it (PRAGMA journal_mode=WAL fails at once with
    "database is locked", without the busy timeout) and then finds the schema to create."""
    db = tmp_path / "new.db"
    holder = _locked_new_file(db)
    release = threading.Timer(0.5, holder.execute, ["ROLLBACK"])
    release.start()
    start = time.monotonic()
    try:
        engine = open_db(str(db))
    finally:
        release.join()
        holder.close()
    assert time.monotonic() - start >= 0.4  # it waited for the lock instead of failing
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert migrate.current_revision(engine) == migrate.head_revision()
    run = dict(dataset="d", task="regression", model="linear", n_train=1, n_test=1)
    assert runs.create_run(engine, config={}, data_fingerprint="f", **run) == 1


def test_a_lock_held_past_the_busy_timeout_is_still_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr("auditor.store.BUSY_TIMEOUT_S", 0.3)
    db = tmp_path / "new.db"
    with closing(_locked_new_file(db)):
        start = time.monotonic()
        with pytest.raises(StoreError, match="database is locked"):
            open_db(str(db))
    assert 0.2 < time.monotonic() - start < 5


def test_non_finite_scores_are_never_stored(tmp_path):
    engine, result = run_scan(tmp_path / "a.db", DataArgs(train="toy-linear"))
    with engine.begin() as conn, pytest.raises(StoreError):
        pairs.write_pair_scores(conn, result.run_id, 5, np.array([[np.nan, 1.0]]))


def test_streamed_reads_match_the_whole_matrix(tmp_path):
    """Blocks, test rows and train columns read as a stream equal slices of the matrix."""
    engine = open_db(str(tmp_path / "a.db"))
    run_id = runs.create_run(
        engine,
        config={},
        dataset="x",
        task="classification",
        model="logistic",
        n_train=7,
        n_test=600,
        n_params=1,
        data_fingerprint="-",
    )
    expected = np.random.default_rng(0).standard_normal((600, 7)).astype(np.float32)
    for j0 in range(0, 600, 256):  # stored in blocks as a scan does
        with engine.begin() as conn:
            pairs.write_pair_scores(conn, run_id, j0, expected[j0 : j0 + 256])
    blocks = list(pairs.iter_pair_blocks(engine, run_id, rows=100))
    assert [j0 for j0, _ in blocks] == list(range(0, 600, 100))
    assert all(b.shape == (100, 7) for _, b in blocks)
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), expected)
    np.testing.assert_array_equal(pairs.read_pair_scores(engine, run_id), expected)
    np.testing.assert_array_equal(pairs.read_train_scores(engine, run_id, 3), expected[:, 3])
    rows, columns = pairs.read_slices(engine, run_id, [0, 299, 599], [6, 0])
    assert sorted(rows) == [0, 299, 599]
    for j, row in rows.items():
        np.testing.assert_array_equal(row, expected[j])
    np.testing.assert_array_equal(columns, expected[:, [6, 0]])


@pytest.mark.parametrize("name", ["a?b.db", "e%41f.db", "c#d.db", "g h.db"])
def test_db_paths_with_url_characters_are_exactly_those_files(tmp_path, name):
    """``?`` once cut the path into a query string and ``%41`` was decoded to ``A``: the
    scan wrote another file than ``--db`` named, and read commands looked there too."""
    db = tmp_path / name
    scanned = CliRunner().invoke(cli, ["scan", "--train", "toy-linear", "--db", str(db)])
    assert scanned.exit_code == 0, scanned.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == [name]
    listed = CliRunner().invoke(cli, ["runs", "--db", str(db)])
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines()[1].split()[:2] == ["1", "complete"]
    with closing(sqlite3.connect(db)) as conn:  # the file itself holds the run
        assert conn.execute("select status from runs").fetchall() == [("complete",)]


def test_read_commands_take_sqlite_urls_with_query_parameters(tmp_path):
    db = tmp_path / "t.db"
    assert (
        CliRunner().invoke(cli, ["scan", "--train", "toy-linear", "--db", str(db)]).exit_code == 0
    )
    for url in (f"sqlite:///{db}?timeout=30", f"sqlite:///file:{db}?mode=ro&uri=true"):
        listed = CliRunner().invoke(cli, ["runs", "--db", url])
        assert listed.exit_code == 0, listed.output
        assert listed.output.splitlines()[1].split()[:2] == ["1", "complete"]
    missing = CliRunner().invoke(cli, ["runs", "--db", f"sqlite:///{tmp_path / 'no.db'}?timeout=3"])
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    assert f"Error: database {tmp_path / 'no.db'} does not exist" in missing.output
    assert not (tmp_path / "no.db").exists()
