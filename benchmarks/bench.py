"""Benchmark of a whole ``auditor`` scan, phase by phase, against the targets of issue 4.

Run from the repository root (not part of the test suite; nothing here asserts a time):

    python benchmarks/bench.py                      # cases 1-4 on the CPU, ~5 min on 2 cores
    python benchmarks/bench.py --cases 1,4 --quick  # a smaller case 3 (10,000 x 2,000)
    python benchmarks/bench.py --cases 2,3,5 --device cuda --out gpu-table.md
    python benchmarks/bench.py --cases 1,2 --busy   # a CPU hog on every core beside each case

Cases (each runs in its own subprocess, so its peak RSS is its own):

1. MNIST 1-vs-7 from ``../shared/data/mnist`` (80/20 split), binary logistic regression;
   exact solver and LiSSA (tolerance 1e-4).
2. All 10,000 MNIST images, 10 classes, multinomial logistic regression (7,850 parameters),
   8,000 train x 2,000 test = 16 M pairs; exact solver and LiSSA (tolerance 1e-3).
3. Synthetic logistic data (100 features), 50,000 train x 10,000 test = 500 M pairs
   (``--quick``: 10,000 x 2,000), exact solver.
4. The seed's method re-implemented in torch on case 1: one test point at a time, one
   LiSSA step per call (full-batch Hessian-vector product by double backprop), one
   training gradient per call; a few test points at the depth the product's LiSSA took,
   extrapolated per test point. The target compares it with the product's time per test
   point for the same work (IHVP + pair scores + storage phases); the ratio to the whole
   scan (fit and ranking included) is shown next to it.
5. (GPU-sized) synthetic logistic, 60,000 train x 10,000 test = 600 M pairs, exact solver.

Cases 1-3 also time a *floor* in the same process, right after the scan (issue 15, must
1): the bare influence arithmetic in plain torch on the scan's fitted parameters, with no
fit, no storage and no ranking: per-example gradients of the training and test points, the
class-block Hessian of the logistic loss plus weight decay, its Cholesky factor, the IHVPs
of every test gradient and every pair score (computed in blocks and dropped). The table's
``scan/floor`` is the whole scan's time over it; ``ranking %`` the ranking phase's share
of the scan. Targets (issue 15): scan/floor at most 1.5 for case 2 exact and 2.5 for case 2
LiSSA on a quiet machine, at most 2 for case 2 exact with ``--busy``.

``--busy`` starts one pure-Python busy loop per usable core (``os.sched_getaffinity``)
before the first case and stops them after the last: the scan and its floor then share
the machine with that load, as on a machine where other jobs run. The scan picks its own
thread count (the usable cores, or ``OMP_NUM_THREADS``, which ``--threads`` sets).

Every case drives the library call :func:`auditor.pipeline.scan.scan` into a fresh SQLite file, so
phases (load, fit, gradients, ihvp, pair_scores, storage, ranking) are the product's own
timings; ``report`` is ``auditor report`` (collect + render + write); ``read`` streams every
stored pair back. A tiny warm-up scan first takes one-time library start-up out of the
figures. The table is printed and written between the markers for the device in
``benchmarks/RESULTS.md`` (``--out`` elsewhere, ``--no-write`` nowhere).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MNIST = ROOT.parent / "shared" / "data" / "mnist"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
PHASES = ("load", "fit", "gradients", "ihvp", "pair_scores", "storage", "ranking", "report")
#: Test points per block of the floor's pair scores (as the scan's default ``--chunk``).
FLOOR_BLOCK = 256
GB = 1024**3
#: The weight decay of every benchmarked scan: the default before ``--weight-decay auto``
#: (issue 19), which every recorded figure used; auto would give case 2 1e-4, where LiSSA
#: needs more than 5,000 steps.
BENCH_WEIGHT_DECAY = 0.01


# ----------------------------------------------------------------------------- cases


def case_specs(case: str, quick: bool) -> list[dict]:
    """The scans of one case: name, data, solver settings, and its targets."""
    mnist = str(MNIST)
    if case == "1":
        data = {"train": mnist, "classes": ["1", "7"], "test_split": 0.2}
        return [
            {
                "name": "1 MNIST 1v7 exact",
                "data": data,
                "solver": {"solver": "exact"},
                "targets": {"scan_s": 3.0},
            },
            {
                "name": "1 MNIST 1v7 lissa",
                "data": data,
                "solver": {"solver": "lissa"},
                "targets": {"scan_s": 10.0, "residual": 1e-4},
            },
        ]
    if case == "2":
        data = {"train": mnist, "test_split": 0.2}
        storage = {"write_mps": 5.0, "read_mps": 20.0, "bytes_per_pair": 5.0}
        return [
            {
                "name": "2 MNIST 10-class exact",
                "data": data,
                "solver": {"solver": "exact"},
                "targets": {"scan_s": 60.0, "scan_floor": 1.5, **storage},
                "busy_targets": {"scan_floor": 2.0},
            },
            {
                "name": "2 MNIST 10-class lissa",
                "data": data,
                "solver": {"solver": "lissa", "tol": 1e-3},
                "targets": {"scan_s": 240.0, "scan_floor": 2.5, "residual": 1e-3},
            },
        ]
    if case in ("3", "5"):
        n_train, n_test = (60_000, 10_000) if case == "5" else (50_000, 10_000)
        if quick and case == "3":
            n_train, n_test = 10_000, 2_000
        return [
            {
                "name": f"{case} synthetic {n_train // 1000}k x {n_test // 1000}k exact",
                "synthetic": [n_train, n_test],
                "solver": {"solver": "exact"},
                "targets": {
                    "rss_gb": 4.0,
                    "write_mps": 5.0,
                    "read_mps": 20.0,
                    "bytes_per_pair": 5.0,
                },
            },
        ]
    if case == "4":
        return [
            {
                "name": "4 seed method vs product (case 1)",
                "seed_method": True,
                "targets": {"speedup": 1000.0},
            }
        ]
    raise SystemExit(f"unknown case {case!r}; cases are 1, 2, 3, 4, 5")


def synthetic(dirname: Path, n_train: int, n_test: int, d: int = 100, seed: int = 0):
    """Logistic data: Gaussian features, labels from a random linear model, 5% flipped."""
    import numpy as np

    rng = np.random.default_rng(seed)
    w = rng.standard_normal(d)
    paths = []
    for name, n in (("train", n_train), ("test", n_test)):
        x = rng.standard_normal((n, d)).astype(np.float32)
        y = (x @ w + 0.5 * rng.standard_normal(n) > 0).astype(np.int64)
        flip = rng.random(n) < 0.05
        y[flip] = 1 - y[flip]
        path = dirname / f"{name}.npz"
        np.savez(path, X=x, y=y)
        paths.append(str(path))
    return paths


# ----------------------------------------------------------------------------- child


def run_scan_case(spec: dict, device: str, workdir: Path) -> dict:
    """One timed scan (+ report + read-back) in this process; returns the table row."""
    from auditor.config import DataArgs, ModelArgs, ScanConfig, SolverArgs
    from auditor.pipeline.scan import scan
    from auditor.report.collect import collect
    from auditor.report.render import render_report
    from auditor.store import open_db, pairs, runs

    if "synthetic" in spec:
        train, test = synthetic(workdir, *spec["synthetic"])
        data = DataArgs(train=train, test=test, normalize="none")
    else:
        data = DataArgs(**spec["data"])
    config = ScanConfig(
        data=data,
        model=ModelArgs(weight_decay=BENCH_WEIGHT_DECAY),
        solver=SolverArgs(**spec["solver"]),
        device=device,
    )
    db = workdir / "bench.db"
    engine = open_db(str(db))
    start = time.perf_counter()
    result = scan(engine, config)
    scan_s = time.perf_counter() - start
    timings = dict(result.timings)

    start = time.perf_counter()
    html = render_report(collect(engine, result.run_id))
    (workdir / "report.html").write_text(html, encoding="utf-8")
    timings["report"] = time.perf_counter() - start

    start = time.perf_counter()
    read = sum(block.size for _, block in pairs.iter_pair_blocks(engine, result.run_id))
    read_s = time.perf_counter() - start
    run = runs.get_run(engine, result.run_id, with_theta=True)
    solver = run.as_dict()["solver"]
    floor_s = floor_of_run(config, run, device)
    engine.dispose()
    return {
        "floor_s": floor_s,
        "scan_floor": scan_s / floor_s,
        "timings": timings,
        "scan_s": scan_s,
        "pairs": result.n_pairs,
        "read_pairs": read,
        "write_mps": result.n_pairs / timings["storage"] / 1e6,
        "read_mps": read / read_s / 1e6,
        "bytes_per_pair": db.stat().st_size / result.n_pairs,
        "residual": solver["residual_max"],
        "iterations": solver["iterations"],
        "converged": solver["converged"],
        "warnings": result.warnings,
    }


def floor_of_run(config, run, device: str) -> float:
    """:func:`influence_floor` on the data of ``config`` at the run's fitted parameters."""
    import torch

    from auditor.pipeline.loading import dataset_tensors, load_data
    from auditor.store import runs

    train, test = load_data(config.data)
    x, y = dataset_tensors(train, device, torch.float32)
    x_test, y_test = dataset_tensors(test, device, torch.float32)
    theta = runs.theta_from_bytes(run.theta, "float32").to(device)
    classes = len(train.class_names or [])
    return influence_floor(
        x, y, x_test, y_test, theta, run.config["model"]["weight_decay"], classes
    )


