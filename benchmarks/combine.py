"""How the combined ranking was chosen: fixed rules over the three tests, on design seeds.

Run from the repository root (MNIST idx files in ../shared/data/mnist by default)::

    python benchmarks/combine.py                       # design seeds: 4-7 minutes
    python benchmarks/combine.py --seeds 0,1,2 --cnn-seeds 0,1,2   # the evaluation seeds

Scans every setting of ``benchmarks/detection.py`` with faults once per seed (cached as
``.npz`` in ``--cache``: the single rankings' scores and the injected faults), then
judges each candidate rule as issue 16 decides: per setting, paired over the seeds, is it
significantly worse (one-sided sign or Wilcoxon test, p < 0.05) than any single ranking
in the share found after checking 10%? Prints, best first, the settings where a rule is
never significantly worse, and its summed mean deficit against the best single ranking
(AUROC gaps weighted 10x). The product uses ``max(l, s) + 0.5 * ns(h)+``
(:attr:`auditor.ranking.rule.SuspicionTests.combined`).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from detection import MNIST, settings

from auditor.evaluation.evaluate import detection_metrics, ranking_scores, scan_with_faults
from auditor.evaluation.metrics import fraction_key
from auditor.evaluation.paired import ALPHA, sign_test_worse, wilcoxon_worse
from auditor.ranking.rule import suspicion_tests
from auditor.store import open_db, points

#: The single rankings, in :func:`suspicion_tests`'s argument order (loss, harmfulness,
#: self-influence; ``|self-influence|`` is what both rank).
SINGLE = ("training loss", "harmfulness", "self-influence")


def cached_scan(name: str, seed: int, cache: Path, engine) -> dict[str, np.ndarray]:
    """One setting and seed: each single ranking's scores as ``auditor evaluate`` computes
    them (:func:`auditor.evaluation.evaluate.ranking_scores`) and the injected ``fault`` mask, ``(n,)``."""
    path = cache / f"{name}-{seed}-scores.npz"
    if not path.exists():
        config, faults = settings(MNIST)[name]
        done = scan_with_faults(engine, config, faults, seed)
        scores = ranking_scores(points.read_points(engine, done.run_id, "train"), seed)
        np.savez(path, fault=done.is_fault, **{k: scores[k] for k in SINGLE})
    return dict(np.load(path))


def candidate_rules() -> dict:
    """name -> f(lo, s, h, nh) of the tests' robust zs (``lo`` log loss, ``s`` influence z,
    ``h`` harmfulness) and harmfulness's normal score ``nh``, each ``(n,)``."""
    rules = {}
    for a, b in itertools.product([0, 0.5, 1, 2], [1, 2, 3, 4, np.inf]):
        rules[f"max(l, s-{a}, h-{b})"] = lambda lo, s, h, nh, a=a, b=b: np.maximum(
            np.maximum(lo, s - a), h - b
        )
    for c in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0):
        rules[f"l+s+{c}*ns(h)"] = lambda lo, s, h, nh, c=c: lo + s + c * nh
        rules[f"max(l,s)+{c}*ns(h)+"] = lambda lo, s, h, nh, c=c: (
            np.maximum(lo, s) + c * np.maximum(nh, 0)
        )
    rules["l+s+h"] = lambda lo, s, h, nh: lo + s + h
    rules["l+s+h+"] = lambda lo, s, h, nh: lo + s + np.maximum(h, 0)
    return rules


def tests(d: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """The scan's tests (:func:`auditor.ranking.rule.suspicion_tests`) as arrays ``(n,)``:
    log-loss z, influence z, harmfulness z and harmfulness's normal score."""
    t = suspicion_tests(*(d[k] for k in SINGLE))
    return (t.loss, t.influence, t.harm, t.harm_score)


def metrics(score: np.ndarray, fault: np.ndarray) -> np.ndarray:
    """AUROC and share found after checking 10%, as ``auditor evaluate`` reports them."""
    got = detection_metrics(score, fault, [0.1])
    return np.array([got["auroc"], got["found"][fraction_key(0.1)]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default=",".join(map(str, range(100, 110))))
    parser.add_argument("--cnn-seeds", default="100,101,102,103,104")
    parser.add_argument("--only", action="append", help="judge only these settings")
    parser.add_argument("--cache", default="benchmarks/combine-cache")
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    engine = open_db(str(cache / "scans.db"))
    rules = candidate_rules()
    met = {rule: [] for rule in rules}
    deficit = dict.fromkeys(rules, 0.0)
    names = [
        name
        for name, (_, faults) in settings(MNIST).items()
        if faults.kind != "none" and (not args.only or name in args.only)
    ]
    for name in names:
        seeds = args.cnn_seeds if name.startswith("cnn") else args.seeds
        runs = [cached_scan(name, int(s), cache, engine) for s in seeds.split(",")]
        single = {k: np.array([metrics(d[k], d["fault"]) for d in runs]) for k in SINGLE}
        best = np.max([m.mean(axis=0) for m in single.values()], axis=0)
        zs = [tests(d) for d in runs]
        for rule, fn in rules.items():
            got = np.array([metrics(fn(*t), d["fault"]) for t, d in zip(zs, runs, strict=True)])
            worse = any(
                min(sign_test_worse(got[:, 1], m[:, 1]), wilcoxon_worse(got[:, 1], m[:, 1])) < ALPHA
                for m in single.values()
            )
            if not worse:
                met[rule].append(name)
            gap = np.minimum(got.mean(axis=0) - best, 0.0)
            deficit[rule] += 10 * gap[0] + gap[1]
    for rule in sorted(rules, key=lambda r: (-len(met[r]), -deficit[r])):
        missed = sorted(set(names) - set(met[rule]))
        print(
            f"{len(met[rule])}/{len(names)} not worse  deficit {deficit[rule]:+.4f}  {rule}"
            f"  worse on: {', '.join(missed) or '-'}"
        )


if __name__ == "__main__":
    main()
