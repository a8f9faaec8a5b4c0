"""Each speed-up of issue 4 switched off and on, on the same inputs (predicted vs measured).

    python benchmarks/ablation.py [--threads 1]

Prints one line per optimisation: the time without it, with it, the measured ratio and
the ratio its flop count predicts. Inputs: MNIST 1-vs-7 (case 1 of bench.py) for the
solver paths; a 7,850 x 7,850 SPD matrix (case 2's size) for the Cholesky factor; 16 M
float32 pair scores for the store.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from auditor.config import DataArgs, SolverArgs  # noqa: E402
from auditor.influence.gradients import per_example_grads  # noqa: E402
from auditor.influence.hessian import HessianOperator  # noqa: E402
from auditor.influence.self_influence import self_influences  # noqa: E402
from auditor.influence.solvers import solve  # noqa: E402
from auditor.models import build_model  # noqa: E402
from auditor.models.fit import fit  # noqa: E402
from auditor.pipeline.scan import dataset_tensors, load_data  # noqa: E402

MNIST = ROOT.parent / "shared" / "data" / "mnist"


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    """Best of ``repeat`` wall times of ``fn()`` and its last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def line(name: str, before: float, after: float, predicted: float, note: str = "") -> None:
    print(
        f"| {name} | {before:.3f} s | {after:.3f} s | {before / after:.1f}x | "
        f"{predicted:.1f}x | {note} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print("| optimisation | without | with | measured | predicted (flops) | note |")
    print("|---|---|---|---|---|---|")

    train, test = load_data(DataArgs(train=str(MNIST), classes=["1", "7"], test_split=0.2))
    x, y = dataset_tensors(train, "cpu", torch.float32)
    x_test, y_test = dataset_tensors(test, "cpu", torch.float32)
    model = build_model("logistic", "classification", train.n_features, 2)
    theta = fit(model, x, y, 0.01).theta
    g_test = per_example_grads(model, theta, x_test, y_test).T.contiguous()
    g_train = per_example_grads(model, theta, x, y)
    n, p, m = x.shape[0], model.n_params, g_test.shape[1]

    def lissa(dense: bool, squaring: bool, v=g_test):
        op = HessianOperator(model, theta, x, y, 0.01, dense_matvec=dense)
        return solve(op, v, SolverArgs(solver="lissa", squaring=squaring))

    t0, (_, d0) = timed(lambda: lissa(False, False))
    t1, (_, d1) = timed(lambda: lissa(True, False))
    build = 2 * n * p * p
    steps = d0.iterations
    line(
        "dense cached Hessian matvec (LiSSA, 433 test columns)",
        t0,
        t1,
        (4 * n * p * m * steps) / (build + 2 * p * p * m * steps),
        f"{steps} steps both; 4npm vs 2p^2m per step plus one 2np^2 build",
    )
    t2, (_, d2) = timed(lambda: lissa(True, True))
    doublings = int(np.log2(d2.iterations + 1))
    line(
        "LiSSA by repeated squaring (same columns)",
        t1,
        t2,
        (2 * p * p * m * steps) / (doublings * (4 * p**3 + 2 * p * p * m)),
        f"{steps} steps vs {doublings} doublings (t = {d2.iterations}); residual "
        f"{d1.residual_max:.1e} vs {d2.residual_max:.1e}",
    )

    def si(mode: str):
        op = HessianOperator(model, theta, x, y, 0.01)
        return self_influences(op, g_train, SolverArgs(solver="lissa", self_influence=mode))

    t3, (_, d3) = timed(lambda: si("same"), repeat=1)
    t4, _ = timed(lambda: si("auto"))
    doublings = int(np.log2(d3["iterations"] + 1))
    line(
        "self-influence by Cholesky (1,730 training points)",
        t3,
        t4,
        doublings * (4 * p**3 + 2 * p * p * n) / (p**3 / 3 + p * p * n + 2 * p * p * 64),
        f"LiSSA by squaring ({d3['iterations']} steps) vs p^3/3 + p^2 n; once per refit",
    )

    big = 7850
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(big, big, generator=gen) / big**0.5
    spd = 0.15 * (b + b.T) + 2 * torch.eye(big)  # symmetric, eigenvalues in about [1.2, 2.8]
    t5, _ = timed(lambda: torch.linalg.cholesky_ex(spd.double()), repeat=1)
    t6, _ = timed(lambda: torch.linalg.cholesky_ex(spd), repeat=1)
    line("float32 Cholesky at p = 7,850 (case 2)", t5, t6, 2.0, "predicted from matmul GFLOPS")

    store(line)


def store(line) -> None:
    """Pair-score storage at case 2's size: write, read, bytes per pair."""
    from auditor.store import open_db, pairs, runs

    scores = np.random.default_rng(0).standard_normal((2000, 8000)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "s.db"
        engine = open_db(str(db))
        run_id = runs.create_run(
            engine,
            config={},
            dataset="bench",
            task="classification",
            model="logistic",
            n_train=8000,
            n_test=2000,
            n_params=1,
            data_fingerprint="-",
        )
        start = time.perf_counter()
        for j0 in range(0, 2000, 256):
            with engine.begin() as conn:
                pairs.write_pair_scores(conn, run_id, j0, scores[j0 : j0 + 256])
        write = time.perf_counter() - start
        start = time.perf_counter()
        read = sum(b.size for _, b in pairs.iter_pair_blocks(engine, run_id))
        read_s = time.perf_counter() - start
        print(
            f"\nstore, 16 M pairs: write {16e6 / write / 1e6:.1f} M pairs/s, read "
            f"{read / read_s / 1e6:.1f} M pairs/s, {db.stat().st_size / 16e6:.2f} bytes/pair"
        )
        engine.dispose()


if __name__ == "__main__":
    main()
