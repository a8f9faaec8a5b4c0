"""Measure the detection-quality targets (docs/quality.md): every setting x ranking, with mean and
spread over seeds, through the same library call as ``auditor evaluate``.

Run from the repository root (MNIST idx files in ../shared/data/mnist by default)::

    python benchmarks/detection.py --out benchmarks/results.json       # all settings
    python benchmarks/detection.py --only cnn-flip-10 --seeds 0        # one setting

Prints a Markdown table (docs/quality.md's "Targets and where they stand") and writes every
summary to ``--out``. The 1-vs-7 settings take seconds per seed; the 10-class CNN about a
minute per seed on 2 busy cores, plus 7 retrains per seed for the fix experiment.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from auditor.config import DataArgs, ModelArgs, ScanConfig, SolverArgs
from auditor.evaluation.evaluate import EvalArgs, evaluate
from auditor.evaluation.faults import FaultSpec
from auditor.evaluation.metrics import RANKINGS, fraction_key
from auditor.store import open_db

MNIST = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")


def settings(mnist: str) -> dict[str, tuple[ScanConfig, FaultSpec]]:
    """Every benchmarked setting: name -> (scan configuration, faults)."""
    pair = DataArgs(train=mnist, classes=["1", "7"], test_split=0.2)
    logistic = ModelArgs(weight_decay=1e-3)
    exact = SolverArgs(solver="exact")
    ten = DataArgs(train=mnist, test_split=0.2)
    cnn = ModelArgs(name="cnn", params="last", weight_decay=1e-4)
    return {
        "1v7-flip-5": (ScanConfig(pair, logistic, exact), FaultSpec("flip", 0.05)),
        "1v7-flip-10": (ScanConfig(pair, logistic, exact), FaultSpec("flip", 0.10)),
        "1v7-flip-20": (ScanConfig(pair, logistic, exact), FaultSpec("flip", 0.20)),
        "1v7-class-flip-7>1-20": (
            ScanConfig(pair, logistic, exact),
            FaultSpec("class-flip", 0.2, "7", "1"),
        ),
        "1v7-outlier-5": (ScanConfig(pair, logistic, exact), FaultSpec("outlier", 0.05)),
        "1v7-flip-10-default-wd": (ScanConfig(pair, ModelArgs(), exact), FaultSpec("flip", 0.1)),
        "cnn-flip-10": (ScanConfig(ten, cnn, exact), FaultSpec("flip", 0.10)),
        "cnn-class-flip-7>1-30": (
            ScanConfig(ten, cnn, exact),
            FaultSpec("class-flip", 0.3, "7", "1"),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", default=MNIST)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--only", action="append", help="run only these settings")
    parser.add_argument("--no-fix", action="store_true")
    parser.add_argument("--db", default="benchmarks/detection.db")
    parser.add_argument("--out", default="benchmarks/results.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    engine = open_db(args.db)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for name, (config, faults) in settings(args.mnist).items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        ev = evaluate(engine, config, EvalArgs(faults, seeds=seeds, fix=not args.no_fix))
        results[name] = {
            "seeds": seeds,
            "seconds": round(time.perf_counter() - start, 1),
            "evaluation_id": ev.id,
            "summary": ev.summary,
        }
        print(f"{name}: {results[name]['seconds']} s", file=sys.stderr)
        out.write_text(json.dumps(results, indent=1))
    print(markdown(results))


def markdown(results: dict) -> str:
    """The docs/quality.md table: setting x ranking, AUROC and share found after checking 10%."""
    lines = [
        "| setting | seeds | ranking | AUROC | found@10% | AP |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        for ranking in RANKINGS:
            s = r["summary"][ranking]
            cell = " | ".join(
                f"{s[m][0]:.4f} ± {s[m][1]:.4f}"
                for m in ("auroc", f"found@{fraction_key(0.1)}", "average_precision")
            )
            bold = "**" if ranking == "combined" else ""
            seeds = ",".join(map(str, r["seeds"]))
            lines.append(f"| {name} | {seeds} | {bold}{ranking}{bold} | {cell} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
