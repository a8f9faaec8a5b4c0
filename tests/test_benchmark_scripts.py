"""The issue-17 benchmark scripts' own parts (their scans run elsewhere: benchmarks/): the
generated CIFAR-like data is deterministic and read by auditor as 10 classes of colour
images, and the MNIST subset is fixed and readable."""

import sys
from pathlib import Path

import numpy as np

from auditor.config import DataArgs
from auditor.pipeline.scan import load_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import cifar_scale  # noqa: E402
import detection  # noqa: E402
import quality_own_model  # noqa: E402


def test_cifar_like_data_is_deterministic_and_read_as_colour_images(tmp_path):
    train, test = cifar_scale.write_data(tmp_path, 60, 20, seed=3)
    x, y = cifar_scale.generate(60, 3001, cifar_scale.class_styles(3))
    again, y2 = cifar_scale.generate(60, 3001, cifar_scale.class_styles(3))
    assert np.array_equal(x, again) and np.array_equal(y, y2)
    assert x.shape == (60, 3, 32, 32) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [6] * 10  # balanced
    with np.load(train) as stored:
        assert np.array_equal(stored["X"], x) and np.array_equal(stored["y"], y)
    ds, ts = load_data(DataArgs(train=str(train), test=str(test)))
    assert ds.class_names == [str(c) for c in range(10)] and len(ts) == 20
    assert ds.images is not None and tuple(ds.images.shape[1:]) == (3, 32, 32)


def test_mnist_subset_is_fixed_and_keeps_ten_classes(tmp_path, mnist_dir):
    path = quality_own_model.mnist_data(mnist_dir, 300, tmp_path)
    first = np.load(path)["y"]
    assert quality_own_model.mnist_data(mnist_dir, 300, tmp_path) == path
    assert np.array_equal(np.load(path)["y"], first) and len(first) == 300
    ds, _ = load_data(DataArgs(train=path, test_split=0.2))
    assert ds.class_names == [str(c) for c in range(10)]
    assert quality_own_model.mnist_data(mnist_dir, None, tmp_path) == str(mnist_dir)


def test_cifar_table_has_a_row_per_scan():
    rows = [
        {
            "scan": "features",
            "timings": {"load": 1.0, "fit": 2.0, "ranking": 3.0},
            "wall_s": 7.0,
            "peak_rss_gb": 1.5,
            "db_bytes": 1234,
            "run_status": "complete",
        },
        {"scan": "cnn-all", "wall_s": 1.0, "peak_rss_gb": 0.5, "error": "Error: boom"},
    ]
    lines = cifar_scale.table(rows, data_bytes=99).splitlines()
    assert lines[0].split(" | ")[1:4] == ["load", "fit", "ranking"]
    assert lines[2].startswith("| features | 1.00 | 2.00 | 3.00 | 7.0 | 1.50 | 1,234 | 99 |")
    assert lines[3].endswith("| Error: boom |") and len(lines) == 4


def test_timed_run_measures_peak_rss_and_stops_at_the_timeout(tmp_path):
    grow = [sys.executable, "-c", "x = bytearray(200_000_000); x[::4096] = b'1' * len(x[::4096])"]
    done = cifar_scale.timed_run(grow, tmp_path / "grow.log", timeout=60)
    assert done["returncode"] == 0 and not done["timed_out"]
    assert 0.18 < done["peak_rss_gb"] < 2
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    stopped = cifar_scale.timed_run(sleep, tmp_path / "sleep.log", timeout=0.5)
    assert stopped["timed_out"] and stopped["returncode"] != 0 and stopped["wall_s"] < 30


def _detection_rows(combined: list[float], loss: list[float], fix: bool = False) -> list[dict]:
    rows = []
    for seed, (c, t) in enumerate(zip(combined, loss, strict=True)):
        for ranking, found in (("combined", c), ("training loss", t), ("random", 0.1)):
            fixed = None
            if fix and ranking in ("combined", "random"):
                better = ranking == "combined"
                fixed = [
                    {
                        "fraction": 0.1,
                        "test_loss": 0.07 if better else 0.15,
                        "test_accuracy": 0.983,
                        "faulty_test_loss": 0.16,
                        "faulty_test_accuracy": 0.986,
                        "clean_test_loss": 0.07,
                        "clean_test_accuracy": 0.984,
                    }
                ]
            rows.append(
                {"seed": seed, "ranking": ranking, "n_faults": 10, "found": {"0.1": found},
                 "fix": fixed}
            )  # fmt: skip
    return rows


def test_detection_tables_test_each_pair_and_judge_the_fix_by_loss_when_accuracy_ties():
    """Combined below training loss on 9 of 10 seeds: worse (sign p = 11/1024); above on
    all ten: better. A faulty model within one test prediction of the clean one is judged
    by test loss (0.986 vs 0.984 with 433 test points)."""
    summary = {
        name: {"auroc": [0.99, 0.0], "found@0.1": [0.9, 0.0]}
        for name in ("combined", "training loss", "random")
    }
    results = {
        "worse": {"seeds": list(range(10)), "seconds": 1.0, "summary": summary,
                  "rows": _detection_rows([0.8] * 9 + [0.95], [0.9] * 10)},
        "better": {"seeds": list(range(10)), "seconds": 1.0, "summary": summary, "n_test": 433,
                   "rows": _detection_rows([0.95] * 10, [0.9] * 10, fix=True)},
    }  # fmt: skip
    worse, better = detection.paired(results["worse"]), detection.paired(results["better"])
    assert worse["training loss"][1] == 11 / 1024 and worse["training loss"][0] < 0
    assert better["training loss"][1] == 1.0 and better["training loss"][0] > 0
    text = detection.markdown(results)
    assert "| worse | training loss | -0.085 | 0.0107 |" in text and "**worse** |" in text
    assert "| better | training loss | +0.050 | 1 | 1 | better |" in text
    fix = [line for line in text.splitlines() if line.startswith("| better | loss | 10% |")]
    assert len(fix) == 1 and fix[0].endswith("| yes |")
    readme = detection.readme_markdown(results).splitlines()
    assert "| **yes** (training loss, p = 0.002) |" in readme[2]
    assert "| no (p = 1) |" in readme[3]