def influence_floor(x, y, x_test, y_test, theta, weight_decay: float, classes: int) -> float:
    """Seconds of the bare influence arithmetic of a (binary or multinomial) logistic
    regression at ``theta``, in plain float32 torch: :func:`logistic_influence_terms`, the
    Cholesky factor of the damped Hessian, the IHVPs ``(p, m)`` and every pair score
    ``G S`` in blocks of :data:`FLOOR_BLOCK` test points. Nothing is stored, no fit, no
    ranking."""
    import torch

    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    hessian, g_train, g_test = logistic_influence_terms(
        x, y, x_test, y_test, theta, weight_decay, classes
    )
    factor = torch.linalg.cholesky(hessian)
    ihvps = torch.cholesky_solve(g_test.T.contiguous(), factor)
    for j0 in range(0, ihvps.shape[1], FLOOR_BLOCK):
        scores = -(g_train @ ihvps[:, j0 : j0 + FLOOR_BLOCK])
        del scores
    sync()
    return time.perf_counter() - start


def logistic_influence_terms(x, y, x_test, y_test, theta, weight_decay: float, classes: int):
    """The damped class-block Hessian ``(p, p)`` of a (binary or multinomial) logistic
    regression at ``theta`` and the per-example gradients of the training ``(n, p)`` and
    test ``(m, p)`` points, in plain torch in ``x``'s dtype: written here on purpose, apart
    from ``auditor.models.glm``, so that the floor (and ``peers.py``'s float64 reference)
    checks the product rather than repeating it."""
    import torch

    def with_bias(a):
        return torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype, device=a.device)], 1)

    xb, xtb = with_bias(x), with_bias(x_test)
    theta = theta.to(x.dtype)
    n, d1 = xb.shape
    if classes == 2:  # theta (d + 1,): the logit of the second class
        prob = torch.sigmoid(xb @ theta)
        hessian = (xb * (prob * (1 - prob))[:, None]).T @ xb / n
        g_train = (prob - y.to(prob.dtype))[:, None] * xb
        g_test = (torch.sigmoid(xtb @ theta) - y_test.to(prob.dtype))[:, None] * xtb
    else:  # theta (d + 1) x k, row-major
        w = theta.reshape(d1, classes)
        soft = torch.softmax(xb @ w, dim=1)
        blocks = torch.empty(d1, classes, d1, classes, dtype=x.dtype, device=x.device)
        for c in range(classes):
            for e in range(c, classes):
                weights = soft[:, c] * (float(c == e) - soft[:, e])
                block = (xb * weights[:, None]).T @ xb / n
                blocks[:, c, :, e] = block
                blocks[:, e, :, c] = block.T
        hessian = blocks.reshape(d1 * classes, d1 * classes)

        def grads(a, labels):
            residual = torch.softmax(a @ w, dim=1)
            residual[torch.arange(a.shape[0]), labels] -= 1
            return (a[:, :, None] * residual[:, None, :]).reshape(a.shape[0], -1)

        g_train, g_test = grads(xb, y), grads(xtb, y_test)
    hessian.diagonal().add_(weight_decay)
    return hessian, g_train, g_test


