"""A one-hidden-layer perceptron (tanh), for classification or regression."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from auditor.models.base import ModelSpec, ModelTask
from auditor.models.tape import TapedLayer, in_out_index


class MLP(ModelTask):
    """One hidden tanh layer (smooth, so the Hessian exists everywhere).

    Regression has one output and the squared loss; classification ``k`` logits and
    cross-entropy. ``theta = [W1 (d*h), b1 (h), W2 (h*k), b2 (k)]``.
    """

    name = "mlp"

    def __init__(
        self, n_features: int, n_outputs: int, hidden: int = 32, regression: bool = False
    ) -> None:
        super().__init__(n_features, 1 if regression else n_outputs)
        self.hidden = hidden
        self.regression = regression
        self.n_params = n_features * hidden + hidden + hidden * self.n_outputs + self.n_outputs

    def init_params(self, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        d, h, k = self.n_features, self.hidden, self.n_outputs
        w1 = torch.randn(d * h, generator=generator, dtype=dtype) / math.sqrt(d)
        w2 = torch.randn(h * k, generator=generator, dtype=dtype) / math.sqrt(h)
        return torch.cat([w1, torch.zeros(h, dtype=dtype), w2, torch.zeros(k, dtype=dtype)])

    def outputs(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._forward(theta, x)

    def taped_outputs(
        self, theta: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[TapedLayer]]:
        tape: list[TapedLayer] = []
        return self._forward(theta, x, tape), tape

    def _forward(
        self, theta: torch.Tensor, x: torch.Tensor, tape: list[TapedLayer] | None = None
    ) -> torch.Tensor:
        """Outputs ``(n, k)``; with ``tape``, its two layers appended to it."""
        d, h, k = self.n_features, self.hidden, self.n_outputs
        w1, b1, w2, b2 = torch.split(theta, [d * h, h, h * k, k])
        pre = x @ w1.reshape(d, h) + b1
        hidden = torch.tanh(pre)
        out = hidden @ w2.reshape(h, k) + b2
        if tape is not None:
            second, dev = d * h + h, theta.device
            tape.append(TapedLayer(x, pre, in_out_index(0, d, h, d * h, dev)))
            tape.append(TapedLayer(hidden, out, in_out_index(second, h, k, second + h * k, dev)))
        return out

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.regression:
            return 0.5 * (outputs[:, 0] - y) ** 2
        return F.cross_entropy(outputs, y, reduction="none")

    def predict(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.regression:
            return outputs[:, 0], torch.full_like(outputs[:, 0], math.nan)
        prob, pred = torch.softmax(outputs, dim=1).max(dim=1)
        return pred, prob


def build_mlp(spec: ModelSpec) -> ModelTask:
    """The MLP with ``spec.hidden`` units, regressing or classifying as the task asks."""
    return MLP(
        spec.n_features, spec.n_classes, hidden=spec.hidden, regression=spec.task == "regression"
    )
