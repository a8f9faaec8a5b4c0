"""Issue 17, must 4: a CIFAR-sized scan, timed phase by phase, with its peak memory and
its bytes on disk.

Run from the repository root (offline; nothing is downloaded)::

    python benchmarks/cifar_scale.py                                 # 50,000 x 10,000
    python benchmarks/cifar_scale.py --train 2000 --test 500         # a quick check on a CPU
    python benchmarks/cifar_scale.py --device cuda --solver ekfac --out gpu-cifar

1. Generates a CIFAR-like colour data set (:func:`generate`): 32x32x3 uint8 images of 10
   classes, deterministic from ``--seed``. Each class has its own colour, stripe frequency
   and stripe angle, and a blob of its second colour at a random place, all under pixel
   noise: a model learns much, not all. It is written as two uncompressed NPZ files
   (``X`` of shape ``(n, 3, 32, 32)`` uint8, ``y`` int64): auditor reads NPZ members
   straight into arrays, without decoding one image file per point as for an image folder.
2. Runs two ``auditor scan`` subprocesses on it, one after the other, each into its own
   SQLite file:

   a. ``features``: ``--features resnet18 --weights W --features-size 32 --solver exact``
      (512-d embeddings and an exact logistic head); ``W`` is a randomly initialised
      torchvision resnet18 saved to ``OUT`` (no download, as in the tests);
   b. ``cnn-all``: ``--model cnn --params all --solver SOLVER --damping D [--tol T]``
      (influence over every weight of the small CNN; ``--solver`` cg until EK-FAC lands).

Each scan's wall time, peak RSS (``/usr/bin/time -v`` when present, else the child's own
rusage from :func:`os.wait4`), the phase timings the run stored, and the database's bytes
(with any ``-wal`` file) go to a Markdown table on stdout and to ``OUT/cifar_scale.json``.
Peak RSS is host memory of the scan process; on CUDA the GPU's own memory is not in it.

With ``--solver cg`` the CNN's Hessian over every weight is often indefinite (the fit is no
exact optimum): at 200 x 50 on a CPU, ``--damping 0.01`` stopped with "raise --damping to at
least 0.08", so give ``--damping 0.1`` or more with cg. A failed scan is a table row with
its error; the script then exits 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Phases in the order a scan runs them; a stored timing not named here is shown after.
PHASES = ("load", "embed", "fit", "gradients", "ihvp", "pair_scores", "storage", "ranking")
GIB = 1024**3
TIME = "/usr/bin/time"


# ----------------------------------------------------------------------------- data


def class_styles(seed: int, k: int = 10) -> dict[str, np.ndarray]:
    """Per class: a base RGB colour ``(k, 3)`` in [0, 1] that class ``c`` shares with
    class ``c + k/2`` (so colour alone cannot tell them apart), a blob colour ``(k, 3)``, a
    stripe frequency ``(k,)`` in cycles per image and a stripe angle ``(k,)`` in radians."""
    rng = np.random.default_rng(seed)
    half = rng.uniform(0.2, 0.8, size=((k + 1) // 2, 3))
    return {
        "colour": np.concatenate([half, half])[:k],
        "blob": rng.uniform(0.0, 1.0, size=(k, 3)),
        "freq": rng.uniform(1.5, 6.0, size=k),
        "angle": rng.permutation(np.linspace(0, np.pi, k, endpoint=False)),
    }


def generate(n: int, seed: int, styles: dict[str, np.ndarray], chunk: int = 5000):
    """``(X (n, 3, 32, 32) uint8, y (n,) int64)``: balanced classes in random order.

    Image = colour * (0.45 + 0.25 * class stripes of random phase) + a Gaussian blob of
    the class's blob colour at a random place, width and strength + N(0, 0.15) noise,
    clipped to [0, 1]; the colour is the class's base colour jittered per image (sd 0.1).
    """
    rng = np.random.default_rng(seed)
    k = len(styles["freq"])
    y = rng.permutation(np.arange(n) % k).astype(np.int64)
    out = np.empty((n, 3, 32, 32), dtype=np.uint8)
    grid = (np.arange(32, dtype=np.float32) + 0.5) / 32
    yy, xx = np.meshgrid(grid, grid, indexing="ij")  # (32, 32)
    for start in range(0, n, chunk):
        c = y[start : start + chunk]
        m = len(c)
        angle, freq = styles["angle"][c], styles["freq"][c]
        phase = rng.uniform(0, 2 * np.pi, size=m)
        proj = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy
        stripes = np.sin(2 * np.pi * freq[:, None, None] * proj + phase[:, None, None])
        centre = rng.uniform(0.2, 0.8, size=(m, 2))
        width = rng.uniform(0.08, 0.18, size=m)
        d2 = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2
        blob = np.exp(-d2 / (2 * width[:, None, None] ** 2))  # (m, 32, 32)
        colour = styles["colour"][c] + 0.1 * rng.standard_normal((m, 3))
        strength = rng.uniform(0.2, 0.6, size=m)
        img = (
            colour[:, :, None, None] * (0.45 + 0.25 * stripes[:, None])
            + (strength[:, None] * (styles["blob"][c] - 0.3))[:, :, None, None] * blob[:, None]
            + 0.15 * rng.standard_normal((m, 3, 32, 32))
        )
        out[start : start + m] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return out, y


def write_data(folder: Path, n_train: int, n_test: int, seed: int) -> tuple[Path, Path]:
    """Write ``train.npz`` and ``test.npz`` (uncompressed) into ``folder``."""
    styles = class_styles(seed)
    paths = []
    for name, n, offset in (("train", n_train, 1), ("test", n_test, 2)):
        x, y = generate(n, seed * 1000 + offset, styles)
        path = folder / f"{name}.npz"
        np.savez(path, X=x, y=y)
        paths.append(path)
    return paths[0], paths[1]


def write_weights(path: Path) -> Path:
    """A randomly initialised torchvision resnet18's state dict (as tests/models do)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