def seed_method(device: str, workdir: Path, n_points: int = 3) -> dict:
    """Case 4: the seed's loop (one test point, one LiSSA step and one train gradient per
    call) against the product's whole LiSSA scan of case 1, at the product's depth."""
    import numpy as np
    import torch

    from auditor.config import DataArgs, ModelArgs, ScanConfig, SolverArgs
    from auditor.models import build_model
    from auditor.models.fit import risk
    from auditor.pipeline.scan import dataset_tensors, load_data, scan
    from auditor.store import open_db, pairs, runs

    data = DataArgs(train=str(MNIST), classes=["1", "7"], test_split=0.2)
    engine = open_db(str(workdir / "bench.db"))
    start = time.perf_counter()
    model = ModelArgs(weight_decay=BENCH_WEIGHT_DECAY)
    result = scan(engine, ScanConfig(data, model, SolverArgs(solver="lissa"), device=device))
    product_s = time.perf_counter() - start
    run = runs.get_run(engine, result.run_id, with_theta=True).as_dict()
    depth, scale = run["solver"]["iterations"], run["solver"]["scale"]
    stored = pairs.read_pair_scores(engine, result.run_id)

    train, test = load_data(data)
    dev = torch.device(device)
    x, y = dataset_tensors(train, dev, torch.float32)
    x_test, y_test = dataset_tensors(test, dev, torch.float32)
    model = build_model("logistic", train.task, train.n_features, train.n_classes)
    theta = torch.from_numpy(np.frombuffer(run["theta"], dtype=np.float32).copy()).to(dev)
    wd = run["config"]["model"]["weight_decay"]

    def hvp(v: torch.Tensor) -> torch.Tensor:  # one sess.run of the seed's hessian_vector
        t = theta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(risk(model, t, x, y, wd), t, create_graph=True)
        (hv,) = torch.autograd.grad(g @ v, t)
        return hv

    def example_grad(xi, yi) -> torch.Tensor:  # one sess.run of grad_total_loss_op
        t = theta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model.loss(model.outputs(t, xi), yi).mean(), t)
        return g

    picks = np.linspace(0, len(test) - 1, n_points).astype(int)
    lissa_s = score_s = 0.0
    agreement = 0.0
    for j in picks:
        start = time.perf_counter()
        v = example_grad(x_test[j : j + 1], y_test[j : j + 1])
        h = v.clone()
        for _ in range(depth):
            h = v + h - hvp(h) / scale  # damping 0, as in the product's run
        s_test = h / scale
        lissa_s += time.perf_counter() - start
        start = time.perf_counter()
        diffs = np.empty(len(train), dtype=np.float64)
        for i in range(len(train)):
            diffs[i] = float(s_test @ example_grad(x[i : i + 1], y[i : i + 1])) / len(train)
        score_s += time.perf_counter() - start
        # seed's predicted_loss_diffs = g_i . s_test / n = -I / n in the product's convention
        product = -stored[j].astype(np.float64) / len(train)
        agreement = max(agreement, float(np.abs(diffs - product).max() / np.abs(product).max()))
    seed_per_point = (lissa_s + score_s) / n_points
    product_per_point = product_s / len(test)
    # Like for like: the seed's figure covers the IHVP and the scoring of a test point, so
    # the product's covers its IHVP phase (which also solves the training points'
    # self-influences), pair scores and storage; the whole scan (fit, ranking) is also shown.
    same_work = sum(result.timings[k] for k in ("ihvp", "pair_scores", "storage"))
    return {
        "timings": result.timings,
        "scan_s": product_s,
        "pairs": result.n_pairs,
        "iterations": depth,
        "residual": run["solver"]["residual_max"],
        "seed_lissa_s": lissa_s / n_points,
        "seed_score_s": score_s / n_points,
        "seed_per_point_s": seed_per_point,
        "product_per_point_s": product_per_point,
        "product_work_per_point_s": same_work / len(test),
        "speedup": seed_per_point / (same_work / len(test)),
        "speedup_scan": seed_per_point / product_per_point,
        "agreement": agreement,
        "warnings": [],
    }


