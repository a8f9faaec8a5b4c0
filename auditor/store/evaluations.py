"""Evaluations: one row per ``auditor evaluate``, one result row per (seed, ranking)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.engine import Engine

from auditor import __version__
from auditor.store.schema import evaluation_results, evaluations


def write_evaluation(engine: Engine, results: list[dict], **fields) -> int:
    """Insert an evaluation (``config``, ``faults``, ``seeds``, ``summary``, ``timings``) with
    its result rows (columns of ``evaluation_results`` but ``evaluation_id``); return its id.

    A metric without a value (NaN: no faults to find, accuracy of a regression) is stored
    as JSON ``null``: PostgreSQL's ``json`` refuses the ``NaN`` token."""
    values = {
        "created_at": datetime.now(UTC).replace(tzinfo=None),
        "auditor_version": __version__,
        **_json_columns_safe(fields),
    }
    with engine.begin() as conn:
        key = conn.execute(evaluations.insert().values(**values)).inserted_primary_key
        assert key is not None  # a single-row insert reports its primary key
        eval_id: int = key[0]
        if results:
            rows = [dict(_json_columns_safe(r), evaluation_id=eval_id) for r in results]
            conn.execute(evaluation_results.insert(), rows)
    return eval_id


def json_safe(value):
    """``value`` with every non-finite float inside dicts and lists (and itself) ``None``."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_columns_safe(row: dict) -> dict:
    return {k: json_safe(v) if isinstance(v, dict | list) else v for k, v in row.items()}


def read_evaluation(engine: Engine, eval_id: int) -> tuple[dict, list[dict]] | None:
    """The evaluation row and its result rows (by seed, then ranking), or ``None``."""
    with engine.connect() as conn:
        row = (
            conn.execute(select(evaluations).where(evaluations.c.id == eval_id)).mappings().first()
        )
        if row is None:
            return None
        results = conn.execute(
            select(evaluation_results)
            .where(evaluation_results.c.evaluation_id == eval_id)
            .order_by(evaluation_results.c.seed, evaluation_results.c.ranking)
        ).mappings()
        return dict(row), [dict(r) for r in results]


def results_for_run(engine: Engine, run_id: int) -> list[dict]:
    """The result rows of the newest evaluation that scanned run ``run_id`` (one per
    ranking), or ``[]`` when no evaluation used it."""
    with engine.connect() as conn:
        eval_id = conn.execute(
            select(evaluation_results.c.evaluation_id)
            .where(evaluation_results.c.run_id == run_id)
            .order_by(evaluation_results.c.evaluation_id.desc())
            .limit(1)
        ).scalar()
        if eval_id is None:
            return []
        rows = conn.execute(
            select(evaluation_results).where(
                evaluation_results.c.evaluation_id == eval_id,
                evaluation_results.c.run_id == run_id,
            )
        ).mappings()
        return [dict(r) for r in rows]