# ----------------------------------------------------------------------------- scans


def scan_argv(name: str, args: argparse.Namespace, train: Path, test: Path, weights: Path):
    """The ``auditor scan`` options of scan ``name`` (without ``--db``)."""
    data = ["--train", str(train), "--test", str(test), "--device", args.device]
    if name == "features":
        return [
            *data,
            *("--features", "resnet18", "--weights", str(weights)),
            *("--features-size", "32", "--solver", "exact"),
        ]
    if name == "cnn-all":
        solve = ["--solver", args.solver, "--damping", str(args.damping)]
        if args.tol is not None:
            solve += ["--tol", str(args.tol)]
        return [*data, "--model", "cnn", "--params", "all", *solve]
    raise SystemExit(f"unknown scan {name!r}; scans are features, cnn-all")


def timed_run(argv: list[str], log: Path, timeout: float) -> dict:
    """Run ``argv`` to the end; wall seconds, exit status and peak RSS (GiB) of it."""
    use_time = Path(TIME).exists()
    command = [TIME, "-v", *argv] if use_time else argv
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True
        )
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() > start + timeout:
                    os.killpg(proc.pid, signal.SIGKILL)  # the scan too, not only /usr/bin/time
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.05)
        except BaseException:  # Ctrl-C or SIGTERM of this script: stop the scan with it
            os.killpg(proc.pid, signal.SIGTERM)
            raise
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    wall = time.perf_counter() - start
    text = log.read_text(errors="replace")
    rss_kb = usage.ru_maxrss  # Linux: KiB; the child's and its reaped children's maximum
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text) if use_time else None
    if found:
        rss_kb = int(found.group(1))
    timed_out = wall > timeout
    return {
        "wall_s": wall,
        "returncode": proc.returncode,
        "timed_out": timed_out,
        # killed at the timeout, /usr/bin/time reports nothing: the scan's peak is unknown
        "peak_rss_gb": None if timed_out and use_time else rss_kb * 1024 / GIB,
        "rss_from": "/usr/bin/time -v" if found else "os.wait4 rusage",
    }


def stored_run(db: Path) -> dict:
    """The newest run in ``db``: its status, timings, pair count and solver record."""
    from auditor.store import open_db, runs

    engine = open_db(str(db), create=False)
    try:
        run = runs.get_run(engine, runs.latest_run_id(engine)).as_dict()
    finally:
        engine.dispose()
    return {
        "run_status": run["status"],
        "timings": run["timings"] or {},
        "n_train": run["n_train"],
        "n_test": run["n_test"],
        "n_params": run["n_params"],
        "model": run["model"],
        "solver": run["solver"],
        "metrics": run["metrics"],
    }


