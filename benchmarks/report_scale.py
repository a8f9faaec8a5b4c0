"""``auditor report`` at CIFAR scale, without a scan (issue 17).

Builds a complete run in a fresh SQLite file through the store API: ``--train`` and
``--test`` colour 32x32x3 images of random pixels, ten classes, a flagged share of the
training points, and every pair score (one float32 BLOB per test point, as a scan stores
them). Then runs ``auditor report`` on it in a subprocess and prints its wall time, the
HTML's size, the child's peak RSS and what the page holds.

Run from the repository root (not part of the test suite; nothing here asserts a time):

    python benchmarks/report_scale.py --train 50000 --test 10000   # 500 M pairs, ~2 GB db
    python benchmarks/report_scale.py --db big.db --reuse -- --top 1000   # options of report

Building the 50,000 x 10,000 database takes about 35 s on 2 cores (the pair scores are
most of it); ``--db FILE`` keeps it for another measurement (``--reuse``). The peak RSS
includes the CLI's imports (torch): about 850 MB for ``auditor --help`` alone.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from auditor.config import DataArgs, FlagRule, ModelArgs, ScanConfig, SolverArgs  # noqa: E402
from auditor.store import open_db, pairs, points, runs  # noqa: E402

SHAPE = (3, 32, 32)
CLASSES = ["airplane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PAIR_BLOCK = 256  # test points per committed block, as a scan commits them


def build_run(
    db: str | Path,
    n_train: int,
    n_test: int,
    *,
    flagged: float = 0.05,
    seed: int = 0,
    shape: tuple[int, int, int] = SHAPE,
) -> int:
    """Write a complete image-classification run into ``db`` and return its id.

    Args:
        n_train, n_test: Points per split; every point has ``prod(shape)`` random uint8
            pixels (``[C, H, W]``, as ``runs.image_shape`` stores them).
        flagged: Share of the training points flagged (mislabels, ranked first).
        shape: ``[C, H, W]`` of the images.

    Pair scores: ``(n_test, n_train)`` standard normal float32, one BLOB per test point.
    """
    rng = np.random.default_rng(seed)
    engine = open_db(str(db))
    rule = FlagRule(outlier_z=6.0, mislabel_z=5.0)
    config = ScanConfig(
        data=DataArgs(train="synthetic-cifar"),
        model=ModelArgs(weight_decay=0.01),
        solver=SolverArgs(solver="exact"),
        rule=rule,
    )
    n_flagged = int(round(flagged * n_train))
    size = int(np.prod(shape))
    run_id = runs.create_run(
        engine,
        config=config.to_dict(),
        dataset=f"synthetic colour {'x'.join(map(str, shape))}",
        task="classification",
        model="logistic",
        n_train=n_train,
        n_test=n_test,
        n_params=(size + 1) * len(CLASSES),
        data_fingerprint=f"{seed:064x}",
        class_names=CLASSES,
        image_shape=list(shape),
    )
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, len(CLASSES), n)
        predicted = np.where(rng.random(n) < 0.6, labels, rng.integers(0, len(CLASSES), n))
        loss = rng.exponential(1.0, n)
        suspicion = rng.normal(0.0, 1.0, n)
        rows = []
        if split == "train":
            # the flagged points are the most suspicious; rank 1 = most suspicious
            suspicion[:n_flagged] = 6.0 + rng.exponential(2.0, n_flagged)
            predicted[:n_flagged] = (labels[:n_flagged] + 1) % len(CLASSES)
            rank = np.empty(n, dtype=np.int64)
            rank[np.argsort(-suspicion, kind="stable")] = np.arange(1, n + 1)
        for i in range(n):
            row = {
                "idx": i,
                "point_id": f"{split}/{CLASSES[labels[i]]}/{i:05d}.png",
                "label": float(labels[i]),
                "predicted": float(predicted[i]),
                "probability": float(rng.uniform(0.1, 1.0)),
                "loss": float(loss[i]),
                "image": rng.integers(0, 256, size, dtype=np.uint8).tobytes(),
            }
            if split == "train":
                row |= {
                    "self_influence": -float(np.exp(suspicion[i])),
                    "harmfulness": float(rng.normal()),
                    "suspicion": float(suspicion[i]),
                    "rank": int(rank[i]),
                    "flags": ["mislabel"] if i < n_flagged else [],
                    "union_z": float(suspicion[i]),
                    "influence_z": float(suspicion[i]) - 1.0,
                }
            rows.append(row)
        points.write_points(engine, run_id, split, rows)
    for first in range(0, n_test, PAIR_BLOCK):
        c = min(PAIR_BLOCK, n_test - first)
        block = rng.standard_normal((c, n_train), dtype=np.float32)
        with engine.begin() as conn:
            pairs.write_pair_scores(conn, run_id, first, block)
    resolved = {**rule.to_dict(), "outlier_support_z": rule.outlier_z}
    runs.finish_run(
        engine,
        run_id,
        metrics={"train_accuracy": 0.6, "test_accuracy": 0.6, "grad_norm": 1e-6},
        solver={"solver": "exact", "converged": True, "residual_max": 1e-7},
        ranking={"rule": resolved, "refits": 0, "flag_counts": {"mislabel": n_flagged}},
        timings={},
        warnings=[],
    )
    engine.dispose()
    return run_id


def measure(db: Path, run_id: int, out: Path, extra: list[str]) -> dict:
    """Run ``auditor report`` in a child process: wall time, HTML size, the child's RSS."""
    command = [sys.executable, "-m", "auditor", "report", str(run_id), "--db", str(db)]
    command += ["--out", str(out), *extra]
    start = time.perf_counter()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run(command, check=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"seconds": seconds, "html_mb": out.stat().st_size / 1e6, "rss_mb": rss / 1e6}


def page_facts(html: str) -> dict:
    """What the page holds: flagged rows, pages, test panels, thumbnails."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    return {
        "rows": len(soup.select("table#flagged tbody tr[data-index]")),
        "pages": len(soup.select("#flagged-pager button[data-page]")),
        "panels": len(soup.select(".panel")),
        "thumbnails": len(soup.select("img.thumb")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--flagged", type=float, default=0.05, help="share flagged")
    parser.add_argument("--db", type=Path, help="database file (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="report on --db's latest run")
    parser.add_argument("report_args", nargs="*", help="more `auditor report` options")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "scale.db"
        start = time.perf_counter()
        if args.reuse:
            engine = open_db(str(db))
            run_id = runs.latest_run_id(engine)
            stored = runs.get_run(engine, run_id)
            args.train, args.test = stored.n_train, stored.n_test
        else:
            run_id = build_run(db, args.train, args.test, flagged=args.flagged)
        built = time.perf_counter() - start
        out = Path(tmp) / "report.html"
        figures = measure(db, run_id, out, args.report_args)
        facts = page_facts(out.read_text(encoding="utf-8"))
        db_gb = db.stat().st_size / 1e9
    print(
        f"{args.train:,} train x {args.test:,} test, {args.train * args.test / 1e6:,.0f} M pairs, "
        f"db {db_gb:.2f} GB (built in {built:.0f} s)\n"
        f"auditor report: {figures['seconds']:.1f} s, HTML {figures['html_mb']:.2f} MB, "
        f"peak RSS {figures['rss_mb']:.0f} MB; {facts['rows']} rows on {facts['pages']} "
        f"pages, {facts['panels']} test panels, {facts['thumbnails']} thumbnails"
    )


if __name__ == "__main__":
    main()
