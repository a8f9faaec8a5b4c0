"""Fault injection: exact counts, and labels or features changed exactly where reported."""

import json
import re

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
    with pytest.raises(ConfigError, match="not one of"):
        inject(mnist17, FaultSpec.parse("class-flip:3>1", 0.1), seed=0)
    with pytest.raises(ConfigError):
        FaultSpec.parse("class-flip:7", 0.1)
    with pytest.raises(ConfigError):
        FaultSpec("flip", 1.5)


def test_single_pair_is_stored_as_before_and_draws_the_same_points(mnist17):
    """``class-flip:7>1`` keeps the form stored before several pairs existed, old rows read
    back, and the points it flips are those of the old single-pair code path."""
    spec = FaultSpec.parse("class-flip:7>1", 0.2)
    old_row = {"kind": "class-flip", "rate": 0.2, "source": "7", "target": "1"}
    assert spec.to_dict() == old_row
    assert FaultSpec.from_dict(old_row) == spec == FaultSpec("class-flip", 0.2, "7", "1")
    assert FaultSpec.from_dict({"kind": "flip", "rate": 0.1, "source": None, "target": None})
    assert spec.label() == "class-flip 7>1 20%"
    _, index = inject(mnist17, spec, seed=5)
    pool = np.flatnonzero(mnist17.targets.numpy() == 1)
    rng = np.random.default_rng(5)
    want = np.sort(rng.choice(pool, size=round(0.2 * len(pool)), replace=False))
    np.testing.assert_array_equal(index, want)


def test_several_pairs_flip_each_source_share_to_its_target(mnist10):
    spec = FaultSpec.parse("class-flip:1>7, 7>1,3>8,8>3", 0.2)
    assert spec.pairs == (("1", "7"), ("7", "1"), ("3", "8"), ("8", "3"))
    assert spec.label() == "class-flip 1>7,7>1,3>8,8>3 20%"
    faulty, index = inject(mnist10, spec, seed=2)
    before, after = mnist10.targets.numpy(), faulty.targets.numpy()
    np.testing.assert_array_equal(changed(faulty.targets, mnist10.targets), index)
    mapping = {1: 7, 7: 1, 3: 8, 8: 3}  # MNIST class c is named "c"
    assert set(before[index]) == set(mapping)
    for source, target in mapping.items():
        flipped = index[before[index] == source]
        assert len(flipped) == round(0.2 * (before == source).sum())
        assert (after[flipped] == target).all()
    # the first pair draws exactly what it alone would (one generator, pairs in order)
    _, alone = inject(mnist10, FaultSpec.parse("class-flip:1>7", 0.2), seed=2)
    np.testing.assert_array_equal(index[before[index] == 1], alone)
    # the same spec and seed: the same faults
    again, index2 = inject(mnist10, spec, seed=2)
    assert torch.equal(again.targets, faulty.targets) and np.array_equal(index, index2)


def test_cycle_flips_every_class_to_the_next(mnist10):
    spec = FaultSpec.parse("class-flip:cycle", 0.1)
    assert spec.cycle and spec.label() == "class-flip cycle 10%"
    stored = spec.to_dict()
    assert stored == {
        "kind": "class-flip",
        "rate": 0.1,
        "source": None,
        "target": None,
        "cycle": True,
    }
    assert FaultSpec.from_dict(stored) == spec
    faulty, index = inject(mnist10, spec, seed=0)
    before, after = mnist10.targets.numpy(), faulty.targets.numpy()
    np.testing.assert_array_equal(changed(faulty.targets, mnist10.targets), index)
    np.testing.assert_array_equal(after[index], (before[index] + 1) % 10)
    for c in range(10):
        assert (before[index] == c).sum() == round(0.1 * (before == c).sum())


def test_cycle_on_two_classes_swaps_them(mnist17):
    faulty, index = inject(mnist17, FaultSpec.parse("class-flip:cycle", 0.1), seed=1)
    before = mnist17.targets.numpy()
    np.testing.assert_array_equal(faulty.targets.numpy()[index], 1 - before[index])
    for c in (0, 1):
        assert (before[index] == c).sum() == round(0.1 * (before == c).sum())


def test_several_pairs_stored_and_read_back():
    spec = FaultSpec.parse("class-flip:1>7,7>1", 0.3)
    stored = spec.to_dict()
    assert stored["pairs"] == [["1", "7"], ["7", "1"]] and "cycle" not in stored
    assert FaultSpec.from_dict(json.loads(json.dumps(stored))) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("class-flip:7>7", "a class cannot be flipped to itself"),
        ("class-flip:1>7,3>3", "class-flip 3>3: a class cannot be flipped to itself"),
        ("class-flip:1>7,1>3", "source class '1' is listed twice"),
        ("class-flip:1>7,", "expected class-flip:SOURCE>TARGET"),
        ("class-flip:1-7", "expected class-flip:SOURCE>TARGET"),
        ("class-flip:1>7>3", "expected class-flip:SOURCE>TARGET"),
        ("class-flip:", "expected class-flip:SOURCE>TARGET"),
        ("flip:1>7", "only class-flip takes classes"),
    ],
)
def test_bad_mappings_are_config_errors(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        FaultSpec.parse(text, 0.1)


def test_unknown_class_in_a_mapping_is_a_config_error(mnist17):
    with pytest.raises(ConfigError, match=re.escape("class-flip 1>9: class '9' is not one of")):
        inject(mnist17, FaultSpec.parse("class-flip:7>1,1>9", 0.1), seed=0)