def db_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())


def run_scan(name: str, args, train: Path, test: Path, weights: Path) -> dict:
    db = args.out / f"{name}.db"
    for stale in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        stale.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "auditor", "scan", *scan_argv(name, args, train, test, weights)]
    argv += ["--db", str(db)]
    print(f"running {name}: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    row = {
        "scan": name,
        "argv": argv[1:],
        **timed_run(argv, args.out / f"{name}.log", args.timeout),
    }
    if row["returncode"] != 0 and not row["timed_out"]:
        tail = (args.out / f"{name}.log").read_text(errors="replace").strip().splitlines()
        errors = [line for line in tail if line.startswith("Error") or "rror:" in line]
        row["error"] = (errors or tail or ["?"])[-1][:300]
    if db.exists():
        row.update(stored_run(db))
        row["db_bytes"] = db_bytes(db)
    return row


# ----------------------------------------------------------------------------- table


def fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict], data_bytes: int) -> str:
    """One Markdown row per scan: phase seconds, whole seconds, peak RSS, bytes on disk."""
    extra = sorted({k for r in rows for k in r.get("timings", {})} - set(PHASES))
    phases = [p for p in PHASES if any(p in r.get("timings", {}) for r in rows)] + extra
    head = ["scan", *phases, "scan s (wall)", "peak RSS GiB", "db bytes", "data bytes", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        t = r.get("timings", {})
        status = r.get("error") or r.get("run_status", "no run")
        if r.get("timed_out"):
            status = f"timed out after {r['wall_s']:.0f} s"
        cells = [
            r["scan"],
            *(fmt(t.get(p)) for p in phases),
            fmt(r["wall_s"], 1),
            fmt(r["peak_rss_gb"]),
            f"{r.get('db_bytes', 0):,}",
            f"{data_bytes:,}",
            str(status),
        ]
        lines.append("| " + " | ".join(cells) + " |")
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
    parser.add_argument("--train", type=int, default=50_000, help="training images")
    parser.add_argument("--test", type=int, default=10_000, help="test images")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (auditor's --device)")
    parser.add_argument("--solver", default="cg", help="solver of the cnn-all scan")
    parser.add_argument("--damping", type=float, default=0.0, help="damping of cnn-all")
    parser.add_argument("--tol", type=float, help="solver tolerance of cnn-all (auditor's default)")
    parser.add_argument("--scans", default="features,cnn-all", help="features, cnn-all")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/data/cifar_scale"))
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per scan")
    parser.add_argument("--keep-data", action="store_true", help="reuse OUT's data files")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.out = args.out.resolve()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: stops the scan too

    train, test = args.out / "train.npz", args.out / "test.npz"
    start = time.perf_counter()
    if not (args.keep_data and train.exists() and test.exists()):
        train, test = write_data(args.out, args.train, args.test, args.seed)
    weights = write_weights(args.out / "resnet18-random.pt")
    generate_s = time.perf_counter() - start
    data_bytes = train.stat().st_size + test.stat().st_size
    print(f"data: {train}, {test} ({data_bytes:,} bytes, {generate_s:.1f} s)", file=sys.stderr)

    rows = [run_scan(name.strip(), args, train, test, weights) for name in args.scans.split(",")]
    body = table(rows, data_bytes)
    print(body)
    result = {
        "machine": machine(args.device),
        "command": "python benchmarks/cifar_scale.py " + " ".join(sys.argv[1:]),
        "train": args.train,
        "test": args.test,
        "data": {
            "format": "npz (uncompressed, X uint8 (n, 3, 32, 32), y int64)",
            "train": str(train),
            "test": str(test),
            "bytes": data_bytes,
            "generate_s": generate_s,
        },
        "time_tool": TIME if Path(TIME).exists() else "os.wait4",
        "scans": rows,
        "table": body,
    }
    (args.out / "cifar_scale.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.out / 'cifar_scale.json'}", file=sys.stderr)
    if any(r["returncode"] != 0 for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
