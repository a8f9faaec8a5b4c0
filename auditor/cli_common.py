"""Helpers shared by every CLI command: error mapping, the --db option, run lookup."""

from __future__ import annotations

import functools

import click

from auditor.errors import AuditorError, ConfigError
from auditor.store import open_db, runs


def handle_errors(func):
    """Turn library errors into one clean line and the right exit status."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        except AuditorError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; the run is marked failed") from None

    return wrapper


def db_option(func):
    return click.option(
        "--db",
        default="audit.db",
        show_default=True,
        help="SQLite file or any SQLAlchemy URL.",
    )(func)


def open_existing(db: str):
    """Open a database that must already exist (read commands)."""
    return dispose_on_close(open_db(db, create=False))


def dispose_on_close(engine):
    """Close ``engine``'s pooled connections when the running command ends (a server
    database otherwise keeps them open until they are garbage-collected)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(engine.dispose)
    return engine


def resolve_run(engine, run: int | None) -> int:
    return runs.latest_run_id(engine) if run is None else runs.get_run(engine, run)["id"]
