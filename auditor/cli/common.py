"""Helpers shared by every CLI command: error mapping, the --db option, run lookup."""

from __future__ import annotations

import functools
import os
import platform
import shlex
import sys
import tempfile
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, OperationalError

from auditor import __version__
from auditor.errors import AuditorError, ConfigError, DataError, Interrupted
from auditor.pipeline import job
from auditor.pipeline.interrupts import ignore_signals_until_exit
from auditor.store import database_url, display_url, open_db, runs, sqlite_file

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

#: Exit status of an internal error (a bug in auditor): EX_SOFTWARE of sysexits(3), so
#: that a script tells a bug from bad input (1), a usage error (2) and an interrupt (130).
INTERNAL_ERROR_EXIT = 70
#: The environment variable naming the folder of crash logs (default: the system's
#: temporary folder, :func:`tempfile.gettempdir`).
LOG_DIR_VARIABLE = "AUDITOR_LOG_DIR"
#: Most characters of the exception's message shown on the error line (all are logged).
MESSAGE_CHARS = 300


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn library errors into one clean line and the right exit status. Under torchrun
    only rank 0 prints it (a failure on another rank reaches rank 0 as "rank k stopped");
    the other ranks exit with the same status, silently."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return _mapped(func, *args, **kwargs)
        except click.ClickException as error:
            if job.active() and job.rank() != 0:
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
    except (click.ClickException, click.exceptions.Abort, click.exceptions.Exit):
        raise  # click's own: a usage error a command raised, or its way to exit
    except Exception as exc:  # the last line of defence: a bug, never a traceback
        raise internal_error(exc) from None


def internal_error(exc: Exception) -> click.ClickException:
    """The one-line error of an unexpected exception (a bug in auditor), exit status
    :data:`INTERNAL_ERROR_EXIT`; its full traceback goes to a new crash log
    (:func:`write_crash_log`), never to the terminal."""
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    what = what.splitlines()[0]
    if len(what) > MESSAGE_CHARS:
        what = what[: MESSAGE_CHARS - 3] + "..."
    try:
        where = f"the traceback is in {write_crash_log(exc)}"
    except OSError as log_error:  # an unwritable log folder: say so, still no traceback
        where = f"its traceback could not be written ({log_error}; set {LOG_DIR_VARIABLE})"
    error = click.ClickException(
        f"internal error (a bug in auditor): {what}; {where}; please report it"
    )
    error.exit_code = INTERNAL_ERROR_EXIT  # type: ignore[misc]  # a ClassVar in click's types; click reads it per instance
    return error


def crash_log_dir() -> Path:
    """Where crash logs go: ``$AUDITOR_LOG_DIR`` if set, else the system's temporary
    folder (``$TMPDIR``, ``/tmp``...: :func:`tempfile.gettempdir`)."""
    return Path(os.environ.get(LOG_DIR_VARIABLE) or tempfile.gettempdir())


def write_crash_log(exc: BaseException) -> Path:
    """Write ``exc``'s traceback (with its chained exceptions), the command line (database
    passwords hidden) and the versions to a new file
    ``auditor-crash-<UTC time>-<pid>-<random>.log`` in :func:`crash_log_dir` (created if
    missing; the file readable by its owner only); its path."""
    folder = crash_log_dir()
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    handle, name = tempfile.mkstemp(
        prefix=f"auditor-crash-{stamp}-{os.getpid()}-", suffix=".log", dir=folder
    )
    command = shlex.join(["auditor", *(_hide_password(arg) for arg in sys.argv[1:])])
    with os.fdopen(handle, "w", encoding="utf-8") as log:
        log.write(
            f"auditor {__version__} internal error at {stamp}\n"
            f"command: {command}\n"
            f"python {platform.python_version()}, torch {_torch_version()}, "
            f"{platform.platform()}\n\n"
        )
        log.writelines(traceback.format_exception(exc))
    return Path(name).resolve()


def _hide_password(arg: str) -> str:
    """A command-line argument with a database URL's password replaced by ``***``
    (``URL`` or ``--db=URL``)."""
    option, equals, value = arg.partition("=")
    if equals and option.startswith("--"):
        return f"{option}={display_url(value)}"
    return display_url(arg)


def _torch_version() -> str:
    torch = sys.modules.get("torch")
    return str(getattr(torch, "__version__", "not loaded"))


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