def child(spec: dict, device: str) -> None:
    """Run one spec after a warm-up, print its row as JSON on the last line."""
    from auditor.config import DataArgs, ModelArgs, ScanConfig, SolverArgs
    from auditor.pipeline.scan import scan
    from auditor.store import open_db

    with tempfile.TemporaryDirectory(prefix="auditor-bench-") as tmp:
        scan(
            open_db(str(Path(tmp) / "warm.db")),
            ScanConfig(
                data=DataArgs(train="toy-linear"),
                model=ModelArgs(weight_decay=BENCH_WEIGHT_DECAY),
                solver=SolverArgs(solver="lissa"),
                device=device,
            ),
        )
        workdir = Path(tmp)
        row = (
            seed_method(device, workdir)
            if spec.get("seed_method")
            else run_scan_case(spec, device, workdir)
        )
    if device.startswith("cuda"):
        import torch

        row["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / GB
    row["rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
    print(json.dumps(row))


# ----------------------------------------------------------------------------- table


def verdicts(spec: dict, row: dict) -> list[str]:
    """``name<=target pass|miss`` for each target of the spec."""
    out = []
    for key, target in spec["targets"].items():
        value = row.get(key)
        if value is None:
            out.append(f"{key} n/a")
            continue
        ok = value >= target if key in ("write_mps", "read_mps", "speedup") else value <= target
        sign = ">=" if key in ("write_mps", "read_mps", "speedup") else "<="
        out.append(f"{key}{sign}{target:g} {'pass' if ok else 'MISS'}")
    return out


def fmt(value, digits=2) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value != 0 and (abs(value) < 0.01 or abs(value) >= 1e5):
            return f"{value:.1e}"
        return f"{value:.{digits}f}"
    return str(value)


def table(rows: list[tuple[dict, dict]]) -> str:
    head = [
        "case",
        *PHASES,
        "scan s",
        "ranking %",
        "floor s",
        "scan/floor",
        "Mpairs/s",
        "write M/s",
        "read M/s",
        "B/pair",
        "peak RSS GB",
        "residual (steps)",
        "targets",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for spec, row in rows:
        if "error" in row:
            lines.append(f"| {spec['name']} | failed: {row['error']} |")
            continue
        t = row["timings"]
        extra = ""
        if spec.get("seed_method"):
            extra = (
                f"seed {row['seed_per_point_s']:.3f} s/test point (LiSSA "
                f"{row['seed_lissa_s']:.3f} + scoring {row['seed_score_s']:.3f}); product "
                f"{row['product_work_per_point_s'] * 1e3:.2f} ms/test point for the same work "
                f"(IHVP + scores + storage): {row['speedup']:.0f}x; whole scan "
                f"{row['product_per_point_s'] * 1e3:.2f} ms/test point: "
                f"{row['speedup_scan']:.0f}x; seed vs stored scores: max rel. diff "
                f"{row['agreement']:.1e}; "
            )
        cells = [
            spec["name"],
            *(fmt(t.get(p)) for p in PHASES),
            fmt(row["scan_s"]),
            f"{100 * t['ranking'] / row['scan_s']:.0f}" if "ranking" in t else "",
            fmt(row.get("floor_s")),
            fmt(row["scan_s"] / row["floor_s"], 1) if row.get("floor_s") else "",
            fmt(row["pairs"] / row["scan_s"] / 1e6, 1),
            fmt(row.get("write_mps"), 1),
            fmt(row.get("read_mps"), 1),
            fmt(row.get("bytes_per_pair")),
            fmt(row["rss_gb"])
            + (f" (GPU {row['gpu_peak_gb']:.1f})" if "gpu_peak_gb" in row else ""),
            f"{row['residual']:.1e} ({row['iterations']})",
            extra + ", ".join(verdicts(spec, row)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine(device: str, threads: int | None = None) -> str:
    import torch

    if threads:
        torch.set_num_threads(threads)
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = (
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores "
        f"({cpu}), torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, device {device}"
    )
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f" ({torch.cuda.get_device_name()})"
    load = os.getloadavg()
    return text + f"; load average before the run {load[0]:.1f}"


def write_results(
    path: Path, device: str, header: str, body: str, command: str, busy: bool = False
) -> None:
    """Replace this device's section of ``path`` (between markers; a busy run has its
    own), keeping the rest."""
    kind = ("cuda" if device.startswith("cuda") else "cpu") + ("-busy" if busy else "")
    start, end = f"<!-- bench:{kind}:start -->", f"<!-- bench:{kind}:end -->"
    section = f"{start}\nMachine: {header}\n\nCommand: `{command}`\n\n{body}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + f"\n\n## Latest run ({kind})\n\n{section}\n"
    path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="1,2,3,4", help="comma-separated: 1,2,3,4,5")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="case 3 at 10,000 x 2,000")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="only print the table")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per scan")
    parser.add_argument(
        "--threads", type=int, help="torch threads per scan (default: torch's, = cores)"
    )
    parser.add_argument(
        "--busy", action="store_true", help="run a CPU hog on every usable core beside the cases"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child), args.device)
        return

    hogs = start_hogs() if args.busy else []
    try:
        run_cases(args, hogs)
    finally:
        for hog in hogs:
            hog.kill()


def start_hogs() -> list[subprocess.Popen]:
    """One busy-looping Python process per usable core, started and given a second to
    spin up."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores or 1)]
    time.sleep(1.0)
    return hogs


def run_cases(args: argparse.Namespace, hogs: list[subprocess.Popen]) -> None:
    """Each case in its own child process; the table printed and written."""
    header = machine(args.device, args.threads)
    if hogs:
        header += f"; busy: {len(hogs)} CPU hogs beside every case"
    print(f"# {header}", flush=True)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)  # the scan's thread count follows it
    rows = []
    for case in args.cases.split(","):
        for spec in case_specs(case.strip(), args.quick):
            if hogs:
                spec["targets"].update(spec.get("busy_targets", {}))
            command = [
                sys.executable,
                __file__,
                "--device",
                args.device,
                "--child",
                json.dumps(spec),
            ]
            print(f"running {spec['name']} ...", flush=True)
            try:
                done = subprocess.run(
                    command,
                    capture_output=True,
                    text=True,
                    timeout=args.timeout,
                    cwd=ROOT,
                    env=env,
                )
                if done.returncode != 0:
                    error = (done.stderr.strip().splitlines() or ["?"])[-1]
                    row = {"error": f"exit {done.returncode}: {error}"}
                else:
                    row = json.loads(done.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                row = {"error": f"timed out after {args.timeout:g} s"}
            rows.append((spec, row))
            print(table([(spec, row)]).splitlines()[-1], flush=True)
    body = table(rows)
    print(body)
    if not args.no_write:
        command = "python benchmarks/bench.py " + " ".join(sys.argv[1:])
        write_results(args.out, args.device, header, body, command.strip(), bool(hogs))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
