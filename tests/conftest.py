import itertools
import os
from pathlib import Path

import pytest

from tests import pg

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The shared MNIST test set (10,000 images, idx format), read-only."""
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.fail(f"MNIST test data missing at {MNIST_DIR}")
    return MNIST_DIR


@pytest.fixture(scope="session")
def pg_server():
    """URL of the maintenance database of a throwaway PostgreSQL server (see tests/pg.py)."""
    reason = pg.missing_reason()
    if reason is not None:
        if os.environ.get("AUDITOR_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"AUDITOR_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    with pg.server() as url:
        yield url


_databases = itertools.count()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty PostgreSQL database for one test: ``postgresql://...``."""
    return pg.create_database(pg_server, f"auditor_test_{next(_databases)}")
