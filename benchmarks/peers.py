"""Case 2's all-pair influence, side by side with Kronfluence's EK-FAC (issue 15, must 1).

All 10,000 MNIST images, 10 classes, 80/20 split (8,000 train x 2,000 test = 16 M pairs),
multinomial logistic regression with the scan's default weight decay, fitted once by
``auditor``'s fit. Each contender then computes, from the same data and parameters, every
pair score (held in memory) and every training point's self-influence, in its own process
(so its peak RSS is its own) with the same thread count:

- ``auditor`` exact: per-example gradients, the IHVPs of the test gradients through the
  Cholesky factor of the damped Hessian, the pair scores, the self-influences (the
  library's own functions, as the scan calls them);
- Kronfluence 1.0.1, EK-FAC: factors over the training set, pairwise scores, self scores,
  damping ``weight_decay`` (the same ``H + lambda I``); a ``torch.nn.Linear`` holding the
  fitted parameters.

Both are compared with a float64 reference computed here in plain torch (closed-form
gradients, the class-block Hessian, a float64 Cholesky solve): Spearman correlation over
all 16 M pair scores and over the 8,000 self-influences.

Kronfluence is not a dependency of ``auditor``: it runs from its own virtual environment,
and nothing is installed into the project's. Run from the repository root:

    python3.11 -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 kronfluence==1.0.1
    python benchmarks/peers.py --kronfluence-python /tmp/peers-venv/bin/python

Without ``--kronfluence-python`` only ``auditor`` and the reference run. The table is
printed; ``benchmarks/RESULTS.md`` ("Peers") records a run by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
GB = 1024**3
#: Points of the small run each contender makes first (train and test).
WARM_UP = 200


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


# --------------------------------------------------------------------------- data (driver)


def prepare(workdir: Path) -> dict:
    """Load case 2, fit it with ``auditor`` and save the problem as ``problem.pt``."""
    sys.path.insert(0, str(ROOT))
    import torch
    from bench import BENCH_WEIGHT_DECAY

    from auditor.config import DataArgs
    from auditor.models import build_model
    from auditor.models.fit import fit
    from auditor.pipeline.loading import dataset_tensors, load_data

    train, test = load_data(DataArgs(train=str(MNIST), test_split=0.2))
    cpu = torch.device("cpu")
    x, y = dataset_tensors(train, cpu, torch.float32)
    x_test, y_test = dataset_tensors(test, cpu, torch.float32)
    model = build_model("logistic", train.task, train.n_features, train.n_classes)
    weight_decay = BENCH_WEIGHT_DECAY  # case 2's, as bench.py scans it
    start = time.perf_counter()
    fitted = fit(model, x, y, weight_decay)
    fit_s = time.perf_counter() - start
    problem = {
        "x": x,
        "y": y,
        "x_test": x_test,
        "y_test": y_test,
        "theta": fitted.theta,
        "weight_decay": weight_decay,
        "classes": train.n_classes,
    }
    torch.save(problem, workdir / "problem.pt")
    return {"fit_s": fit_s, "grad_norm": fitted.grad_norm}


def reference(workdir: Path) -> tuple:
    """Float64 pair scores ``(m, n)`` and self-influences ``(n,)`` in plain torch
    (:func:`bench.logistic_influence_terms`, apart from auditor's code), with auditor's
    sign convention: ``-g_train . A^{-1} g_test`` and ``-g . A^{-1} g``."""
    import torch
    from bench import logistic_influence_terms

    p = torch.load(workdir / "problem.pt")
    x, x_test = p["x"].double(), p["x_test"].double()
    hessian, g_train, g_test = logistic_influence_terms(
        x, p["y"], x_test, p["y_test"], p["theta"], p["weight_decay"], p["classes"]
    )
    factor = torch.linalg.cholesky(hessian)
    pairs = -(g_train @ torch.cholesky_solve(g_test.T.contiguous(), factor)).T
    half = torch.linalg.solve_triangular(factor, g_train.T.contiguous(), upper=False)
    self_influence = -(half**2).sum(dim=0)
    return pairs.numpy(), self_influence.numpy()


def spearman(a, b) -> float:
    """Spearman's rank correlation of two arrays of the same size (ties are negligible)."""
    import numpy as np

    def ranks(v):
        order = np.argsort(v.ravel(), kind="stable")
        r = np.empty(order.size, dtype=np.float64)
        r[order] = np.arange(order.size)
        return r

    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra @ rb) / np.sqrt((ra @ ra) * (rb @ rb)))


