"""How many points the flag rule flags, on clean data and with injected faults (seed 0).

Run from the repository root (MNIST idx files in ../shared/data/mnist by default)::

    python benchmarks/flags.py                          # every setting, about 1 minute
    python benchmarks/flags.py --only 1v7-clean --rule outlier_z=6

Prints the calibration table of docs/quality.md ("Flag calibration"): per setting the flags by
kind and how many of the injected faults they hold. ``--rule key=value`` overrides a
:class:`~auditor.ranking.rule.FlagRule` field (``influence_scale=sqrt`` with ``outlier_z=6``
is the rule before the log scale).
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from detection import MNIST
from detection import settings as detection_settings

from auditor.config import DataArgs, FlagRule, ModelArgs, ScanConfig, SolverArgs
from auditor.evaluation.evaluate import scan_with_faults
from auditor.evaluation.faults import FaultSpec
from auditor.store import open_db, points

CLEAN = FaultSpec("none", 0.0)


def settings(mnist: str) -> dict[str, tuple[ScanConfig, FaultSpec]]:
    """Every setting: name -> (scan configuration, faults); the faulty ones are
    ``benchmarks/detection.py``'s."""
    pair = DataArgs(train=mnist, classes=["1", "7"], test_split=0.2)
    ten = DataArgs(train=mnist, test_split=0.2)
    exact = SolverArgs(solver="exact")
    cnn = ModelArgs(name="cnn", params="last", weight_decay=1e-4)
    faulty = detection_settings(mnist)
    return {
        # the default weight decay before --weight-decay auto (which picks 1e-3 here)
        "1v7-clean": (ScanConfig(pair, ModelArgs(weight_decay=0.01), exact), CLEAN),
        "1v7-clean-wd3": (ScanConfig(pair, ModelArgs(weight_decay=1e-3), exact), CLEAN),
        "1v7-flip-10-wd3": faulty["1v7-flip-10"],
        "1v7-class-flip-wd3": faulty["1v7-class-flip-7>1-20"],
        "1v7-outlier-5-wd3": faulty["1v7-outlier-5"],
        "cnn-clean-trim0": (ScanConfig(ten, cnn, exact, FlagRule(trim=0)), CLEAN),
        "cnn-clean": (ScanConfig(ten, cnn, exact), CLEAN),
        "cnn-flip-10": faulty["cnn-flip-10"],
        "cnn-outlier-5": (ScanConfig(ten, cnn, exact), FaultSpec("outlier", 0.05)),
    }


def flag_counts(config: ScanConfig, faults: FaultSpec, db: str, seed: int = 0) -> dict:
    """Scan one setting; ``{kind: (flagged, faults among them)}`` plus the fault count."""
    engine = open_db(db)
    done = scan_with_faults(engine, config, faults, seed)
    out: dict = {"faults": int(done.is_fault.sum())}
    for p in points.read_points(engine, done.run_id, "train"):
        for kind in p["flags"]:
            flagged, hits = out.get(kind, (0, 0))
            out[kind] = (flagged + 1, hits + bool(done.is_fault[p["idx"]]))
    engine.dispose()
    return out


def rule_override(item: str) -> tuple[str, object]:
    """``key=value`` as a :class:`FlagRule` field and a value of its type (``auto`` or
    ``none`` for a field that may be ``None``)."""
    key, text = item.split("=", 1)
    default = getattr(FlagRule(), key)  # AttributeError names an unknown field
    if text.lower() in ("auto", "none"):
        return key, None
    if isinstance(default, str):
        return key, text
    return key, int(text) if isinstance(default, int) else float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", default=MNIST)
    parser.add_argument("--only", action="append", help="run only these settings")
    parser.add_argument("--rule", action="append", default=[], help="FlagRule field=value")
    args = parser.parse_args()
    overrides = dict(rule_override(item) for item in args.rule)
    print("| setting | faults | mislabel flags (faults) | outlier flags (faults) |")
    print("| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (config, faults) in settings(args.mnist).items():
            if args.only and name not in args.only:
                continue
            config = replace(config, rule=replace(config.rule, **overrides))
            counts = flag_counts(config, faults, str(Path(tmp) / "flags.db"))
            cells = [
                f"{counts.get(k, (0, 0))[0]} ({counts.get(k, (0, 0))[1]})"
                for k in ("mislabel", "outlier")
            ]
            print(f"| {name} | {counts['faults']} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
