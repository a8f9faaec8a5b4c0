"""Where ``templates/`` and ``migrations/`` live: beside the package in a checkout, inside it
in an installed wheel."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """The directory ``name`` (``templates`` or ``migrations``)."""
    for candidate in (PACKAGE_DIR / name, PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"auditor's {name}/ directory is missing from the installation")