# --------------------------------------------------------------------------- contenders


def run_auditor(workdir: Path) -> dict:
    """Gradients, exact IHVPs, all pair scores and the self-influences with the library."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from auditor.config import SolverArgs
    from auditor.models import build_model

    p = torch.load(workdir / "problem.pt")
    model = build_model("logistic", "classification", p["x"].shape[1], p["classes"])
    args = SolverArgs(solver="exact")
    warm = {k: p[k][:WARM_UP] for k in ("x", "y", "x_test", "y_test")}
    for problem in ({**p, **warm}, p):  # a small run first: one-time start-up costs out
        times, pairs, self_influence = _auditor_scores(model, problem, args)
    np.save(workdir / "auditor_pairs.npy", pairs.numpy())
    np.save(workdir / "auditor_self.npy", self_influence.numpy())
    all_pairs = times["gradients"] + times["ihvp"] + times["pair_scores"]
    return {"times": times, "all_pairs_s": all_pairs, "rss_gb": _peak_rss_gb()}


def _auditor_scores(model, p: dict, args) -> tuple:
    """Times of each phase, the pair scores ``(m, n)`` and the self-influences ``(n,)``."""

    from auditor.influence.gradients import per_example_grads
    from auditor.influence.hessian import HessianOperator
    from auditor.influence.scores import pair_scores
    from auditor.influence.self_influence import self_influences
    from auditor.influence.solvers import solve

    times = {}
    start = time.perf_counter()
    g_train = per_example_grads(model, p["theta"], p["x"], p["y"])
    g_test = per_example_grads(model, p["theta"], p["x_test"], p["y_test"])
    times["gradients"] = time.perf_counter() - start
    start = time.perf_counter()
    op = HessianOperator(model, p["theta"], p["x"], p["y"], p["weight_decay"])
    ihvps, _ = solve(op, g_test.T.contiguous(), args)
    times["ihvp"] = time.perf_counter() - start
    start = time.perf_counter()
    pairs = pair_scores(g_train, ihvps)  # (m, n), held
    times["pair_scores"] = time.perf_counter() - start
    start = time.perf_counter()
    self_influence, _ = self_influences(op, g_train, args)
    times["self_influence"] = time.perf_counter() - start
    return times, pairs, self_influence


def run_kronfluence(workdir: Path) -> dict:
    """Kronfluence's EK-FAC factors, pairwise scores and self scores (its own venv)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import ScoreArguments
    from kronfluence.task import Task
    from torch.utils.data import TensorDataset

    p = torch.load(workdir / "problem.pt")
    d, k = p["x"].shape[1], p["classes"]
    weights = p["theta"].reshape(d + 1, k)
    model = torch.nn.Sequential(torch.nn.Linear(d, k))
    with torch.no_grad():
        model[0].weight.copy_(weights[:-1].T)
        model[0].bias.copy_(weights[-1])

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            inputs, labels = batch
            logits = model(inputs)
            if sample:  # the true Fisher: labels drawn from the model
                with torch.no_grad():
                    probs = torch.softmax(logits.detach(), dim=-1)
                    labels = torch.multinomial(probs, num_samples=1).flatten()
            return F.cross_entropy(logits, labels, reduction="sum")

        def compute_measurement(self, batch, model):
            inputs, labels = batch
            return F.cross_entropy(model(inputs), labels, reduction="sum")

    task = Classification()
    model = prepare_model(model, task)
    analyzer = Analyzer("peers", model=model, task=task, cpu=True, output_dir=str(workdir))
    score_args = ScoreArguments(damping_factor=p["weight_decay"])
    warm = (TensorDataset(p["x"][:WARM_UP], p["y"][:WARM_UP]),
            TensorDataset(p["x_test"][:WARM_UP], p["y_test"][:WARM_UP]))  # fmt: skip
    full = (TensorDataset(p["x"], p["y"]), TensorDataset(p["x_test"], p["y_test"]))
    for train, test in (warm, full):  # a small run first: one-time start-up costs out
        times = _kronfluence_scores(analyzer, train, test, score_args)
    pairs = analyzer.load_pairwise_scores("pairs")["all_modules"]
    self_scores = analyzer.load_self_scores("self")["all_modules"]
    # Kronfluence scores g_test . H^-1 g_train (and g . H^-1 g): auditor's with the sign flipped
    np.save(workdir / "kronfluence_pairs.npy", -pairs.float().numpy())
    np.save(workdir / "kronfluence_self.npy", -self_scores.float().numpy())
    all_pairs = times["factors"] + times["pair_scores"]
    return {"times": times, "all_pairs_s": all_pairs, "rss_gb": _peak_rss_gb()}


