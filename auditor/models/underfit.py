"""Whether the weight decay holds a convex classifier far below the training accuracy its
model class reaches: the fit is repeated with a hundredth of the weight decay (Newton-CG,
warm-started: a fraction of the first fit's time) and the two accuracies compared.

On 10-class MNIST (8,000 images) weight decay 0.01 (the default before ``auto``) gives
80.4% train accuracy and 1e-4 gives 92.3%; on 1-vs-7 the two are within 2 points, and
nothing is reported. ``--weight-decay auto`` (:mod:`auditor.models.weight_decay`) avoids
the first for plain logistic models; the check still guards a weight decay given by hand
and the heads over frozen features, which keep 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from auditor.models.base import ModelTask
from auditor.models.fit import FitResult, fit

#: The comparison fit's weight decay, as a share of the run's.
WEAKER = 0.01
#: Train-accuracy gap (absolute) at and above which the fit is reported.
UNDERFIT_GAP = 0.05
#: The smallest weight decay that is checked (whose hundredth would be advised): below,
#: the Hessian is too ill-conditioned for influence (10-class MNIST at 1e-4 already needs
#: more than LiSSA's 5,000 steps, and the check there advised 1e-6).
SMALLEST_CHECKED = 1e-3
#: Gradient norm the comparison fit stops at: its accuracy, not its optimum, is read.
COMPARISON_GRAD_TOL = 1e-3


@dataclass
class Underfit:
    """Train accuracy at the run's weight decay and at ``weaker_weight_decay``."""

    accuracy: float
    weaker_accuracy: float
    weight_decay: float
    weaker_weight_decay: float

    def warning(self) -> str:
        return (
            f"the weight decay holds the model back: train accuracy {self.accuracy:.1%} at "
            f"--weight-decay {self.weight_decay:g} against {self.weaker_accuracy:.1%} at "
            f"{self.weaker_weight_decay:g}; rerun with --weight-decay "
            f"{self.weaker_weight_decay:g}"
        )


def underfit(
    model: ModelTask,
    x: torch.Tensor,
    y: torch.Tensor,
    weight_decay: float,
    fitted: FitResult,
    fit_kwargs: dict[str, Any],
) -> Underfit | None:
    """The comparison of a classifier's fit ``fitted`` (on ``x`` ``(n, d)``, labels ``y``
    ``(n,)``) with a fit at ``WEAKER`` times the weight decay, when its train accuracy
    is at least :data:`UNDERFIT_GAP` higher there; ``None`` otherwise, and for a model
    whose risk (or whose head's, over frozen features) is not convex, or a weight decay below
    :data:`SMALLEST_CHECKED`."""
    head, features = model, x
    if fitted.features is not None and model.head is not None:
        head, features = model.head, fitted.features
    if not head.convex_risk or weight_decay < SMALLEST_CHECKED or y.is_floating_point():
        return None
    weaker_decay = weight_decay * WEAKER
    options = {**fit_kwargs, "grad_tol": max(fit_kwargs.get("grad_tol", 0.0), COMPARISON_GRAD_TOL)}
    weaker = fit(head, features, y, weaker_decay, theta0=fitted.theta, **options)
    accuracy = head.accuracy(fitted.theta, features, y)
    weaker_accuracy = head.accuracy(weaker.theta, features, y)
    if weaker_accuracy - accuracy < UNDERFIT_GAP:
        return None
    return Underfit(accuracy, weaker_accuracy, weight_decay, weaker_decay)
