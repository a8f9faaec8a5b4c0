"""The exceptions the library raises; the CLI maps them to exit codes.

``DataError`` and friends are expected runtime failures (exit 1); ``ConfigError`` is a
usage error (exit 2). Anything else is a bug and keeps its traceback.
"""


class AuditorError(Exception):
    """Base class of every error the library raises on purpose. ``run_id``: the run the
    error left incomplete and resumable, if any (the CLI then prints how to finish it)."""

    exit_code = 1

    def __init__(self, message: str = "", run_id: int | None = None):
        super().__init__(message)
        self.run_id = run_id


class ConfigError(AuditorError):
    """An option value or combination of options that cannot work."""

    exit_code = 2


class DataError(AuditorError):
    """A dataset that cannot be read or used (corrupt file, NaN features, one class...)."""


class StoreError(AuditorError):
    """The database cannot be opened, written, or is at an unknown schema revision."""


class RunNotFound(StoreError):
    """A run id that does not exist in the database."""


class SolverError(AuditorError):
    """An inverse-Hessian solve that diverged or failed (not positive definite, non-finite)."""


class Interrupted(AuditorError):
    """Ctrl-C or SIGTERM stopped a scan; ``run_id`` is the incomplete run (or ``None``)."""

    exit_code = 130
