"""``--weight-decay auto``: the weight decay a scan uses when none is given.

For a classifier whose risk is convex in the given features (``--model logistic``, the
default for labels and images) it is chosen by a quick validation: a seeded fifth of the
training points is held out, the model is fitted on the rest at each of
:data:`CANDIDATES` (strongest first, each fit warm-started from the last: Newton-CG, well
under a second per candidate on 8,000 MNIST images), and the strongest weight decay whose
held-out accuracy is within :data:`ACCURACY_TOLERANCE` of the best is kept. The strongest
such one, because a stronger weight decay gives a better-conditioned Hessian (influence
needs a strongly convex optimum) and steadier influence, while a point of accuracy is
within the held-out fifth's noise. :data:`CANDIDATES` stop at 1e-4: below it the Hessian's
conditioning stops influence from being a faithful leave-one-out estimate (10-class MNIST
already needs more than 5,000 LiSSA steps at 1e-4).

On MNIST (``--test-split 0.2``): 1-vs-7 holds out 98.3% / 99.4% / 99.7% at 1e-2 / 1e-3 /
1e-4 and keeps 1e-3; 10 classes hold out 78.7% / 86.3% / 89.9% and keep 1e-4. Every other
model (regression, MLP, CNN, pretrained features, your own network) uses
:data:`DEFAULT_WEIGHT_DECAY`; :mod:`auditor.models.underfit` still warns when it holds a
convex classifier back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from auditor.models.base import ModelTask
from auditor.models.fit import fit

#: The weight decay of every model that is not chosen by validation.
DEFAULT_WEIGHT_DECAY = 0.01
#: The weight decays tried, strongest first.
CANDIDATES = (1e-2, 1e-3, 1e-4)
#: Held-out accuracy (absolute) a stronger weight decay may give up against the best.
ACCURACY_TOLERANCE = 0.01
#: The share of the training points held out.
HELD_OUT = 0.2
#: Fewest points on each side of the split for a validation; below, the default is used.
FEWEST = 20
#: Gradient norm the validation fits stop at: their accuracy, not their optimum, is read.
VALIDATION_GRAD_TOL = 1e-4


@dataclass
class WeightDecayChoice:
    """The weight decay a scan uses and, when it was validated, the held-out accuracy at
    each candidate (``{weight decay: accuracy}``, strongest first)."""

    weight_decay: float
    held_out_accuracy: dict[float, float] | None = None

    def describe(self) -> str:
        """One line for the run's output, e.g. ``weight decay 0.001 (held-out accuracy
        98.3% at 0.01, 99.4% at 0.001, 99.7% at 0.0001)``."""
        if self.held_out_accuracy is None:
            return f"weight decay {self.weight_decay:g}"
        tried = ", ".join(f"{a:.1%} at {wd:g}" for wd, a in self.held_out_accuracy.items())
        return f"weight decay {self.weight_decay:g} (held-out accuracy {tried})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the candidates' accuracies keyed by their text (``"0.001"``)."""
        accuracies = self.held_out_accuracy or {}
        return {"weight_decay": self.weight_decay, "held_out_accuracy": _keyed(accuracies)}


def default_weight_decay(
    model: ModelTask, x: torch.Tensor, y: torch.Tensor, seed: int, fit_kwargs: dict[str, Any]
) -> WeightDecayChoice:
    """The weight decay of ``--weight-decay auto`` for ``model`` on the training points
    ``x`` ``(n, d)`` with targets ``y`` ``(n,)``: validated (module docstring) where
    :func:`validated`, :data:`DEFAULT_WEIGHT_DECAY` otherwise. ``seed`` draws the held-out
    points."""
    if not validated(model, y):
        return WeightDecayChoice(DEFAULT_WEIGHT_DECAY)
    n_held = int(round(HELD_OUT * len(y)))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=generator).to(y.device)
    held, kept = order[:n_held], order[n_held:]
    options = {**fit_kwargs, "grad_tol": max(fit_kwargs.get("grad_tol", 0.0), VALIDATION_GRAD_TOL)}
    accuracies: dict[float, float] = {}
    theta = None
    for weight_decay in CANDIDATES:
        theta = fit(model, x[kept], y[kept], weight_decay, theta0=theta, **options).theta
        accuracies[weight_decay] = model.accuracy(theta, x[held], y[held])
    return WeightDecayChoice(chosen_weight_decay(accuracies), accuracies)


def validated(model: ModelTask, y: torch.Tensor) -> bool:
    """Whether ``auto`` validates ``model``'s weight decay on targets ``y`` ``(n,)``: a
    convex classifier fitted on the given features, with at least :data:`FEWEST` points on
    each side of the split."""
    n_held = int(round(HELD_OUT * len(y)))
    return (
        model.convex_risk
        and model.head is None
        and not y.is_floating_point()
        and min(n_held, len(y) - n_held) >= FEWEST
    )


def chosen_weight_decay(held_out_accuracy: dict[float, float]) -> float:
    """The strongest weight decay whose held-out accuracy is within
    :data:`ACCURACY_TOLERANCE` of the best (``{weight decay: accuracy}``)."""
    best = max(held_out_accuracy.values())
    within = [wd for wd, a in held_out_accuracy.items() if a >= best - ACCURACY_TOLERANCE]
    return max(within)


def _keyed(accuracies: dict[float, float]) -> dict[str, float]:
    return {f"{wd:g}": a for wd, a in accuracies.items()}
