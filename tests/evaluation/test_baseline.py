"""The confident-learning baseline and the confusion faults: a hand-computed confident
joint, class probabilities against softmax and sigmoid, out-of-fold probabilities against
fits made here, and confusion flips against the probabilities they were drawn from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auditor.config import DataArgs, ModelArgs, ScanConfig
from auditor.data import Dataset
from auditor.errors import DataError
from auditor.evaluation.confident import confident_learning
from auditor.evaluation.cross_val import class_probabilities, fold_of, out_of_fold_probabilities
from auditor.evaluation.faults import FaultSpec, inject
from auditor.models import build_model
from auditor.models.fit import fit
from tests.models.test_underfit import _classes


def test_the_confident_joint_by_hand():
    p = np.array(
        [
            [0.9, 0.1, 0.0],
            [0.7, 0.3, 0.0],
            [0.2, 0.8, 0.0],
            [0.85, 0.15, 0.0],
            [0.1, 0.1, 0.8],
            [0.05, 0.05, 0.9],
        ]
    )
    labels = np.array([0, 0, 1, 1, 2, 2])
    # t_0 = (0.9 + 0.7) / 2 = 0.8, t_1 = (0.8 + 0.15) / 2 = 0.475, t_2 = 0.85
    cl = confident_learning(p, labels)
    np.testing.assert_allclose(cl.thresholds, [0.8, 0.475, 0.85])
    # point 0: admitted {0}, its label; point 1: none (0.7 < 0.8, 0.3 < 0.475): not
    # counted; point 2: admitted {1}, its label; point 3: admitted {0} (0.85 >= 0.8), not
    # its label 1: an issue; point 4: none (0.8 < 0.85); point 5: admitted {2}
    assert cl.issues.tolist() == [False, False, False, True, False, False]
    # issues first, then by self-confidence, least confident first
    order = np.argsort(-cl.scores, kind="stable").tolist()
    assert order == [3, 1, 2, 4, 0, 5]
    np.testing.assert_allclose(cl.scores[3], 1 + (1 - 0.15))


def test_class_probabilities_are_the_softmax_and_the_sigmoid():
    x, _ = _classes(n=50)
    gen = torch.Generator().manual_seed(0)
    binary = build_model("logistic", "classification", x.shape[1], 2)
    theta = torch.randn(binary.n_params, generator=gen)
    p = class_probabilities(binary, binary.outputs(theta, x), 2)
    p1 = torch.sigmoid(binary.outputs(theta, x)[:, 0])
    torch.testing.assert_close(p, torch.stack([1 - p1, p1], dim=1))
    multi = build_model("logistic", "classification", x.shape[1], 4)
    theta = torch.randn(multi.n_params, generator=gen)
    out = multi.outputs(theta, x)
    torch.testing.assert_close(class_probabilities(multi, out, 4), torch.softmax(out, dim=1))


def _dataset(x: torch.Tensor, y: torch.Tensor) -> Dataset:
    return Dataset(
        features=x,
        targets=y,
        ids=[str(i) for i in range(len(y))],
        task="classification",
        class_names=[str(c) for c in range(int(y.max()) + 1)],
    )


def test_out_of_fold_probabilities_come_from_fits_without_the_point():
    x, y = _classes(n=200)
    ds = _dataset(x, y)
    config = ScanConfig(DataArgs(train="memory"), ModelArgs(weight_decay=1e-3))
    found = out_of_fold_probabilities(config, ds, seed=4)
    fold = fold_of(len(y), seed=4)
    assert np.bincount(fold).tolist() == [40] * 5
    model = build_model("logistic", "classification", x.shape[1], 2)
    for f in (0, 3):  # two folds refitted here, cold and tight
        kept, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        theta = fit(model, x[kept], y[kept], 1e-3, grad_tol=1e-7).theta
        p1 = torch.sigmoid(model.outputs(theta, x[held])[:, 0]).double().numpy()
        np.testing.assert_allclose(found[held, 1], p1, atol=1e-4)
    np.testing.assert_allclose(found.sum(axis=1), 1.0, atol=1e-6)


def test_confusion_flips_go_to_the_most_confused_class_on_the_ambiguous_points():
    n, k = 100, 3
    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.integers(0, k, size=n))
    p = np.full((n, k), 0.0)
    p[np.arange(n), y.numpy()] = 1.0  # confidently right...
    ambiguous = np.arange(0, n, 10)  # ...but for ten points, confused with the next class
    p[ambiguous, y.numpy()[ambiguous]] = 0.4
    p[ambiguous, (y.numpy()[ambiguous] + 1) % k] = 0.6
    ds = _dataset(torch.randn(n, 2), y)
    faulty, index = inject(ds, FaultSpec("confusion", 0.1), seed=1, probabilities=p)
    assert index.tolist() == ambiguous.tolist()  # all the weight is on them
    assert torch.equal(faulty.targets[index], (y[index] + 1) % k)
    rest = np.setdiff1d(np.arange(n), index)
    assert torch.equal(faulty.targets[rest], y[rest])
    assert FaultSpec.parse("confusion", 0.2).label() == "confusion 20%"
    with pytest.raises(ValueError, match="class probabilities"):
        inject(ds, FaultSpec("confusion", 0.1), seed=1)
    with pytest.raises(DataError, match="injects no fault"):
        inject(ds, FaultSpec("confusion", 0.001), seed=1, probabilities=p)
