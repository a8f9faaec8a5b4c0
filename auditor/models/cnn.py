"""A small convolutional network for images, as a :class:`~auditor.models.ModelTask`.

Architecture (smooth everywhere, so the Hessian exists): ``conv 5x5 (c1) -> tanh ->
avg-pool 2 -> conv 5x5 (c2) -> tanh -> avg-pool 2 -> linear (hidden) -> tanh -> linear
(k logits, or 1 for two classes)``. It is trained by minibatch Adam on the same L2-
regularised risk as every other model (:meth:`CNN.pretrain`), then the parameters that
influence is taken over are polished by L-BFGS to a true optimum.

``params`` chooses those parameters:

- ``last``: only the final linear layer. The body is frozen after training, the head is a
  (binary or multinomial) logistic regression on the body's embeddings: convex, with a
  closed-form Hessian, so the exact solver applies. Fast; the default. The embeddings are
  :meth:`CNN.frozen_features`: the fit and the scan compute them once and work on
  :attr:`CNN.head` over them.
- ``all``: every weight. The Hessian comes from autograd and may be indefinite away from
  an optimum (add ``--damping``); use ``--solver cg`` or ``lissa``. Costly: for small data.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from auditor.errors import ConfigError
from auditor.models.base import ModelSpec, ModelTask
from auditor.models.glm import BinaryLogistic, MultinomialLogistic
from auditor.models.tape import ConvGeometry, TapedLayer, in_out_index, out_in_index

PARAM_CHOICES = ("all", "last")


#: The progress phase of the Adam epochs (:meth:`CNN.pretrain`).
EPOCHS_PHASE = "fit: Adam epochs"


class CNN(ModelTask):
    """Two conv + pooling layers, a hidden linear layer and a linear head.

    Args:
        image_shape: ``(C, H, W)`` of the images; features ``(n, C*H*W)`` are reshaped to it.
        n_outputs: Number of classes.
        params: ``last`` or ``all`` (see the module docstring).
        channels: Output channels of the two conv layers.
        hidden: Units of the hidden linear layer (the embedding the head sees).
        epochs: Adam epochs of :meth:`pretrain`.
    """

    name = "cnn"
    batch_size = 64
    lr = 2e-3

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        n_outputs: int,
        params: str = "last",
        channels: tuple[int, int] = (16, 32),
        hidden: int = 64,
        epochs: int = 8,
    ) -> None:
        c, h, w = image_shape
        super().__init__(c * h * w, n_outputs)
        if params not in PARAM_CHOICES:
            raise ConfigError(f"--params must be all or last, got {params!r}")
        side_h, side_w = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        if side_h < 1 or side_w < 1:
            raise ConfigError(f"--model cnn needs images of at least 16x16, got {h}x{w}")
        self.image_shape = (c, h, w)
        self.params = params
        self.epochs = epochs
        self.hidden = hidden
        c1, c2 = channels
        self.shapes = {
            "conv1.w": (c1, c, 5, 5),
            "conv1.b": (c1,),
            "conv2.w": (c2, c1, 5, 5),
            "conv2.b": (c2,),
            "fc.w": (c2 * side_h * side_w, hidden),
            "fc.b": (hidden,),
        }
        self.n_body = sum(math.prod(s) for s in self.shapes.values())
        self.head: BinaryLogistic | MultinomialLogistic = (
            BinaryLogistic(hidden) if n_outputs == 2 else MultinomialLogistic(hidden, n_outputs)
        )
        self.n_head = self.head.n_params
        self.n_params = self.n_head if params == "last" else self.n_body + self.n_head
        self.input_scale = 1.0
        self.body_theta: torch.Tensor | None = None  # the frozen body of ``params="last"``

    def facts(self) -> dict[str, str]:
        """The network's size beside the parameters influence is taken over."""
        total = self.n_body + self.n_head
        over = "the last layer's" if self.params == "last" else "all"
        return {"network": f"{total:,} weights; influence over {over} {self.n_params:,}"}

    @property
    def max_polish_iter(self) -> int:
        """Most L-BFGS iterations (full-batch passes are costly for the whole network)."""
        return 100 if self.params == "all" else 10_000

    # --- the network -------------------------------------------------------------------
    def embed(
        self, body: torch.Tensor, x: torch.Tensor, tape: list[TapedLayer] | None = None
    ) -> torch.Tensor:
        """Hidden activations ``(n, hidden)`` of features ``x`` ``(n, d)`` under the body
        parameters ``body`` ``(n_body,)``; with ``tape``, its three layers appended."""
        sizes = [math.prod(s) for s in self.shapes.values()]
        p = dict(zip(self.shapes, torch.split(body, sizes), strict=True))
        p = {k: v.reshape(self.shapes[k]) for k, v in p.items()}
        offsets = dict(zip(self.shapes, itertools.accumulate([0, *sizes[:-1]]), strict=True))
        a = (x * self.input_scale).reshape(x.shape[0], *self.image_shape)
        for conv in ("conv1", "conv2"):
            s = F.conv2d(a, p[f"{conv}.w"], p[f"{conv}.b"])
            if tape is not None:
                c_out, c_in, kh, kw = self.shapes[f"{conv}.w"]
                index = out_in_index(
                    offsets[f"{conv}.w"], c_out, c_in * kh * kw, offsets[f"{conv}.b"], body.device
                )
                tape.append(TapedLayer(a, s, index, ConvGeometry((kh, kw))))
            a = F.avg_pool2d(torch.tanh(s), 2)
        flat = a.flatten(1)
        s = flat @ p["fc.w"] + p["fc.b"]
        if tape is not None:
            n_in, n_out = self.shapes["fc.w"]
            index = in_out_index(offsets["fc.w"], n_in, n_out, offsets["fc.b"], body.device)
            tape.append(TapedLayer(flat, s, index))
        return torch.tanh(s)

    def _full_outputs(
        self, theta: torch.Tensor, x: torch.Tensor, tape: list[TapedLayer] | None = None
    ) -> torch.Tensor:
        """Logits ``(n, k)`` of the whole network, ``theta`` ``(n_body + n_head,)`` being
        the body's parameters followed by the head's; with ``tape``, its four layers
        appended (indexes into the whole ``theta``)."""
        body, head = theta[: self.n_body], theta[self.n_body :]
        embeddings = self.embed(body, x, tape)
        if tape is None:
            return self.head.outputs(head, embeddings)
        out, head_layers = self.head.taped_outputs(head, embeddings)
        tape.extend(replace(layer, index=layer.index + self.n_body) for layer in head_layers)
        return out

    def taped_outputs(
        self, theta: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[TapedLayer]]:
        if self.params == "last":
            return self.head.taped_outputs(theta, self._frozen_embed(x))
        tape: list[TapedLayer] = []
        return self._full_outputs(theta, x, tape), tape

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor | None:
        """The frozen body's embeddings ``(n, hidden)`` of ``x`` ``(n, d)`` for
        ``params="last"`` (no gradient flows into them), ``None`` for ``params="all"``."""
        if self.params == "all":
            return None
        return self._frozen_embed(x)

    def _frozen_embed(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen body's embeddings ``(n, hidden)`` of ``x`` ``(n, d)`` (no gradient
        flows into them): :meth:`frozen_features` of ``params="last"``."""
        body = self._trained_body()
        with torch.no_grad():
            return self.embed(body.to(x.dtype), x)

    def _trained_body(self) -> torch.Tensor:
        """The frozen body ``(n_body,)`` that :meth:`pretrain` trained."""
        if self.body_theta is None:
            raise RuntimeError("the CNN's body is not trained yet: call pretrain first")
        return self.body_theta

    def outputs(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.params == "all":
            return self._full_outputs(theta, x)
        return self.head.outputs(theta, self._frozen_embed(x))

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head.loss(outputs, y)

    def predict(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head.predict(outputs)

    # --- closed forms when only the head counts ----------------------------------------
    def hvp(
        self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor | None:
        if self.params == "all":
            return None
        return self.head.hvp(theta, self._frozen_embed(x), y, v)

    def loss_hessian(
        self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor | None:
        if self.params == "all":
            return None
        return self.head.loss_hessian(theta, self._frozen_embed(x), y)

    # --- training ----------------------------------------------------------------------
    def _init_body_and_head(self, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        """Random starting parameters of the whole network ``(n_body + n_head,)``."""
        parts = []
        for key, shape in self.shapes.items():
            if key.endswith(".b"):
                parts.append(torch.zeros(math.prod(shape), dtype=dtype))
            else:
                fan_in = math.prod(shape[1:]) if key.startswith("conv") else shape[0]
                parts.append(
                    torch.randn(math.prod(shape), generator=generator, dtype=dtype)
                    / math.sqrt(fan_in)
                )
        head = torch.randn(self.n_head, generator=generator, dtype=dtype) / math.sqrt(self.hidden)
        return torch.cat([*parts, head])

    @property
    def has_closed_form_hessian(self) -> bool:
        """Only the head's Hessian has a closed form (``params="last"``)."""
        return self.params == "last"

    def fitted_state(self, theta: torch.Tensor) -> torch.Tensor:
        """``[input_scale, body (params="last" only), theta]``: a resumed run or another
        rank rebuilds the same network from it."""
        body = self._trained_body() if self.params == "last" else theta[:0]
        return torch.cat([theta.new_tensor([self.input_scale]), body.to(theta), theta])

    def load_fitted_state(self, state: torch.Tensor) -> torch.Tensor | None:
        body = self.n_body if self.params == "last" else 0
        if state.numel() != 1 + body + self.n_params:
            return None
        self.input_scale = float(state[0])
        if body:
            self.body_theta = state[1 : 1 + body].clone()
        return state[1 + body :].clone()

    def _full_risk(
        self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weight_decay: float
    ) -> torch.Tensor:
        """The regularised risk (scalar) of the whole network ``theta``
        ``(n_body + n_head,)`` over ``x`` ``(n, d)`` and ``y`` ``(n,)``, whatever
        ``params`` is (:func:`auditor.models.fit.risk` of ``params="all"``)."""
        loss = self.head.loss(self._full_outputs(theta, x), y)
        return loss.mean() + 0.5 * weight_decay * theta.dot(theta)

    def pretrain(
        self, x: torch.Tensor, y: torch.Tensor, weight_decay: float, seed: int
    ) -> torch.Tensor:
        """Train the whole network by minibatch Adam on the regularised risk; return the
        starting point ``(p,)`` of the L-BFGS polish (the head only for ``params="last"``,
        whose body is frozen here)."""
        gen = torch.Generator().manual_seed(seed)
        std = float(x.std())
        # rounded to the data's dtype, in which it scales them anyway: the stored state
        # (in that dtype) then rebuilds the network bit for bit
        self.input_scale = float(torch.tensor(1.0 / std if std > 0 else 1.0, dtype=x.dtype))
        theta = self._init_body_and_head(gen, x.dtype).to(x.device).requires_grad_(True)
        optimizer = torch.optim.Adam([theta], lr=self.lr)
        n = x.shape[0]
        steps = self.epochs * math.ceil(n / self.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        for epoch in range(self.epochs):
            if self.progress:
                self.progress(EPOCHS_PHASE, epoch, self.epochs)
            order = torch.randperm(n, generator=gen).to(x.device)
            for start in range(0, n, self.batch_size):
                b = order[start : start + self.batch_size]
                optimizer.zero_grad()
                # what Tensor.backward() does, typed (torch leaves that one unannotated)
                torch.autograd.backward(self._full_risk(theta, x[b], y[b], weight_decay))
                optimizer.step()
                schedule.step()
        if self.progress:
            self.progress(EPOCHS_PHASE, self.epochs, self.epochs)
        theta = theta.detach()
        if self.params == "last":
            self.body_theta = theta[: self.n_body].clone()
            return theta[self.n_body :].clone()
        return theta


def build_cnn(spec: ModelSpec) -> ModelTask:
    """The CNN for labelled images of ``spec.image_shape``."""
    if spec.task != "classification" or spec.image_shape is None:
        raise ConfigError("--model cnn needs labelled images (idx, image folder, image NPZ)")
    c, h, w = spec.image_shape
    return CNN(
        (c, h, w), spec.n_classes, params=spec.params, hidden=spec.hidden, epochs=spec.epochs
    )
