"""Class names and class selection, shared by every classification source."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from auditor.data import Dataset
from auditor.errors import ConfigError, DataError


def sort_class_names(names: set[str] | Sequence[str]) -> list[str]:
    """Distinct class names, numerically sorted if all are integers, else lexically."""
    distinct = set(names)
    if all(_is_int(name) for name in distinct):
        return sorted(distinct, key=lambda name: (int(name), name))
    return sorted(distinct)


def canonical_labels(values: Sequence[str]) -> list[str]:
    """Stripped label strings; if all are integers, written canonically (``"07"`` -> ``"7"``)."""
    stripped = [v.strip() for v in values]
    if stripped and all(_is_int(v) for v in stripped):
        return [str(int(v)) for v in stripped]
    return stripped


def encode_labels(values: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    """Turn per-point class names into class indices.

    Args:
        values: ``n`` class names, one per point.

    Returns:
        ``(n,)`` int64 indices into the class names, and the sorted class names.
    """
    class_names = sort_class_names(values)
    index = {name: i for i, name in enumerate(class_names)}
    return torch.tensor([index[v] for v in values], dtype=torch.long), class_names


def check_classes(classes: Sequence[str] | None) -> list[str] | None:
    """Validate a ``classes`` option: stripped, non-empty, no duplicates (else ConfigError)."""
    if classes is None:
        return None
    if isinstance(classes, str):
        raise ConfigError("classes must be a list of class names, not one string")
    cleaned = [str(c).strip() for c in classes]
    if not cleaned or any(not c for c in cleaned):
        raise ConfigError(f"classes must be a non-empty list of non-empty names, got {classes!r}")
    duplicates = sorted({c for c in cleaned if cleaned.count(c) > 1})
    if duplicates:
        raise ConfigError(f"classes lists {', '.join(duplicates)} more than once")
    return cleaned


def restrict_classes(
    dataset: Dataset, classes: Sequence[str] | None, *, require_all: bool = True
) -> Dataset:
    """Keep the points of the given classes, re-indexed in the order of ``classes``.

    ``classes=["1", "7"]`` on MNIST gives a binary task: "1" -> 0, "7" -> 1. With
    ``classes=None`` the dataset is returned as is. Either way ``classes`` is recorded in
    ``dataset.source.options``.

    Args:
        dataset: The dataset to restrict.
        classes: The class names to keep, in their new index order, or ``None``.
        require_all: Every class must be present (a training set); with ``False`` (a test
            set) some may be absent, as a test set without ``classes`` may lack a class,
            but at least one must be present. The result's class names are ``classes``.

    Raises:
        ConfigError: ``classes`` given for regression data, or malformed.
        DataError: A requested class is not in the data (with ``require_all=False``: none is).
    """
    classes = check_classes(classes)
    source = replace(dataset.source, options={**dataset.source.options, "classes": classes})
    if classes is None:
        return replace(dataset, source=source)
    if dataset.task != "classification" or not dataset.class_names:
        raise ConfigError(f"{dataset.name}: classes can only be chosen for classification data")
    present = set(dataset.class_names)
    missing = [c for c in classes if c not in present]
    if missing and (require_all or len(missing) == len(classes)):
        raise DataError(
            f"{dataset.name}: no class {', '.join(repr(m) for m in missing)}; "
            f"the classes are {', '.join(dataset.class_names)}"
        )
    new_index = torch.full((len(dataset.class_names),), -1, dtype=torch.long)
    for i, name in enumerate(classes):
        if name in present:
            new_index[dataset.class_names.index(name)] = i
    mapped = new_index[dataset.targets]
    keep = (mapped >= 0).nonzero().flatten()
    return replace(
        dataset.subset(keep), targets=mapped[keep], class_names=list(classes), source=source
    )


def align_classes(test: Dataset, class_names: Sequence[str]) -> Dataset:
    """Re-index a test set's labels onto the train set's class names.

    Args:
        test: A classification dataset (regression data is returned unchanged).
        class_names: The train set's class names; the result uses exactly these.

    Raises:
        DataError: The test set has a class the train set lacks.
    """
    if test.task != "classification" or test.class_names is None:
        return test
    class_names = list(class_names)
    extra = [c for c in test.class_names if c not in class_names]
    if extra:
        raise DataError(
            f"test data ({test.name}) has class {', '.join(repr(c) for c in extra)} "
            f"that the training data lacks (training classes: {', '.join(class_names)})"
        )
    mapping = torch.tensor([class_names.index(c) for c in test.class_names], dtype=torch.long)
    return replace(test, targets=mapping[test.targets], class_names=class_names)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
