"""Helpers shared by every CLI command: error mapping, the --db option, run lookup."""

from __future__ import annotations

import functools
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, OperationalError

from auditor.errors import AuditorError, ConfigError, DataError, Interrupted
from auditor.pipeline import distributed
from auditor.pipeline.interrupts import ignore_signals_until_exit
from auditor.store import database_url, display_url, open_db, runs, sqlite_file

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn library errors into one clean line and the right exit status. Under torchrun
    only rank 0 prints it (a failure on another rank reaches rank 0 as "rank k stopped");
    the other ranks exit with the same status, silently."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return _mapped(func, *args, **kwargs)
        except click.ClickException as error:
            if distributed.active() and distributed.rank() != 0:
                sys.exit(error.exit_code)
            raise

    return wrapper


def _mapped(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``func(*args, **kwargs)`` with library errors as :class:`click.ClickException`."""
    try:
        return func(*args, **kwargs)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except AuditorError as exc:  # an Interrupted scan already ignores further signals
        error = click.ClickException(str(exc))
        error.exit_code = exc.exit_code  # type: ignore[misc]  # a ClassVar in click's types; click reads it per instance
        raise error from None
    except OperationalError as exc:  # disk full, read-only file system, lock timeout
        raise click.ClickException(f"database error: {exc.orig or exc}") from None
    except OSError as exc:  # an output path that cannot be written
        where = f"{exc.filename}: " if exc.filename else ""
        raise click.ClickException(f"{where}{exc.strerror or exc}") from None
    except KeyboardInterrupt:
        ignore_signals_until_exit()
        error = click.ClickException("interrupted")
        error.exit_code = Interrupted.exit_code  # type: ignore[misc]  # a ClassVar in click's types; click reads it per instance
        raise error from None


def db_option(func: F) -> F:
    return click.option(
        "--db",
        default="audit.db",
        show_default=True,
        help="SQLite file or any SQLAlchemy URL.",
    )(func)


def open_existing(db: str) -> Engine:
    """Open a database that must already exist (read commands)."""
    return dispose_on_close(open_db(db, create=False))


def dispose_on_close(engine: Engine) -> Engine:
    """Close ``engine``'s pooled connections when the running command ends (a server
    database otherwise keeps them open until they are garbage-collected)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(engine.dispose)
    return engine


def resume_command(run_id: int, db: str) -> str:
    """The command that finishes ``run_id`` of database ``db`` (password hidden)."""
    return shlex.join(["auditor", "scan", "--resume", str(run_id), "--db", display_url(db)])


def resolve_run(engine: Engine, run: int | None, db: str) -> int:
    """The id of ``run`` (default the latest) in database ``db``, which must have finished."""
    run_id = runs.latest_run_id(engine) if run is None else run
    row = runs.get_run(engine, run_id)
    if row.status != "complete":
        runs.refuse_live_writer(row, "wait for it to finish")
        raise DataError(
            f"run {run_id} is {row.status} (stopped in phase {row.phase}), not complete; "
            f"finish it with `{resume_command(run_id, db)}`"
        )
    return run_id


def is_database_file(path: str, db: str) -> bool:
    """Whether ``path`` names the SQLite file of ``db`` (a path or SQLite URL)."""
    try:
        database = sqlite_file(database_url(db))
    except ArgumentError:  # a malformed URL: open_db says so
        return False
    return database is not None and Path(path).resolve() == database.resolve()
