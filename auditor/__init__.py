"""auditor: find the training points most likely to be mislabelled or outliers.

Influence functions (Koh & Liang, ICML 2017) over a fitted model, every (train, test)
pair stored in SQLite, and a ranking a person can review.
"""

__version__ = "0.1.0"  # written here only: pyproject.toml and `auditor --version` read it
