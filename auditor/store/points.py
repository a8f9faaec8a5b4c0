"""Points: one row per training or test point of a run, with its scores and flags."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.engine import Engine

from auditor.store.schema import points

BATCH = 5000


def write_points(engine: Engine, run_id: int, split: str, rows: list[dict]) -> None:
    """Insert (or replace) the ``split`` points of a run.

    Each row holds the ``points`` columns except ``run_id`` and ``split``; ``idx`` is the
    point's position in its split.
    """
    with engine.begin() as conn:
        conn.execute(points.delete().where(points.c.run_id == run_id, points.c.split == split))
        for start in range(0, len(rows), BATCH):
            batch = [dict(r, run_id=run_id, split=split) for r in rows[start : start + BATCH]]
            conn.execute(points.insert(), batch)


def read_points(engine: Engine, run_id: int, split: str, *, with_blobs: bool = False) -> list[dict]:
    """The ``split`` points of a run in index order, as dicts of columns."""
    columns = [c for c in points.c if with_blobs or c.name not in ("image", "features")]
    query = (
        select(*columns)
        .where(points.c.run_id == run_id, points.c.split == split)
        .order_by(points.c.idx)
    )
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def read_point_blobs(engine: Engine, run_id: int, split: str, indexes: list[int]) -> dict:
    """``{idx: (image, features)}`` for a few points (thumbnails, scatter plots)."""
    query = select(points.c.idx, points.c.image, points.c.features).where(
        points.c.run_id == run_id, points.c.split == split, points.c.idx.in_(indexes)
    )
    with engine.connect() as conn:
        return {r.idx: (r.image, r.features) for r in conn.execute(query)}
