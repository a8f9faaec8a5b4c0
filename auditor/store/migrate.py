"""Bring a database to the current schema through Alembic, refusing unknown revisions."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from auditor.errors import StoreError
from auditor.resources import resource_dir

#: The PostgreSQL advisory lock (per database) an upgrade holds: "auditor" in ASCII.
UPGRADE_LOCK_KEY = int.from_bytes(b"auditor", "big")


def alembic_config() -> Config:
    """An Alembic config pointing at the shipped ``migrations/``."""
    config = Config()
    config.set_main_option("script_location", str(resource_dir("migrations")))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None  # the shipped migrations/ has revisions
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision``; raise :class:`StoreError` if it is at a revision
    this version of auditor does not know (written by a newer auditor).

    The upgrade re-checks and runs in one transaction that holds the database's write lock
    (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-scoped advisory lock), so two
    processes opening a new database at once do not both create the tables: the second
    waits (SQLite's busy timeout; PostgreSQL without limit) and then finds the schema at
    head. A database already at head is only read.
    """
    script = ScriptDirectory.from_config(alembic_config())
    with engine.connect() as conn:
        if _up_to_date(conn, script, revision):
            return
    with engine.connect() as conn:
        _lock_for_upgrade(conn)
        if _up_to_date(conn, script, revision):
            conn.rollback()
            return
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
        conn.commit()


def _lock_for_upgrade(conn: Connection) -> None:
    """Begin ``conn``'s transaction holding the lock that serialises upgrades (until it
    ends). Another database gets none: its upgrades must not run at once."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_LOCK_KEY})


def _up_to_date(conn, script: ScriptDirectory, revision: str) -> bool:
    """Whether ``conn``'s database is at head (for ``revision="head"``); refuse unknown ones."""
    current = MigrationContext.configure(conn).get_current_revision()
    if current is None:
        return False
    try:
        script.get_revision(current)
    except Exception:
        raise StoreError(
            f"the database schema is at revision {current}, newer than this auditor "
            f"knows (head {script.get_current_head()}); upgrade auditor to read it"
        ) from None
    return current == script.get_current_head() and revision == "head"
