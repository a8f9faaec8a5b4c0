"""Issue 17, must 5: detection quality with the product's own network on 10-class MNIST,
last-layer influence against influence over every weight, and plain training loss.

Run from the repository root (offline; MNIST idx files in ../shared/data/mnist)::

    python benchmarks/quality_own_model.py                               # all 10,000 images
    python benchmarks/quality_own_model.py --train-size 600 --seeds 0 --epochs 2   # a check
    python benchmarks/quality_own_model.py --device cuda --solver ekfac --out gpu-quality

For each noise (``flip``: ``--rate`` of the points get another class, uniformly;
``class-flip:cycle``: ``--rate`` of each class c relabelled c + 1, 9 to 0) and each method
it runs :func:`auditor.evaluation.evaluate.evaluate`, the library call behind ``auditor
evaluate`` (as benchmarks/detection.py does), over ``--seeds`` (each seed fixes the 80/20
split, the faults and the fit):

- ``cnn-last``: ``--model cnn --params last --solver exact`` (influence over the head);
- ``cnn-all``: ``--model cnn --params all --solver SOLVER`` (every weight; cg until EK-FAC
  lands, then ``--solver ekfac``).

Every evaluation also scores the training-loss ranking of its own fit, so the table has
``training loss`` next to each method's influence rankings (self-influence, harmfulness,
the combined ranking) and random. Cells are mean ± sample sd over the seeds of AUROC and of
the share of the faults found after checking 10% of the points. The fix experiment is off
unless ``--fix``. ``--train-size N`` evaluates a fixed random subset of N of the 10,000
images (the same subset for every seed, written as an NPZ file into ``--out``).

Writes ``OUT/quality_own_model.json`` (every summary and per-seed row) and
``OUT/quality_own_model.md`` (the table, also printed); evaluations go to ``OUT/quality.db``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from auditor.config import DataArgs, ModelArgs, ScanConfig, SolverArgs  # noqa: E402
from auditor.evaluation.evaluate import EvalArgs, evaluate  # noqa: E402
from auditor.evaluation.faults import FaultSpec  # noqa: E402
from auditor.evaluation.metrics import RANKINGS, fraction_key  # noqa: E402
from auditor.sources.idx import read_pair  # noqa: E402
from auditor.store import open_db  # noqa: E402

MNIST = ROOT.parent / "shared" / "data" / "mnist"
NOISES = ("flip", "class-flip:cycle")
METHODS = ("cnn-last", "cnn-all")
FOUND_AT = 0.1


def mnist_data(mnist: Path, train_size: int | None, out: Path, seed: int = 0) -> str:
    """The ``--train`` spec: the idx folder itself, or an NPZ of ``train_size`` images drawn
    once (``seed``) from it, the same for every evaluation seed."""
    if train_size is None:
        return str(mnist)
    images, labels = read_pair(
        mnist / "t10k-images-idx3-ubyte.gz", mnist / "t10k-labels-idx1-ubyte.gz"
    )
    if not 0 < train_size <= len(images):
        raise SystemExit(f"--train-size must lie in 1..{len(images)}, got {train_size}")
    keep = np.sort(np.random.default_rng(seed).choice(len(images), train_size, replace=False))
    path = out / f"mnist-{train_size}.npz"
    np.savez(path, X=images[keep], y=labels[keep].astype(np.int64))
    return str(path)


def config(method: str, train: str, args: argparse.Namespace) -> ScanConfig:
    """The scan configuration of ``method`` (``cnn-last`` or ``cnn-all``)."""
    data = DataArgs(train=train, test_split=args.test_split)
    params, solver = {"cnn-last": ("last", "exact"), "cnn-all": ("all", args.solver)}[method]
    model = ModelArgs(name="cnn", params=params, weight_decay=args.weight_decay, epochs=args.epochs)
    solve = SolverArgs(solver=solver)
    if method == "cnn-all":
        solve = SolverArgs(solver=solver, damping=args.damping, tol=args.tol)
    return ScanConfig(data=data, model=model, solver=solve, device=args.device)


def run_all(args: argparse.Namespace) -> dict:
    """Every (noise, method) evaluation; ``{"noise | method": result}``."""
    train = mnist_data(args.mnist, args.train_size, args.out)
    engine = open_db(str(args.out / "quality.db"))
    seeds = [int(s) for s in args.seeds.split(",")]
    fractions = sorted({0.05, FOUND_AT, 0.2})
    results = {}
    for noise in args.noises.split(","):
        faults = FaultSpec.parse(noise.strip(), args.rate)
        for method in args.methods.split(","):
            method = method.strip()
            start = time.perf_counter()
            ev = evaluate(
                engine,
                config(method, train, args),
                EvalArgs(faults, seeds=seeds, fractions=tuple(fractions), fix=args.fix),
            )
            seconds = time.perf_counter() - start
            results[f"{noise} | {method}"] = {
                "noise": faults.label(),
                "faults": faults.to_dict(),
                "method": method,
                "config": config(method, train, args).to_dict(),
                "seeds": seeds,
                "seconds": round(seconds, 1),
                "evaluation_id": ev.id,
                "n_train": ev.results[0]["n_train"],
                "n_faults": [r["n_faults"] for r in ev.results if r["ranking"] == "random"],
                "summary": ev.summary,
                "per_seed": [
                    {k: r[k] for k in ("seed", "ranking", "run_id", "auroc", "found")}
                    for r in ev.results
                ],
            }
            print(f"{noise} | {method}: {seconds:.1f} s", file=sys.stderr, flush=True)
    return results


def markdown(results: dict) -> str:
    """noise x method x ranking: AUROC and share found after checking 10%, mean ± sd."""
    lines = [
        "| noise | method | ranking | AUROC | found@10% | seeds | s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    key = f"found@{fraction_key(FOUND_AT)}"
    for r in results.values():
        for ranking in RANKINGS:
            s = r["summary"][ranking]
            cells = [f"{s[m][0]:.4f} ± {s[m][1]:.4f}" for m in ("auroc", key)]
            bold = "**" if ranking == "combined" else ""
            seeds = ",".join(map(str, r["seeds"]))
            row = [r["noise"], r["method"], f"{bold}{ranking}{bold}", *cells, seeds]
            lines.append("| " + " | ".join([*row, f"{r['seconds']:.0f}"]) + " |")
    return "\n".join(lines)


def machine(device: str) -> dict:
    import torch

    info = {
        "when": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", type=Path, default=MNIST, help="MNIST idx folder")
    parser.add_argument("--train-size", type=int, help="a random subset of the images")
    parser.add_argument("--test-split", type=float, default=0.2)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rate", type=float, default=0.1, help="fault rate of each noise")
    parser.add_argument("--noises", default=",".join(NOISES), help="--faults specs")
    parser.add_argument("--methods", default=",".join(METHODS), help="cnn-last, cnn-all")
    parser.add_argument("--solver", default="cg", help="solver of cnn-all (ekfac later)")
    parser.add_argument("--damping", type=float, default=0.0, help="damping of cnn-all")
    parser.add_argument("--tol", type=float, default=1e-4, help="solver tolerance of cnn-all")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--epochs", type=int, default=8, help="Adam epochs of the CNN")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (auditor's --device)")
    parser.add_argument("--fix", action="store_true", help="also run the fix experiment")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/data/quality_own_model"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if any(m.strip() not in METHODS for m in args.methods.split(",")):
        raise SystemExit(f"--methods: choose from {', '.join(METHODS)}")
    start = time.perf_counter()
    results = run_all(args)
    table = markdown(results)
    print(table)
    payload = {
        "machine": machine(args.device),
        "command": "python benchmarks/quality_own_model.py " + " ".join(sys.argv[1:]),
        "train_size": args.train_size,
        "seconds": round(time.perf_counter() - start, 1),
        "results": results,
        "table": table,
    }
    (args.out / "quality_own_model.json").write_text(json.dumps(payload, indent=1))
    (args.out / "quality_own_model.md").write_text(table + "\n")
    print(f"wrote {args.out / 'quality_own_model.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
