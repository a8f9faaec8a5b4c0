"""A built wheel carries templates/ and migrations/ and works outside the checkout."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_wheel_ships_templates_and_migrations_and_scans(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        check=True,
    )
    (wheel,) = dist.glob("auditor-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "auditor/migrations/env.py" in names
    assert any(n.startswith("auditor/migrations/versions/0001") for n in names)
    assert any(n.startswith("auditor/templates/") for n in names)

    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-m", "auditor", "scan", "--train", "toy-linear", "--db", "a.db"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "1"
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import auditor, auditor.resources as r; print(auditor.__file__); print(r.resource_dir('migrations'))",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert where[0].startswith(str(target)) and where[1].startswith(str(target))
