"""The model seam: a :class:`ModelTask` is all the influence machinery knows of a model.

A :class:`ModelTask` maps a flat parameter vector ``theta`` of shape ``(p,)`` and features
``x`` of shape ``(n, d)`` to outputs ``(n, k)`` and per-example losses ``(n,)``. Everything
downstream (fitting, gradients, Hessians, solvers) works on ``theta`` alone, so adding a
model is one file in this package and one line in its registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from auditor.data import Task
from auditor.models.tape import TapedLayer


class ModelTask(ABC):
    """A model's forward pass and per-example loss over a flat parameter vector.

    A model may hold a fitted part that influence is not taken over (a frozen body, such as
    the CNN's with ``params="last"``): then :meth:`frozen_features` returns its embeddings
    and ``head`` is the model over them, and the pipeline computes the embeddings once and
    runs gradients, Hessians, solves and refits on the head.
    """

    name: str
    n_params: int
    #: The model over :meth:`frozen_features`, taking the same ``theta`` ``(p,)``; only
    #: read when :meth:`frozen_features` returns embeddings.
    head: ModelTask | None = None
    #: ``progress(phase, done, total)``, set by the scan: a model whose
    #: :meth:`frozen_features` takes long (a pretrained backbone) reports through it.
    progress: Callable[[str, int, int], None] | None = None

    def __init__(self, n_features: int, n_outputs: int) -> None:
        self.n_features = n_features
        self.n_outputs = n_outputs

    def init_params(self, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        """Starting parameters ``(p,)``; zeros suit the convex models."""
        return torch.zeros(self.n_params, dtype=dtype)

    @abstractmethod
    def outputs(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``(n, k)`` (values, logits) for features ``x`` ``(n, d)``."""

    @abstractmethod
    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example loss ``(n,)`` from outputs ``(n, k)`` and targets ``(n,)``."""

    @abstractmethod
    def predict(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions ``(n,)`` and the probability of each prediction ``(n,)`` (NaN for
        regression)."""

    def accuracy(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
        """The share of the labels ``y`` ``(n,)`` that the classifier at ``theta`` predicts on
        ``x`` ``(n, d)``."""
        with torch.no_grad():
            predicted, _ = self.predict(self.outputs(theta, x))
        return float((predicted == y).double().mean())

    def example_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of one example: ``x`` ``(d,)``, ``y`` scalar -> scalar (for ``vmap(grad)``)."""
        return self.loss(self.outputs(theta, x[None]), y[None])[0]

    def taped_outputs(
        self, theta: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[TapedLayer]] | None:
        """Outputs ``(n, k)`` and every ``Linear``/``Conv2d`` layer the forward pass applied
        (:mod:`auditor.models.tape`; what EK-FAC factors), or ``None`` (the default) when
        the model cannot tell its layers."""
        return None

    @property
    def tapes_layers(self) -> bool:
        """Whether :meth:`taped_outputs` can tell the layers (what ``--solver ekfac`` needs)."""
        return type(self).taped_outputs is not ModelTask.taped_outputs

    def hvp(
        self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor | None:
        """Hessian of the mean loss over ``(x, y)`` times ``v`` ``(p, m)``, or ``None`` when the
        model has no closed form (autograd is used then)."""
        return None

    def loss_hessian(
        self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor | None:
        """Hessian ``(p, p)`` of the mean loss over ``(x, y)``, or ``None`` without a closed
        form."""
        return None

    @property
    def has_closed_form_hessian(self) -> bool:
        """Whether :meth:`loss_hessian` is implemented (cheap dense Hessians)."""
        return type(self).loss_hessian is not ModelTask.loss_hessian

    @property
    def convex_risk(self) -> bool:
        """Whether the regularised risk is convex in ``theta`` with a closed-form
        :meth:`hvp` (the generalised linear models): such a model is fitted by Newton-CG
        (:mod:`auditor.models.newton`), any other by L-BFGS."""
        return False

    def pretrain(
        self, x: torch.Tensor, y: torch.Tensor, weight_decay: float, seed: int
    ) -> torch.Tensor | None:
        """Starting point ``(p,)`` of the fit from minibatch training, or ``None``
        (the default) to start from :meth:`init_params`. Deep models override it."""
        return None

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor | None:
        """The embeddings ``(n, h)`` of features ``x`` ``(n, d)`` under a frozen, fitted part
        of the model, or ``None`` (the default) when ``theta`` covers the whole model.

        When not ``None``, ``outputs(theta, x)`` equals ``head.outputs(theta,
        frozen_features(x))``, and so do losses, gradients and Hessians in ``theta``."""
        return None

    @property
    def optimum_advice(self) -> str:
        """What the scan's warning of a fit far from an optimum advises."""
        return "raise --weight-decay or the iteration limit"

    @property
    def fitted_to_optimum(self) -> bool:
        """Whether the scan fits ``theta`` to an optimum of the risk (every built-in model).
        ``False`` for a model used as trained: the gradient left at ``theta`` is then no
        sign of a risk without an optimum, and the scan's far-from-optimum warning (with
        :attr:`optimum_advice`) reports it instead of the conditioning check."""
        return True

    def provenance(self) -> dict[str, Any] | None:
        """Where the model came from when the scan did not build it (a user's model file:
        its path, kind and SHA-256), stored with the run; ``None`` (the default) for the
        built-in models. A resume refuses a model whose provenance changed."""
        return None

    def fitted_state(self, theta: torch.Tensor) -> torch.Tensor:
        """Everything a fit determined, as one vector: the run stores it and torchrun
        ranks receive it. ``theta`` itself, unless the model keeps fitted state outside
        it (the CNN's frozen body and input scale)."""
        return theta

    def load_fitted_state(self, state: torch.Tensor) -> torch.Tensor | None:
        """Adopt a :meth:`fitted_state` vector and return ``theta`` ``(p,)``, or ``None``
        when ``state`` does not belong to this model (then fit again)."""
        return state if state.numel() == self.n_params else None

    def facts(self) -> dict[str, str]:
        """What a run records of the model beyond its name, as label -> text (the
        pretrained backbone and its weights file); the report shows them."""
        return {}


@dataclass(frozen=True)
class ModelSpec:
    """What a model builder needs to know of the data and the options.

    Attributes:
        task: ``classification`` or ``regression``.
        n_features: Features per point ``d``.
        n_classes: Classes ``k`` (1 for regression).
        hidden: Hidden units (MLP, CNN).
        image_shape: ``(C, H, W)`` of image data, else ``None``.
        params: Parameters influence is taken over (``last`` or ``all``; CNN).
        epochs: Adam epochs before the polish (CNN).
    """

    task: Task
    n_features: int
    n_classes: int
    hidden: int = 32
    image_shape: tuple[int, ...] | None = None
    params: str = "last"
    epochs: int = 8
