"""Models as small functional tasks: the only file that knows what a model is.

A :class:`ModelTask` maps a flat parameter vector ``theta`` of shape ``(p,)`` and features
``x`` of shape ``(n, d)`` to outputs ``(n, k)`` and per-example losses ``(n,)``. Everything
downstream (fitting, gradients, Hessians, solvers) works on ``theta`` alone, so adding a
model touches this file only. The generalised linear models also give their Hessian and
Hessian-vector products in closed form, which is much faster than autograd.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from auditor.errors import ConfigError

MODEL_NAMES = ("linear", "logistic", "mlp", "cnn")


class ModelTask(ABC):
    """A model's forward pass and per-example loss over a flat parameter vector."""

    name: str
    n_params: int

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

    def example_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of one example: ``x`` ``(d,)``, ``y`` scalar -> scalar (for ``vmap(grad)``)."""
        return self.loss(self.outputs(theta, x[None]), y[None])[0]

    def hvp(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor):
        """Hessian of the mean loss over ``(x, y)`` times ``v`` ``(p, m)``, or ``None`` when the
        model has no closed form (autograd is used then)."""
        return None

    def loss_hessian(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
        """Hessian ``(p, p)`` of the mean loss over ``(x, y)``, or ``None`` without a closed
        form."""
        return None

    @property
    def has_closed_form_hessian(self) -> bool:
        """Whether :meth:`loss_hessian` is implemented (cheap dense Hessians)."""
        return type(self).loss_hessian is not ModelTask.loss_hessian

    def pretrain(self, x: torch.Tensor, y: torch.Tensor, weight_decay: float, seed: int):
        """Starting point ``(p,)`` of the L-BFGS fit from minibatch training, or ``None``
        (the default) to start from :meth:`init_params`. Deep models override it."""
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


def _with_bias(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)


class _GeneralizedLinear(ModelTask):
    """One linear output ``w.x + b``; ``theta = [w, b]``. The loss Hessian is
    ``X~^T diag(c) X~ / n`` with the per-example curvature ``c`` of the subclass."""

    def __init__(self, n_features: int, n_outputs: int) -> None:
        super().__init__(n_features, n_outputs)
        self.n_params = n_features + 1

    def outputs(self, theta, x):
        return x @ theta[:-1, None] + theta[-1]

    def _curvature(self, theta, x) -> torch.Tensor:
        """Second derivative of the loss in the output, per example: ``(n,)``."""
        return torch.ones(x.shape[0], dtype=x.dtype, device=x.device)

    def hvp(self, theta, x, y, v):
        xb = _with_bias(x)
        return xb.T @ (self._curvature(theta, x)[:, None] * (xb @ v)) / x.shape[0]

    def loss_hessian(self, theta, x, y):
        xb = _with_bias(x)
        return (xb * self._curvature(theta, x)[:, None]).T @ xb / x.shape[0]


class LinearRegression(_GeneralizedLinear):
    """``y = w.x + b`` with loss ``(y_hat - y)^2 / 2`` (curvature 1)."""

    name = "linear"

    def __init__(self, n_features: int, n_outputs: int = 1) -> None:
        super().__init__(n_features, 1)

    def loss(self, outputs, y):
        return 0.5 * (outputs[:, 0] - y) ** 2

    def predict(self, outputs):
        return outputs[:, 0], torch.full_like(outputs[:, 0], math.nan)


class BinaryLogistic(_GeneralizedLinear):
    """``p(y=1) = sigmoid(w.x + b)`` with the log loss (curvature ``p (1 - p)``)."""

    name = "logistic"

    def __init__(self, n_features: int, n_outputs: int = 2) -> None:
        super().__init__(n_features, 2)

    def loss(self, outputs, y):
        return F.binary_cross_entropy_with_logits(
            outputs[:, 0], y.to(outputs.dtype), reduction="none"
        )

    def predict(self, outputs):
        p1 = torch.sigmoid(outputs[:, 0])
        pred = (p1 >= 0.5).long()
        return pred, torch.where(pred == 1, p1, 1 - p1)

    def _curvature(self, theta, x):
        p1 = torch.sigmoid(self.outputs(theta, x)[:, 0])
        return p1 * (1 - p1)


class MultinomialLogistic(ModelTask):
    """Softmax regression over ``k`` classes; ``theta`` is the ``(d + 1, k)`` weight matrix
    (last row the biases) flattened row-major."""

    name = "logistic"

    def __init__(self, n_features: int, n_outputs: int) -> None:
        super().__init__(n_features, n_outputs)
        self.n_params = (n_features + 1) * n_outputs

    def _weights(self, theta):
        return theta.reshape(self.n_features + 1, self.n_outputs)

    def outputs(self, theta, x):
        w = self._weights(theta)
        return x @ w[:-1] + w[-1]

    def loss(self, outputs, y):
        return F.cross_entropy(outputs, y, reduction="none")

    def predict(self, outputs):
        prob, pred = torch.softmax(outputs, dim=1).max(dim=1)
        return pred, prob

    def hvp(self, theta, x, y, v):
        # H v for softmax regression: X^T (S.Z - s (s^T Z)) / n with Z = X V, per column of v.
        xb = _with_bias(x)
        k, m = self.n_outputs, v.shape[1]
        s = torch.softmax(self.outputs(theta, x), dim=1)  # (n, k)
        vw = v.T.reshape(m, xb.shape[1], k)  # (m, d+1, k)
        z = torch.einsum("nd,mdk->mnk", xb, vw)  # (m, n, k)
        mz = s * z - s * (s * z).sum(dim=2, keepdim=True)
        hv = torch.einsum("nd,mnk->mdk", xb, mz) / x.shape[0]
        return hv.reshape(m, -1).T

    def loss_hessian(self, theta, x, y):
        # Block (a, b) of size (d+1)^2 is X^T diag(s_a (delta_ab - s_b)) X / n. The weights
        # of a row of blocks sum to zero (s sums to one), so the last class's blocks are
        # minus the sum of the others: k(k-1)/2 products instead of k(k+1)/2.
        xb = _with_bias(x)
        n, d1 = xb.shape
        k = self.n_outputs
        s = torch.softmax(self.outputs(theta, x), dim=1)
        h = torch.empty(d1, k, d1, k, dtype=x.dtype, device=x.device)
        last = k - 1
        for a in range(last):
            for b in range(a, last):
                w = s[:, a] * ((1.0 if a == b else 0.0) - s[:, b])
                block = (xb * w[:, None]).T @ xb / n
                h[:, a, :, b] = block
                h[:, b, :, a] = block.T
        for a in range(last):
            h[:, a, :, last] = -h[:, a, :, :last].sum(dim=2)
            h[:, last, :, a] = h[:, a, :, last].T
        h[:, last, :, last] = -h[:, last, :, :last].sum(dim=2)
        return h.reshape(d1 * k, d1 * k)


class MLP(ModelTask):
    """One hidden tanh layer (smooth, so the Hessian exists everywhere).

    Regression has one output and the squared loss; classification ``k`` logits and
    cross-entropy. ``theta = [W1 (d*h), b1 (h), W2 (h*k), b2 (k)]``.
    """

    name = "mlp"

    def __init__(self, n_features: int, n_outputs: int, hidden: int = 32, regression: bool = False):
        super().__init__(n_features, 1 if regression else n_outputs)
        self.hidden = hidden
        self.regression = regression
        self.n_params = n_features * hidden + hidden + hidden * self.n_outputs + self.n_outputs

    def init_params(self, generator, dtype):
        d, h, k = self.n_features, self.hidden, self.n_outputs
        w1 = torch.randn(d * h, generator=generator, dtype=dtype) / math.sqrt(d)
        w2 = torch.randn(h * k, generator=generator, dtype=dtype) / math.sqrt(h)
        return torch.cat([w1, torch.zeros(h, dtype=dtype), w2, torch.zeros(k, dtype=dtype)])

    def outputs(self, theta, x):
        d, h, k = self.n_features, self.hidden, self.n_outputs
        w1, b1, w2, b2 = torch.split(theta, [d * h, h, h * k, k])
        hidden = torch.tanh(x @ w1.reshape(d, h) + b1)
        return hidden @ w2.reshape(h, k) + b2

    def loss(self, outputs, y):
        if self.regression:
            return 0.5 * (outputs[:, 0] - y) ** 2
        return F.cross_entropy(outputs, y, reduction="none")

    def predict(self, outputs):
        if self.regression:
            return outputs[:, 0], torch.full_like(outputs[:, 0], math.nan)
        prob, pred = torch.softmax(outputs, dim=1).max(dim=1)
        return pred, prob


def build_model(
    name: str,
    task: str,
    n_features: int,
    n_classes: int,
    hidden: int = 32,
    *,
    image_shape: tuple[int, ...] | None = None,
    params: str = "last",
    epochs: int = 8,
) -> ModelTask:
    """The model ``name`` (``linear``, ``logistic``, ``mlp`` or ``cnn``) for a ``task``.

    ``logistic`` is binary for two classes and multinomial for more. ``cnn`` needs the
    ``image_shape`` ``(C, H, W)`` and takes influence over ``params`` (``last`` or ``all``).
    """
    if name == "linear":
        if task != "regression":
            raise ConfigError("--model linear is a regression model; the data has class labels")
        return LinearRegression(n_features)
    if name == "logistic":
        if task != "classification":
            raise ConfigError("--model logistic needs class labels; the data has a numeric target")
        if n_classes == 2:
            return BinaryLogistic(n_features)
        return MultinomialLogistic(n_features, n_classes)
    if name == "mlp":
        return MLP(n_features, n_classes, hidden=hidden, regression=task == "regression")
    if name == "cnn":
        from auditor.cnn import CNN  # the CNN builds on this module's classes

        if task != "classification" or image_shape is None:
            raise ConfigError("--model cnn needs labelled images (idx, image folder, image NPZ)")
        return CNN(tuple(image_shape), n_classes, params=params, hidden=hidden, epochs=epochs)
    raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def default_model_name(task: str) -> str:
    """The model that follows the data: ``linear`` for regression, ``logistic`` otherwise."""
    return "linear" if task == "regression" else "logistic"
