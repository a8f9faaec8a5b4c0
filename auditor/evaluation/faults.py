"""Inject known faults into a training set, so a ranking can be scored against the truth.

Kinds (``FaultSpec.kind``):

- ``flip``: uniform label flips; ``rate`` of all points get another class, chosen uniformly.
- ``class-flip``: class-conditional flips; ``rate`` of the points labelled ``source`` are
  relabelled ``target`` (e.g. only 7 -> 1). Several pairs (``1>7,7>1,3>8,8>3``) flip
  ``rate`` of each source class to its target; ``cycle`` flips every class to the next one
  in class order, the last to the first (10-class MNIST: 0>1, 1>2, ..., 9>0).
- ``outlier``: ``rate`` of all points are replaced by noise with a random label (uniform
  pixels for images, independent Gaussian features for feature vectors, scaled to the
  replaced point's norm); for regression the target is set to ``y = 100`` as in the seed's
  toy data.
- ``confusion``: realistic label errors; ``rate`` of all points are relabelled with the
  class a held-out model most confuses them with (the largest out-of-fold probability
  among the other classes, :mod:`auditor.evaluation.cross_val`), the points drawn with
  probability proportional to that class's probability, so that the errors fall on the
  ambiguous points, as a person's do (a 4 written like a 9).
- ``none``: no faults (to measure how many clean points a rule flags).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from auditor.data import Dataset
from auditor.errors import ConfigError, DataError

FAULT_KINDS = ("flip", "class-flip", "confusion", "outlier", "none")
#: The kinds that need the out-of-fold class probabilities of the clean points.
NEEDS_PROBABILITIES = ("confusion",)
#: The least drawing weight of a ``confusion`` point (a point the held-out model never
#: confuses can still be drawn once the ambiguous ones run out).
LEAST_CONFUSION = 1e-6
#: The regression outliers' target, as in the seed's toy data.
REGRESSION_OUTLIER = 100.0
#: The ``class-flip`` shorthand for every class -> the next one, wrapping around.
CYCLE = "cycle"
_CLASS_FLIP_FORM = "class-flip:SOURCE>TARGET[,SOURCE>TARGET...] or class-flip:cycle"


@dataclass
class FaultSpec:
    """Which faults to inject.

    A ``class-flip`` names its classes in one of three ways: ``source`` and ``target`` (one
    pair, stored as before several pairs existed), ``pairs`` (two or more; a single pair
    given there moves to ``source`` and ``target``), or ``cycle``.

    Attributes:
        kind: One of ``FAULT_KINDS``.
        rate: Fraction of the points (of each source class for ``class-flip``) affected.
        source: Class name flipped from (``class-flip`` with one pair).
        target: Class name flipped to (``class-flip`` with one pair).
        pairs: ``(source, target)`` class names (``class-flip`` with several pairs); every
            source at most once, never mapped to itself.
        cycle: Every class flipped to the next one in class order (``class-flip:cycle``).
    """

    kind: str = "flip"
    rate: float = 0.1
    source: str | None = None
    target: str | None = None
    pairs: tuple[tuple[str, str], ...] = ()
    cycle: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ConfigError(f"unknown fault kind {self.kind!r}; choose {', '.join(FAULT_KINDS)}")
        if self.kind != "none" and not 0.0 < self.rate < 1.0:
            raise ConfigError(f"--rate must lie strictly between 0 and 1, got {self.rate}")
        self.pairs = tuple((str(s), str(t)) for s, t in self.pairs)  # lists from JSON
        one = self.source is not None or self.target is not None
        if self.kind != "class-flip":
            if one or self.pairs or self.cycle:
                raise ConfigError(f"only class-flip takes classes, not {self.kind}")
            return
        if sum((one, bool(self.pairs), self.cycle)) != 1:
            raise ConfigError(
                f"class-flip needs one of: a source and a target class, pairs, or cycle "
                f"(e.g. class-flip:7>1); expected {_CLASS_FLIP_FORM}"
            )
        if len(self.pairs) == 1:  # one pair: stored as source and target, as it always was
            (self.source, self.target), self.pairs = self.pairs[0], ()
        if one and (self.source is None or self.target is None):
            raise ConfigError("class-flip needs a source and a target class, e.g. class-flip:7>1")
        _check_pairs(self.class_pairs())

    @classmethod
    def parse(cls, text: str, rate: float) -> FaultSpec:
        """``flip``, ``outlier``, ``none``, ``class-flip:SOURCE>TARGET`` (several pairs
        separated by commas) or ``class-flip:cycle``."""
        kind, _, classes = text.partition(":")
        if kind == "class-flip":
            if classes.strip() == CYCLE:
                return cls(kind, rate, cycle=True)
            pairs = []
            for item in classes.split(","):
                source, sep, target = item.partition(">")
                if not sep or not source.strip() or not target.strip() or ">" in target:
                    raise ConfigError(f"expected {_CLASS_FLIP_FORM}, got {text!r}")
                pairs.append((source.strip(), target.strip()))
            return cls(kind, rate, pairs=tuple(pairs))
        if classes:
            raise ConfigError(f"only class-flip takes classes, got {text!r}")
        return cls(kind, rate)

    @classmethod
    def from_dict(cls, stored: dict) -> FaultSpec:
        """The spec :meth:`to_dict` stored (also the rows written before ``pairs`` and
        ``cycle`` existed, which lack those keys)."""
        return cls(**stored)

    def class_pairs(self) -> list[tuple[str, str]]:
        """The ``(source, target)`` class names of a ``class-flip`` given by name (empty for
        ``cycle``, which needs the class order: :meth:`flips`)."""
        if self.source is not None and self.target is not None:
            return [(self.source, self.target)]
        return list(self.pairs)

    def flips(self, class_names: list[str]) -> list[tuple[int, int]]:
        """The ``(source, target)`` class indexes of a ``class-flip`` on data with these
        classes, in the order given (``cycle``: class order).

        Raises:
            ConfigError: a class that is not one of ``class_names``.
        """
        if self.cycle:
            k = len(class_names)
            return [(c, (c + 1) % k) for c in range(k)]
        for source, target in self.class_pairs():
            for name in (source, target):
                if name not in class_names:
                    raise ConfigError(
                        f"class-flip {source}>{target}: class {name!r} is not one of {class_names}"
                    )
        return [(class_names.index(s), class_names.index(t)) for s, t in self.class_pairs()]

    def label(self) -> str:
        """A short name: ``flip 10%``, ``class-flip 7>1 20%``, ``class-flip 1>7,7>1 20%``,
        ``class-flip cycle 10%``, ``none``."""
        if self.kind == "none":
            return "none"
        classes = ""
        if self.kind == "class-flip":
            pairs = ",".join(f"{s}>{t}" for s, t in self.class_pairs())
            classes = f" {CYCLE if self.cycle else pairs}"
        return f"{self.kind}{classes} {self.rate:.0%}"

    def to_dict(self) -> dict:
        """JSON-ready; ``pairs`` and ``cycle`` only when used, so the other kinds and a
        single pair keep the form stored before they existed."""
        stored = asdict(self)
        if not self.pairs:
            del stored["pairs"]
        else:
            stored["pairs"] = [list(p) for p in self.pairs]
        if not self.cycle:
            del stored["cycle"]
        return stored


def _check_pairs(pairs: list[tuple[str, str]]) -> None:
    seen: set[str] = set()
    for source, target in pairs:
        if source == target:
            raise ConfigError(f"class-flip {source}>{target}: a class cannot be flipped to itself")
        if source in seen:
            raise ConfigError(
                f"class-flip: source class {source!r} is listed twice; give each source once"
            )
        seen.add(source)


def inject(
    ds: Dataset, spec: FaultSpec, seed: int, probabilities: np.ndarray | None = None
) -> tuple[Dataset, np.ndarray]:
    """A copy of ``ds`` with faults injected, and the sorted indexes ``(m,)`` of the faulty
    points. The input is not modified; every other point is left exactly as it was.
    ``probabilities`` ``(n, k)``: the out-of-fold class probabilities of ``ds``'s points,
    which ``confusion`` needs.

    Raises:
        DataError: a kind the data cannot take (flips of regression data), or a rate that
            injects nothing.
        ConfigError: a ``class-flip`` class the data does not have.
    """
    rng = np.random.default_rng(seed)
    n = len(ds)
    if spec.kind == "none":
        return replace(ds), np.zeros(0, dtype=np.int64)
    if spec.kind in ("flip", "class-flip", "confusion") and ds.task != "classification":
        raise DataError(f"{spec.kind} needs class labels; {ds.name} is regression data")
    targets = ds.targets.clone()
    if spec.kind == "class-flip":
        return _class_flips(ds, targets, spec, rng)
    if spec.kind == "confusion":
        if probabilities is None or probabilities.shape != (n, ds.n_classes):
            raise ValueError("confusion faults need the points' (n, k) class probabilities")
        return _confusion_flips(ds, targets, spec.rate, probabilities, rng)
    index = _choose(rng, np.arange(n), spec.rate)
    if spec.kind == "flip":
        k = ds.n_classes
        shift = torch.from_numpy(rng.integers(1, k, size=len(index)))  # never the same class
        targets[torch.from_numpy(index)] = (targets[torch.from_numpy(index)] + shift) % k
        return replace(ds, targets=targets), index
    return _outliers(ds, targets, index, rng), index


def _class_flips(
    ds: Dataset, targets: torch.Tensor, spec: FaultSpec, rng: np.random.Generator
) -> tuple[Dataset, np.ndarray]:
    """Flip ``spec.rate`` of each source class (drawn in the order of the pairs, from the
    labels before any flip) to its target. With several pairs a source class too small to
    get one fault is left alone; nothing flipped at all is an error."""
    flips = spec.flips(list(ds.class_names or []))
    given = ds.targets.numpy()
    chosen = []
    for source, target in flips:
        pool = np.flatnonzero(given == source)
        if len(flips) > 1 and round(spec.rate * len(pool)) == 0:
            continue
        index = _choose(rng, pool, spec.rate)
        targets[torch.from_numpy(index)] = target
        chosen.append(index)
    if not chosen:
        raise DataError(f"a fault rate of {spec.rate} of each source class injects no fault")
    return replace(ds, targets=targets), np.sort(np.concatenate(chosen))


def _confusion_flips(
    ds: Dataset,
    targets: torch.Tensor,
    rate: float,
    probabilities: np.ndarray,
    rng: np.random.Generator,
) -> tuple[Dataset, np.ndarray]:
    """Relabel ``rate`` of the points with their most confused class (module docstring)."""
    n = len(ds)
    others = np.array(probabilities, dtype=np.float64)
    given = targets.numpy()
    others[np.arange(n), given] = -np.inf
    confused = others.argmax(axis=1)
    weight = np.maximum(others[np.arange(n), confused], LEAST_CONFUSION)
    m = int(round(rate * n))
    if m == 0:
        raise DataError(f"a fault rate of {rate} of {n} points injects no fault")
    index = np.sort(rng.choice(n, size=m, replace=False, p=weight / weight.sum()))
    targets[torch.from_numpy(index)] = torch.from_numpy(confused[index])
    return replace(ds, targets=targets), index


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
