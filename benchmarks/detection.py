"""Detection quality over 10 seeds (issue 16): every setting x ranking, the confident-learning
baseline, the flags' precision and recall, and paired one-sided tests of the combined
ranking against every single ranking, through the same library call as ``auditor evaluate``.

Run from the repository root (MNIST idx files in ../shared/data/mnist by default)::

    python benchmarks/detection.py                                  # every setting, seeds 0-9
    python benchmarks/detection.py --only cnn-confusion-10 --seeds 0  # one setting
    python benchmarks/detection.py --markdown-only                  # the tables from --out
    python benchmarks/detection.py --markdown-only --readme         # the README's table

Prints the Markdown tables of docs/quality.md ("Ten seeds") and writes every setting's
summary and per-seed rows to ``--out`` as it goes (a setting already there is skipped
unless ``--again``). The fix experiment is off (``--fix`` turns it on): it retrains 7
models per seed. The confusion settings of one model share their out-of-fold
probabilities (one cross-validation per seed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from auditor.config import DataArgs, ModelArgs, ScanConfig, SolverArgs
from auditor.evaluation.evaluate import EvalArgs, evaluate
from auditor.evaluation.faults import FaultSpec
from auditor.evaluation.metrics import RANKINGS, fraction_key
from auditor.evaluation.paired import ALPHA, combined_against_each
from auditor.store import open_db, runs

MNIST = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")
#: The rankings the combined one is tested against.
SINGLE = ("training loss", "self-influence", "harmfulness", "confident learning")
#: The metric of the paired tests: the share of the faults found after checking 10%.
FOUND = f"found@{fraction_key(0.1)}"


def settings(mnist: str) -> dict[str, tuple[ScanConfig, FaultSpec]]:
    """Every benchmarked setting: name -> (scan configuration, faults)."""
    pair = DataArgs(train=mnist, classes=["1", "7"], test_split=0.2)
    logistic = ModelArgs(weight_decay=1e-3)
    exact = SolverArgs(solver="exact")
    ten = DataArgs(train=mnist, test_split=0.2)
    cnn = ModelArgs(name="cnn", params="last", weight_decay=1e-4)
    one = {
        "flip-5": FaultSpec("flip", 0.05),
        "flip-10": FaultSpec("flip", 0.10),
        "flip-20": FaultSpec("flip", 0.20),
        "class-flip-7>1-20": FaultSpec("class-flip", 0.2, "7", "1"),
        "confusion-5": FaultSpec("confusion", 0.05),
        "confusion-10": FaultSpec("confusion", 0.10),
        "confusion-20": FaultSpec("confusion", 0.20),
        "outlier-5": FaultSpec("outlier", 0.05),
        "none": FaultSpec("none"),
    }
    many = {
        "flip-10": FaultSpec("flip", 0.10),
        "class-flip-7>1-30": FaultSpec("class-flip", 0.3, "7", "1"),
        "confusion-5": FaultSpec("confusion", 0.05),
        "confusion-10": FaultSpec("confusion", 0.10),
        "confusion-20": FaultSpec("confusion", 0.20),
        "none": FaultSpec("none"),
    }
    found = {f"1v7-{k}": (ScanConfig(pair, logistic, exact), f) for k, f in one.items()}
    found |= {f"cnn-{k}": (ScanConfig(ten, cnn, exact), f) for k, f in many.items()}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", default=MNIST)
    parser.add_argument("--seeds", default=",".join(map(str, range(10))))
    parser.add_argument("--only", action="append", help="run only these settings")
    parser.add_argument("--fix", action="store_true", help="run the fix experiment too")
    parser.add_argument("--again", action="store_true", help="rerun settings in --out")
    parser.add_argument("--markdown-only", action="store_true")
    parser.add_argument("--readme", action="store_true", help="print the README's table")
    parser.add_argument("--db", default="benchmarks/detection.db")
    parser.add_argument("--out", default="benchmarks/detection.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    if not args.markdown_only:
        engine = open_db(args.db)
        for name, (config, faults) in settings(args.mnist).items():
            if (args.only and name not in args.only) or (name in results and not args.again):
                continue
            start = time.perf_counter()
            ev = evaluate(engine, config, EvalArgs(faults, seeds=seeds, fix=args.fix))
            keys = ("seed", "ranking", "n_faults", "auroc", "found", "flags", "fix")
            results[name] = {
                "seeds": seeds,
                "seconds": round(time.perf_counter() - start, 1),
                "evaluation_id": ev.id,
                "n_test": runs.get_run(engine, ev.results[0]["run_id"]).n_test,
                "summary": ev.summary,
                "rows": [{k: r[k] for k in keys} for r in ev.results],
            }
            print(f"{name}: {results[name]['seconds']} s", file=sys.stderr, flush=True)
            out.write_text(json.dumps(results, separators=(",", ":"), allow_nan=True))
    print(readme_markdown(results) if args.readme else markdown(results))


def paired(result: dict) -> dict[str, tuple[float, float, float]]:
    """Per single ranking: the mean per-seed difference combined - it of the share found
    after 10%, and the one-sided sign-test and Wilcoxon p-values that combined is worse
    (:func:`auditor.evaluation.paired.combined_against_each`)."""
    return {
        c.other: (c.mean_difference, c.sign_p, c.wilcoxon_p)
        for c in combined_against_each(result["rows"], 0.1)
        if c.other in SINGLE
    }


def markdown(results: dict) -> str:
    """docs/quality.md's tables: detection per setting and ranking; the paired tests; the
    flags (and confident learning's label issues) per setting."""
    detection = [
        "| setting | seeds | faults | "
        + " | ".join(r for r in RANKINGS if r != "random")
        + " | random | time |",
        "| --- | --- | --- |" + " --- |" * (len(RANKINGS) + 1),
    ]
    tests = [
        "| setting | ranking | combined − it, found@10% | sign p | Wilcoxon p | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    flags = [
        "| setting | faults | flags: count | precision | recall "
        "| CL label issues: count | precision | recall |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        s = r["summary"]
        n_faults = next((row["n_faults"] for row in r["rows"]), 0)
        flags.append(
            f"| {name} | {n_faults} | "
            + " | ".join(_flag_cells(s.get(k, {})) for k in ("combined", "confident learning"))
            + " |"
        )
        if n_faults == 0:  # clean data: only the flags count
            continue
        seeds = f"{len(r['seeds'])}"
        cells = []
        for ranking in RANKINGS:
            if ranking not in s:
                cells.append("")
                continue
            auroc, found = s[ranking]["auroc"][0], s[ranking][FOUND][0]
            text = f"{_num(auroc, 3)} / {_num(found, 2)}"
            cells.append(f"**{text}**" if ranking == "combined" else text)
        detection.append(
            f"| {name} | {seeds} | {n_faults} | " + " | ".join(cells) + f" | {r['seconds']:.0f} s |"
        )
        for other, (diff, p_sign, p_wilcoxon) in paired(r).items():
            worse = min(p_sign, p_wilcoxon) < ALPHA
            verdict = "**worse**" if worse else ("better" if diff > 0 else "not worse")
            tests.append(
                f"| {name} | {other} | {diff:+.3f} | {p_sign:.3g} | {p_wilcoxon:.3g} | {verdict} |"
            )
    fixes = fix_markdown(results)
    return "\n".join(
        [
            "AUROC / share found after checking 10%, mean over seeds:",
            "",
            *detection,
            "",
            *tests,
            "",
            *flags,
            *(["", *fixes] if fixes else []),
        ]
    )


def readme_markdown(results: dict) -> str:
    """The README's compact table: per setting with faults, the combined ranking against
    the best single influence-or-loss ranking and confident learning (AUROC / share found
    after 10%), the smallest one-sided p-value that combined is worse than any single
    ranking (sign or Wilcoxon), and the flags' precision / recall."""
    lines = [
        "| setting | faults | combined | best single | confident learning "
        "| combined worse? smallest p | flags: precision / recall |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        s = r["summary"]
        n_faults = next((row["n_faults"] for row in r["rows"]), 0)
        if n_faults == 0:
            continue
        singles = [k for k in SINGLE[:3] if k in s]
        best = max(singles, key=lambda k: (s[k][FOUND][0], s[k]["auroc"][0]))
        tested = paired(r)
        other, (_, p_sign, p_wilcoxon) = min(tested.items(), key=lambda kv: min(kv[1][1:]))
        p = min(p_sign, p_wilcoxon)
        worse = f"**yes** ({other}, p = {p:.2g})" if p < ALPHA else f"no (p = {p:.2g})"
        cl = _pair(s["confident learning"]) if "confident learning" in s else "n/a"
        c = s["combined"]
        flags = "n/a"
        if "flag_precision" in c:
            flags = f"{_num(c['flag_precision'][0], 2)} / {_num(c['flag_recall'][0], 2)}"
        lines.append(
            f"| {name} | {n_faults} | **{_pair(c)}** | {_pair(s[best])} ({best}) | {cl} "
            f"| {worse} | {flags} |"
        )
    return "\n".join(lines)


def _pair(summary: dict) -> str:
    return f"{_num(summary['auroc'][0], 3)} / {_num(summary[FOUND][0], 2)}"


def fix_markdown(results: dict) -> list[str]:
    """The fix experiment's table (settings run with ``--fix``), judged as issue 16 decides:
    by test loss where the faulty model's mean test accuracy is within one test prediction
    of the clean model's, by accuracy elsewhere; met when the combined ranking's fix beats
    random correction at every checked share."""
    lines = [
        "| setting | judged by | checked | combined: loss / accuracy | random: loss / accuracy "
        "| faulty | clean | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        rows = {(row["seed"], row["ranking"]): row["fix"] for row in r["rows"] if row.get("fix")}
        if not rows or not r.get("n_test"):
            continue
        seeds = sorted({seed for seed, _ in rows})
        first = [rows[(seed, "combined")][0] for seed in seeds]
        faulty_acc = _mean([f["faulty_test_accuracy"] for f in first])
        clean_acc = _mean([f["clean_test_accuracy"] for f in first])
        by_loss = abs(faulty_acc - clean_acc) <= 1 / r["n_test"]
        shares = [f["fraction"] for f in rows[(seeds[0], "combined")]]
        for i, share in enumerate(shares):
            mean = {
                (ranking, metric): _mean([rows[(seed, ranking)][i][metric] for seed in seeds])
                for ranking in ("combined", "random")
                for metric in ("test_loss", "test_accuracy")
            }
            if by_loss:
                met = mean[("combined", "test_loss")] < mean[("random", "test_loss")]
            else:
                met = mean[("combined", "test_accuracy")] > mean[("random", "test_accuracy")]
            faulty = f"{_mean([f['faulty_test_loss'] for f in first]):.4f} / {faulty_acc:.4f}"
            clean = f"{_mean([f['clean_test_loss'] for f in first]):.4f} / {clean_acc:.4f}"
            lines.append(
                f"| {name} | {'loss' if by_loss else 'accuracy'} | {share:.0%} | "
                f"{mean[('combined', 'test_loss')]:.4f} / {mean[('combined', 'test_accuracy')]:.4f} | "
                f"{mean[('random', 'test_loss')]:.4f} / {mean[('random', 'test_accuracy')]:.4f} | "
                f"{faulty} | {clean} | {'yes' if met else '**no**'} |"
            )
    return lines if len(lines) > 2 else []


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _flag_cells(s: dict) -> str:
    if "flags" not in s:
        return " | | "
    count, spread = s["flags"]
    return f"{count:.1f} ± {spread:.1f} | {_num(s['flag_precision'][0], 2)} | " + _num(
        s["flag_recall"][0], 2
    )


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


if __name__ == "__main__":
    main()
