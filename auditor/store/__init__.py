"""Persistence: runs, points and pair scores in any SQLAlchemy database (SQLite default,
PostgreSQL through the psycopg driver).

Open a database with :func:`open_db`; read and write through the functions of
:mod:`auditor.store.runs`, :mod:`auditor.store.points` and :mod:`auditor.store.pairs`.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from auditor.errors import StoreError
from auditor.store import migrate

#: How long a SQLite connection waits for another one's lock before "database is locked".
BUSY_TIMEOUT_S = 60

#: URL schemes without a driver, and the driver auditor uses for them.
DEFAULT_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}


def database_url(db: str) -> str:
    """A SQLAlchemy URL for ``db``: a path becomes ``sqlite:///path`` (escaped, so that a
    ``?`` or ``%`` in it stays part of the file name); ``postgresql://`` (and
    ``postgres://``) get the psycopg 3 driver; any other URL is kept."""
    if "://" not in db:
        url = URL.create("sqlite", database=str(Path(db).expanduser()))
        return url.render_as_string(hide_password=False)
    scheme, rest = db.split("://", 1)
    return f"{DEFAULT_DRIVERS.get(scheme, scheme)}://{rest}"


def display_url(db: str) -> str:
    """``db`` for messages: a URL's password is replaced by ``***``."""
    if "://" not in db:
        return db
    try:
        return make_url(db).render_as_string(hide_password=True)
    except ArgumentError:
        return db


def open_db(db: str, *, create: bool = True) -> Engine:
    """An engine on ``db`` (path or URL) with the schema upgraded to the current head.

    Args:
        db: A file path (SQLite) or any SQLAlchemy URL.
        create: Create a missing SQLite file; with ``False`` a missing file is an error.

    Raises:
        StoreError: missing or unwritable file, unknown schema revision, unreachable server.
    """
    url = database_url(db)
    try:
        path = sqlite_file(url)
        if path is not None:
            _check_sqlite_path(path, create)
        engine = create_engine(url)
    except ArgumentError as exc:
        raise StoreError(f"cannot open database {display_url(db)}: {exc}") from None
    except ModuleNotFoundError as exc:
        hint = " (pip install 'auditor[postgres]')" if url.startswith("postgresql") else ""
        raise StoreError(
            f"cannot open database {display_url(db)}: its driver {exc.name} is not installed{hint}"
        ) from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        migrate.upgrade(engine)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip()
        raise StoreError(f"cannot open database {display_url(db)}: {reason}") from None
    return engine


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite ``url`` names (its query parameters, such as ``?timeout=30``,
    apart); ``None`` for another database, an in-memory one, or a ``uri=true`` URL (whose
    database is itself a ``file:`` URI that SQLite interprets). Raises ``ArgumentError``
    for a malformed URL."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.query.get("uri") == "true":
        return None
    if parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _check_sqlite_path(path: Path, create: bool) -> None:
    """Refuse, with one clear line, a SQLite path that cannot be opened (or written)."""
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as exc:
        raise StoreError(f"cannot open database {path}: {exc.strerror}") from None
    if is_dir:
        raise StoreError(f"database {path} is a directory; give a file path")
    if not exists:
        if not create:
            raise StoreError(f"database {path} does not exist")
        if not path.parent.exists():
            raise StoreError(f"cannot create database {path}: {path.parent} does not exist")
        if not path.parent.is_dir():
            raise StoreError(f"cannot create database {path}: {path.parent} is not a directory")
        if not os.access(path.parent, os.W_OK):
            raise StoreError(f"cannot create database {path}: directory is not writable")
    elif create and not os.access(path, os.W_OK):
        raise StoreError(f"database {path} is not writable")


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    _switch_to_wal(cursor)
    cursor.close()


def _switch_to_wal(cursor) -> None:
    """``PRAGMA journal_mode=WAL``, retried for up to the busy timeout while another
    connection holds a write lock.

    On a database already in WAL mode the pragma only reads. Switching a new file writes its
    header, and SQLite then reports SQLITE_BUSY at once instead of waiting the busy timeout
    (the pragma's read transaction would have to become a write one, which never waits).
    Two processes opening one new file at once meet here: the one that finds the other's
    lock retries until the other's switch is committed (then its own pragma only reads).
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    pause = 0.001
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 0.05)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """Whether an sqlite3 error is SQLITE_BUSY ("database is locked", or an extended code of
    it); Python 3.11's sqlite3 sets ``sqlite_errorcode`` on every error it raises."""
    return exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