def _kronfluence_scores(analyzer, train, test, score_args) -> dict:
    """Times of Kronfluence's factors, pairwise scores and self scores (stored by it)."""
    from kronfluence.arguments import FactorArguments

    times = {}
    start = time.perf_counter()
    analyzer.fit_all_factors(
        "ekfac",
        dataset=train,
        per_device_batch_size=1000,
        factor_args=FactorArguments(strategy="ekfac"),
        overwrite_output_dir=True,
    )
    times["factors"] = time.perf_counter() - start
    start = time.perf_counter()
    analyzer.compute_pairwise_scores(
        "pairs",
        "ekfac",
        query_dataset=test,
        train_dataset=train,
        per_device_query_batch_size=500,
        per_device_train_batch_size=1000,
        score_args=score_args,
        overwrite_output_dir=True,
    )
    times["pair_scores"] = time.perf_counter() - start
    start = time.perf_counter()
    analyzer.compute_self_scores(
        "self",
        "ekfac",
        train_dataset=train,
        per_device_train_batch_size=1000,
        score_args=score_args,
        overwrite_output_dir=True,
    )
    times["self_influence"] = time.perf_counter() - start
    return times


CONTENDERS = {"auditor": run_auditor, "kronfluence": run_kronfluence}


# --------------------------------------------------------------------------- driver


def child(name: str, workdir: Path, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    print(json.dumps(CONTENDERS[name](workdir)))


def run_child(python: str, name: str, workdir: Path, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [python, __file__, "--child", name, "--workdir", str(workdir)]
    command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kronfluence-python", help="python of a venv with kronfluence")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--child", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.workdir, args.threads)
        return
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="auditor-peers-") as tmp:
        workdir = Path(tmp)
        fitted = prepare(workdir)
        print(f"# fit (auditor, Newton-CG): {fitted['fit_s']:.2f} s, |g| {fitted['grad_norm']:.1e}")
        rows = {"auditor": run_child(sys.executable, "auditor", workdir, args.threads)}
        if args.kronfluence_python:
            rows["kronfluence"] = run_child(
                args.kronfluence_python, "kronfluence", workdir, args.threads
            )
        pairs, self_influence = reference(workdir)
        print(f"| contender ({args.threads} threads) | all pairs s | phases s | "
              "self-influence s | peak RSS GB | Spearman pairs | Spearman self |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for name, row in rows.items():
            got_pairs = np.load(workdir / f"{name}_pairs.npy")
            got_self = np.load(workdir / f"{name}_self.npy")
            phases = ", ".join(
                f"{k} {v:.2f}" for k, v in row["times"].items() if k != "self_influence"
            )
            print(
                f"| {name} | {row['all_pairs_s']:.2f} | {phases} | "
                f"{row['times']['self_influence']:.2f} | {row['rss_gb']:.2f} | "
                f"{spearman(got_pairs, pairs):.4f} | {spearman(got_self, self_influence):.4f} |"
            )


if __name__ == "__main__":
    main()
