"""Inject known faults into a training set, so a ranking can be scored against the truth.

Kinds (``FaultSpec.kind``):

- ``flip``: uniform label flips; ``rate`` of all points get another class, chosen uniformly.
- ``class-flip``: class-conditional flips; ``rate`` of the points labelled ``source`` are
  relabelled ``target`` (e.g. only 7 -> 1).
- ``outlier``: ``rate`` of all points are replaced by noise with a random label (uniform
  pixels for images, independent Gaussian features for feature vectors, scaled to the
  replaced point's norm); for regression the target is set to ``y = 100`` as in the seed's
  toy data.
- ``none``: no faults (to measure how many clean points a rule flags).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from auditor.data import Dataset
from auditor.errors import ConfigError, DataError

FAULT_KINDS = ("flip", "class-flip", "outlier", "none")
#: The regression outliers' target, as in the seed's toy data.
REGRESSION_OUTLIER = 100.0


@dataclass
class FaultSpec:
    """Which faults to inject.

    Attributes:
        kind: One of ``FAULT_KINDS``.
        rate: Fraction of the points (of the ``source`` class for ``class-flip``) affected.
        source: Class name flipped from (``class-flip`` only).
        target: Class name flipped to (``class-flip`` only).
    """

    kind: str = "flip"
    rate: float = 0.1
    source: str | None = None
    target: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ConfigError(f"unknown fault kind {self.kind!r}; choose {', '.join(FAULT_KINDS)}")
        if self.kind != "none" and not 0.0 < self.rate < 1.0:
            raise ConfigError(f"--rate must lie strictly between 0 and 1, got {self.rate}")
        if self.kind == "class-flip" and (self.source is None or self.target is None):
            raise ConfigError("class-flip needs a source and a target class, e.g. class-flip:7>1")

    @classmethod
    def parse(cls, text: str, rate: float) -> FaultSpec:
        """``flip``, ``outlier``, ``none`` or ``class-flip:SOURCE>TARGET``."""
        kind, _, classes = text.partition(":")
        if kind == "class-flip":
            source, sep, target = classes.partition(">")
            if not sep or not source or not target:
                raise ConfigError(f"expected class-flip:SOURCE>TARGET, got {text!r}")
            return cls(kind, rate, source.strip(), target.strip())
        if classes:
            raise ConfigError(f"only class-flip takes classes, got {text!r}")
        return cls(kind, rate)

    def label(self) -> str:
        """A short name: ``flip 10%``, ``class-flip 7>1 20%``, ``none``."""
        if self.kind == "none":
            return "none"
        pair = f" {self.source}>{self.target}" if self.kind == "class-flip" else ""
        return f"{self.kind}{pair} {self.rate:.0%}"

    def to_dict(self) -> dict:
        return asdict(self)


def inject(ds: Dataset, spec: FaultSpec, seed: int) -> tuple[Dataset, np.ndarray]:
    """A copy of ``ds`` with faults injected, and the sorted indexes ``(m,)`` of the faulty
    points. The input is not modified; every other point is left exactly as it was.

    Raises:
        DataError: a kind the data cannot take (flips of regression data, unknown classes).
    """
    rng = np.random.default_rng(seed)
    n = len(ds)
    if spec.kind == "none":
        return replace(ds), np.zeros(0, dtype=np.int64)
    if spec.kind in ("flip", "class-flip") and ds.task != "classification":
        raise DataError(f"{spec.kind} needs class labels; {ds.name} is regression data")
    targets = ds.targets.clone()
    if spec.kind == "class-flip":
        names = ds.class_names or []
        for name in (spec.source, spec.target):
            if name not in names:
                raise DataError(f"class-flip: class {name!r} is not one of {names}")
        assert spec.source is not None and spec.target is not None  # both are in names
        source, target = names.index(spec.source), names.index(spec.target)
        if source == target:
            raise DataError("class-flip: the source and the target class must differ")
        pool = np.flatnonzero(targets.numpy() == source)
        index = _choose(rng, pool, spec.rate)
        targets[torch.from_numpy(index)] = target
        return replace(ds, targets=targets), index
    index = _choose(rng, np.arange(n), spec.rate)
    if spec.kind == "flip":
        k = ds.n_classes
        shift = torch.from_numpy(rng.integers(1, k, size=len(index)))  # never the same class
        targets[torch.from_numpy(index)] = (targets[torch.from_numpy(index)] + shift) % k
        return replace(ds, targets=targets), index
    return _outliers(ds, targets, index, rng), index


def _choose(rng: np.random.Generator, pool: np.ndarray, rate: float) -> np.ndarray:
    m = int(round(rate * len(pool)))
    if m == 0:
        raise DataError(f"a fault rate of {rate} of {len(pool)} points injects no fault")
    return np.sort(rng.choice(pool, size=m, replace=False))


def _outliers(
    ds: Dataset, targets: torch.Tensor, index: np.ndarray, rng: np.random.Generator
) -> Dataset:
    idx = torch.from_numpy(index)
    if ds.task == "regression":
        targets[idx] = REGRESSION_OUTLIER
        return replace(ds, targets=targets)
    features = ds.features.clone()
    images = None if ds.images is None else ds.images.clone()
    norms = features[idx].norm(dim=1, keepdim=True)
    if images is not None:
        pixels = rng.integers(0, 256, size=(len(index), *images.shape[1:]), dtype=np.uint8)
        images[idx] = torch.from_numpy(pixels)
        noise = torch.from_numpy(pixels.reshape(len(index), -1).astype(np.float32) / 255.0)
    else:
        mean, std = features.mean(dim=0), features.std(dim=0)
        noise = mean + std * torch.from_numpy(rng.standard_normal((len(index), ds.n_features)))
    noise = noise.to(features.dtype)
    noise = noise * (norms / noise.norm(dim=1, keepdim=True).clamp_min(1e-12))
    features[idx] = noise
    targets[idx] = torch.from_numpy(rng.integers(0, ds.n_classes, size=len(index)))
    return replace(ds, features=features, targets=targets, images=images)
