"""Fault injection: exact counts, and labels or features changed exactly where reported."""

import numpy as np
import pytest
import torch

from auditor.config import DataArgs
from auditor.errors import ConfigError, DataError
from auditor.evaluation.faults import REGRESSION_OUTLIER, FaultSpec, inject
from auditor.pipeline.scan import load_data
from auditor.sources.toy import toy_linear


@pytest.fixture(scope="module")
def mnist17(mnist_dir):
    train, _ = load_data(DataArgs(train=str(mnist_dir), classes=["1", "7"], test_split=0.2, seed=0))
    return train


@pytest.fixture(scope="module")
def mnist10(mnist_dir):
    train, _ = load_data(DataArgs(train=str(mnist_dir), test_split=0.2, seed=0))
    return train.subset(list(range(1000)))


def changed(a, b):
    return torch.nonzero(a != b).flatten().numpy()


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.2])
def test_uniform_flips_exact_count_and_place(mnist17, rate):
    faulty, index = inject(mnist17, FaultSpec("flip", rate), seed=3)
    assert len(index) == round(rate * len(mnist17))
    np.testing.assert_array_equal(changed(faulty.targets, mnist17.targets), index)
    assert torch.equal(faulty.features, mnist17.features)


def test_ten_class_flips_never_keep_the_label_and_spread(mnist10):
    faulty, index = inject(mnist10, FaultSpec("flip", 0.3), seed=1)
    np.testing.assert_array_equal(changed(faulty.targets, mnist10.targets), index)
    assert len(set(faulty.targets[index].tolist())) == 10


def test_class_conditional_flips_only_source_to_target(mnist17):
    spec = FaultSpec.parse("class-flip:7>1", 0.2)
    faulty, index = inject(mnist17, spec, seed=0)
    sevens = (mnist17.targets == 1).sum().item()  # class "7" is index 1 of ["1", "7"]
    assert len(index) == round(0.2 * sevens)
    np.testing.assert_array_equal(changed(faulty.targets, mnist17.targets), index)
    assert (mnist17.targets[index] == 1).all() and (faulty.targets[index] == 0).all()


def test_outliers_replace_exactly_the_reported_points(mnist17):
    faulty, index = inject(mnist17, FaultSpec("outlier", 0.05), seed=0)
    assert len(index) == round(0.05 * len(mnist17))
    rows = torch.nonzero((faulty.features != mnist17.features).any(dim=1)).flatten().numpy()
    np.testing.assert_array_equal(rows, index)
    img_rows = torch.nonzero((faulty.images != mnist17.images).flatten(1).any(dim=1)).flatten()
    np.testing.assert_array_equal(img_rows.numpy(), index)
    # unit-norm images stay unit norm; labels elsewhere untouched
    assert torch.allclose(faulty.features[index].norm(dim=1), torch.ones(len(index)), atol=1e-5)
    keep = np.setdiff1d(np.arange(len(mnist17)), index)
    assert torch.equal(faulty.targets[keep], mnist17.targets[keep])


def test_regression_outliers_are_y_100():
    train, _ = toy_linear(outliers=())
    faulty, index = inject(train, FaultSpec("outlier", 0.1), seed=0)
    assert len(index) == 2
    np.testing.assert_array_equal(changed(faulty.targets, train.targets), index)
    assert (faulty.targets[index] == REGRESSION_OUTLIER).all()


def test_none_and_errors(mnist17):
    faulty, index = inject(mnist17, FaultSpec("none"), seed=0)
    assert len(index) == 0 and torch.equal(faulty.targets, mnist17.targets)
    train, _ = toy_linear()
    with pytest.raises(DataError, match="needs class labels"):
        inject(train, FaultSpec("flip", 0.1), seed=0)
    with pytest.raises(DataError, match="not one of"):
        inject(mnist17, FaultSpec.parse("class-flip:3>1", 0.1), seed=0)
    with pytest.raises(ConfigError):
        FaultSpec.parse("class-flip:7", 0.1)
    with pytest.raises(ConfigError):
        FaultSpec("flip", 1.5)
