"""Your own trained network (``--model-file``) as a :class:`~auditor.models.ModelTask`.

The network (:mod:`auditor.models.files`: a ``torch.export`` program, a TorchScript file,
or a state dict with its factory) takes the data's features reshaped to the images'
``(C, H, W)`` when the data has images, else ``(n, d)``, and returns logits ``(n, k)``
(one per class, or one for two classes: the logit of the second class) or regression
values ``(n,)`` / ``(n, 1)``. The loss is the built-in models' (cross-entropy, binary
log loss, squared error ``(y_hat - y)^2 / 2``), so the risk is the usual
``mean L + (weight_decay / 2) |theta|^2``.

``params`` chooses what influence is taken over:

- ``last``: the last linear layer, which must make the output (up to a reshape). The body
  is frozen: its embeddings (the layer's input) are computed once, and the head over them
  is a generalised linear model (:mod:`auditor.models.glm`) whose logits reproduce the
  model's own (checked on a batch when the model loads), with a closed-form Hessian.
- ``all``: every parameter, through ``torch.func.functional_call`` (not for TorchScript,
  which ``torch.func`` cannot run).

``fit`` says whether the model is refitted:

- ``none``: used as trained; ``theta`` is the trained parameters (the fit only measures
  the gradient norm, which is usually far from an optimum of the regularised risk: the
  scan warns and advises ``--fit last``). The ranking's masking refits keep them too.
- ``last``: the last linear layer is refitted to the regularised risk by Newton-CG from its
  trained values (the body stays as trained), so the Hessian is taken at an optimum.
"""

from __future__ import annotations

import collections
import itertools
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import grad, vmap

from auditor.errors import ConfigError, DataError
from auditor.models.base import ModelSpec, ModelTask
from auditor.models.files import (
    CHUNK,
    LastLayer,
    Network,
    NoLastLayer,
    SeenLayer,
    one_line,
    one_tensor,
    read_network,
    sha256_of,
)
from auditor.models.fit import fit
from auditor.models.glm import BinaryLogistic, LinearRegression, MultinomialLogistic
from auditor.models.tape import ConvGeometry, TapedLayer, out_in_index

#: Training points the load phase sends through the model to check it.
CHECK_POINTS = 8
#: Most iterations of ``--fit last`` (the scan's own limit applies too).
HEAD_POLISH_ITER = 10_000


class UserModel(ModelTask):
    """A user's trained network; see the module docstring.

    Args:
        network: The network read from the file.
        spec: The data's task, features, classes and image shape, and ``params``.
        n_logits: The outputs per point the network returns (checked against the data).
        fit: ``none`` or ``last``.
        source: Where the model came from (path, kind, sha256, factory): the run stores it.
        layer: The last linear layer's weight ``(k, h)`` and bias (``params="last"``).
    """

    def __init__(
        self,
        network: Network,
        spec: ModelSpec,
        n_logits: int,
        *,
        fit: str,
        source: dict[str, Any],
        layer: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> None:
        super().__init__(spec.n_features, n_logits if spec.task == "classification" else 1)
        self.name = network.kind
        self.network = network
        self.params = spec.params
        self.fit_mode = fit
        self.source = source
        self.task = spec.task
        self.n_classes = spec.n_classes
        self.input_shape: tuple[int, ...] = spec.image_shape or (spec.n_features,)
        self._loss_model = glm_head(spec.task, n_logits, 1, bias=True)
        self.head: ModelTask | None = None
        if spec.params == "last":
            assert layer is not None, "params='last' needs the last linear layer"
            weight, bias = layer
            self.head = glm_head(spec.task, n_logits, weight.shape[1], bias=bias is not None)
            self._trained = head_theta(weight, bias)
            self.n_params = self.head.n_params
        else:
            trained = network.parameters()
            self._names = list(trained)
            self._shapes = [tuple(t.shape) for t in trained.values()]
            self._trained = torch.cat([t.reshape(-1) for t in trained.values()])
            self.n_params = self._trained.numel()

    # --- the network -----------------------------------------------------------------------
    def shaped(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(n, d)`` as the network takes them: ``(n, C, H, W)`` for images."""
        return x.reshape(x.shape[0], *self.input_shape)

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor | None:
        """The embeddings ``(n, h)`` that enter the last linear layer (``params="last"``),
        else ``None``."""
        if self.params != "last":
            return None
        return self.network.last_layer(self.shaped(x))[0]

    def _head(self) -> ModelTask:
        assert self.head is not None, "params='last' has a head"
        return self.head

    @property
    def _sizes(self) -> list[int]:
        return [math.prod(s) for s in self._shapes]

    def _unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(theta, self._sizes)
        return {
            name: part.reshape(shape)
            for name, part, shape in zip(self._names, parts, self._shapes, strict=True)
        }

    def outputs(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.params == "last":
            features = self.frozen_features(x)
            assert features is not None
            return self._head().outputs(theta, features)
        params = self._unflatten(theta)
        shaped = self.shaped(x)
        chunks = [
            one_tensor(self.network.functional(params, shaped[s : s + CHUNK]))
            for s in range(0, shaped.shape[0], CHUNK)
        ]
        out = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
        return out.reshape(x.shape[0], -1)

    def taped_outputs(
        self, theta: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[TapedLayer]] | None:
        """The head's layer for ``params="last"``; for ``params="all"`` every ``nn.Linear``
        and ``nn.Conv2d`` call of a state dict's module that :func:`tape_layer` can factor
        (``None`` for an exported or scripted program, whose layers cannot be seen)."""
        if self.params == "last":
            features = self.frozen_features(x)
            assert features is not None
            return self._head().taped_outputs(theta, features)
        found = self.network.taped(self._unflatten(theta), self.shaped(x))
        if found is None:
            return None
        out, seen = found
        calls = collections.Counter(layer.name for layer in seen)
        offsets = dict(zip(self._names, itertools.accumulate([0, *self._sizes]), strict=False))
        tape = [
            taped
            for layer in seen
            if calls[layer.name] == 1  # a layer called twice shares its weights: not factored
            and (taped := tape_layer(layer, offsets)) is not None
        ]
        return one_tensor(out).reshape(x.shape[0], -1), tape

    @property
    def tapes_layers(self) -> bool:
        """The head's layer always; every layer only of a state dict's module."""
        return self.params == "last" or type(self.network).taped is not Network.taped

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._loss_model.loss(outputs, y)

    def predict(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._loss_model.predict(outputs)

    def hvp(
        self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor | None:
        features = self.frozen_features(x)
        return None if features is None else self._head().hvp(theta, features, y, v)

    def loss_hessian(
        self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor | None:
        features = self.frozen_features(x)
        return None if features is None else self._head().loss_hessian(theta, features, y)

    @property
    def has_closed_form_hessian(self) -> bool:
        """Only the head's (``params="last"``)."""
        return self.params == "last"

    # --- the fit ---------------------------------------------------------------------------
    @property
    def max_polish_iter(self) -> int:
        """Iterations the fit (and the ranking's refits) may take: none for a model
        used as trained, or over all parameters (``--fit last`` refits the last layer in
        :meth:`pretrain` then)."""
        if self.fit_mode == "none" or self.params == "all":
            return 0
        return HEAD_POLISH_ITER

    @property
    def fitted_to_optimum(self) -> bool:
        """Only ``--fit last`` with ``params="last"`` fits ``theta`` to an optimum."""
        return self.max_polish_iter > 0

    @property
    def optimum_advice(self) -> str:
        if self.fit_mode == "none":
            return (
                "the model is used as trained (--fit none); --fit last refits its last linear "
                "layer to an optimum"
            )
        if self.params == "all":
            return (
                "--fit last refits the last layer only, and influence is over all parameters: "
                "use --params last, or --damping"
            )
        return super().optimum_advice

    def pretrain(
        self, x: torch.Tensor, y: torch.Tensor, weight_decay: float, seed: int
    ) -> torch.Tensor:
        """The trained parameters ``(p,)``: the fit starts (and with ``--fit none`` stays)
        there. With ``params="all"`` and ``--fit last`` the last layer is refitted here,
        over the body's embeddings of ``x``."""
        theta = self._trained.to(device=x.device, dtype=x.dtype).clone()
        if self.params == "last" or self.fit_mode == "none":
            return theta
        embeddings, weight, bias = self.network.last_layer(self.shaped(x))
        head = glm_head(self.task, self.n_outputs, weight.shape[1], bias=bias is not None)
        refit = fit(head, embeddings, y, weight_decay, seed=seed, theta0=head_theta(weight, bias))
        weight_name, bias_name = self.network.last_layer_names()
        refitted = split_head_theta(refit.theta, weight.shape, bias is not None)
        params = self._unflatten(theta)
        params[weight_name] = refitted[0]
        if bias_name is not None and refitted[1] is not None:
            params[bias_name] = refitted[1].reshape(params[bias_name].shape)
        return torch.cat([params[name].reshape(-1) for name in self._names])

    def provenance(self) -> dict[str, Any] | None:
        return self.source


# --- the head --------------------------------------------------------------------------------


class NoBias(ModelTask):
    """A generalised linear ``head`` whose bias is fixed at 0 (a last layer without one):
    ``theta`` is the head's without its bias, which is the tail of the head's ``theta``
    (:mod:`auditor.models.glm`), so Hessians are the head's leading block."""

    def __init__(self, head: ModelTask) -> None:
        super().__init__(head.n_features, head.n_outputs)
        self.inner = head
        self.name = head.name
        self.n_bias = 1 if isinstance(head, BinaryLogistic | LinearRegression) else head.n_outputs
        self.n_params = head.n_params - self.n_bias

    def _full(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.cat([theta, theta.new_zeros(self.n_bias)])

    def outputs(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.inner.outputs(self._full(theta), x)

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.inner.loss(outputs, y)

    def predict(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.predict(outputs)

    def hvp(
        self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor | None:
        padded = torch.cat([v, v.new_zeros(self.n_bias, v.shape[1])])
        full = self.inner.hvp(self._full(theta), x, y, padded)
        return None if full is None else full[: self.n_params]

    def loss_hessian(
        self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor | None:
        full = self.inner.loss_hessian(self._full(theta), x, y)
        return None if full is None else full[: self.n_params, : self.n_params]

    @property
    def has_closed_form_hessian(self) -> bool:
        return self.inner.has_closed_form_hessian

    @property
    def convex_risk(self) -> bool:
        return self.inner.convex_risk

    def taped_outputs(
        self, theta: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[TapedLayer]] | None:
        found = self.inner.taped_outputs(self._full(theta), x)
        if found is None:
            return None
        out, tape = found
        return out, [layer.without_bias() for layer in tape]


def tape_layer(layer: SeenLayer, offsets: dict[str, int]) -> TapedLayer | None:
    """The :class:`TapedLayer` of a module call, its indexes from ``offsets`` (parameter
    name -> position in ``theta``); ``None`` for a convolution EK-FAC does not factor
    (groups, a padding mode other than zeros, or padding given as a string)."""
    module, prefix = layer.module, f"{layer.name}." if layer.name else ""
    weight = offsets[f"{prefix}weight"]
    bias = offsets[f"{prefix}bias"] if module.bias is not None else None
    device = layer.inputs.device
    if isinstance(module, nn.Linear):
        index = out_in_index(weight, module.out_features, module.in_features, bias, device)
        return TapedLayer(layer.inputs, layer.outputs, index)
    if (
        module.groups != 1
        or module.padding_mode != "zeros"
        or isinstance(module.padding, str)
        or layer.inputs.dim() != 4
    ):
        return None
    kh, kw = module.kernel_size
    fan_in = module.in_channels * kh * kw
    stride, padding, dilation = module.stride, module.padding, module.dilation
    geometry = ConvGeometry(
        (kh, kw),
        (stride[0], stride[1]),
        (padding[0], padding[1]),
        (dilation[0], dilation[1]),
    )
    index = out_in_index(weight, module.out_channels, fan_in, bias, device)
    return TapedLayer(layer.inputs, layer.outputs, index, geometry)


def glm_head(task: str, n_logits: int, n_features: int, *, bias: bool) -> ModelTask:
    """The generalised linear model of a last layer with ``n_logits`` outputs over
    ``n_features`` embeddings: linear regression, binary logistic (one logit) or
    multinomial logistic (one logit per class)."""
    head: ModelTask
    if task == "regression":
        head = LinearRegression(n_features)
    elif n_logits == 1:
        head = BinaryLogistic(n_features)
    else:
        head = MultinomialLogistic(n_features, n_logits)
    return head if bias else NoBias(head)


def head_theta(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The head's ``theta`` for a linear layer ``weight`` ``(k, h)`` and ``bias`` ``(k,)``
    (:mod:`auditor.models.glm`'s layouts: ``[w, b]`` for one output, the ``(h + 1, k)``
    matrix row-major for more; without the bias row or entry when ``bias`` is None)."""
    if weight.shape[0] == 1:
        parts = [weight[0]] if bias is None else [weight[0], bias.reshape(1)]
        return torch.cat(parts).clone()
    rows = weight.T if bias is None else torch.cat([weight.T, bias.reshape(1, -1)])
    return rows.reshape(-1).clone()


def split_head_theta(
    theta: torch.Tensor, weight_shape: torch.Size, has_bias: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`head_theta`'s inverse: the weight ``(k, h)`` and bias ``(k,)`` (or None)."""
    k, h = weight_shape
    if k == 1:
        return theta[:h].reshape(1, h), theta[h:].clone() if has_bias else None
    rows = theta.reshape(h + (1 if has_bias else 0), k)
    return rows[:h].T.contiguous(), rows[h].clone() if has_bias else None


# --- loading and checking ----------------------------------------------------------------------


def load_user_model(
    path: str,
    factory: str | None,
    spec: ModelSpec,
    *,
    fit: str,
    device: torch.device,
    dtype: torch.dtype,
    sample: torch.Tensor,
) -> UserModel:
    """Read the model file ``path`` and check it on ``sample`` ``(b, d)``, the first
    training points on ``device`` in ``dtype``: it must run, return one tensor of the
    right number of outputs, and for ``params="last"`` or ``fit="last"`` make them with
    its last linear layer. Nothing is written before this returns.

    Raises:
        DataError: The file is missing or not a model, the model raises on the batch, its
            outputs do not match the data (classes, regression), or are not finite.
        ConfigError: A factory problem, or ``params`` that the model cannot give.
    """
    file = Path(path).expanduser()
    network = read_network(file, factory, device, dtype)
    source = {
        "path": str(file.resolve()),
        "kind": network.kind,
        "sha256": sha256_of(file),
        "factory": factory,
    }
    shape = spec.image_shape or (spec.n_features,)
    _check_input_shape(network, shape)
    batch = sample[:CHECK_POINTS].reshape(-1, *shape)
    out = _run(lambda: network.forward(batch), batch)
    n_logits = _check_outputs(out, spec, batch.shape[0])
    layer: tuple[torch.Tensor, torch.Tensor | None] | None = None
    try:
        if spec.params == "last" or fit == "last":  # the layer to take influence over or refit
            found = _run(lambda: network.last_layer(batch), batch)
            layer = _check_last_layer(found, out.reshape(batch.shape[0], -1), n_logits)
        if spec.params == "all" and fit == "last":
            network.last_layer_names()  # the refit writes the layer back by these names
    except NoLastLayer as exc:
        if spec.params == "last":
            need, advice = "--params last takes influence over", "use --params all"
            if network.kind == "torchscript":
                advice = "save the model with torch.export and use --params all"
        else:
            need, advice = "--fit last refits", "use --fit none"
        raise ConfigError(
            f"{need} the model's last linear layer, and {exc}; give logits straight from "
            f"a linear layer, or {advice}"
        ) from None
    model = UserModel(network, spec, n_logits, fit=fit, source=source, layer=layer)
    if spec.params == "all":
        _check_functional(model, sample[:CHECK_POINTS], out)
    return model


def _check_input_shape(network: Network, shape: tuple[int, ...]) -> None:
    declared = network.input_shape
    if declared is None:
        return
    fits = len(declared) == len(shape) and all(
        d is None or d == s for d, s in zip(declared, shape, strict=True)
    )
    if not fits:
        text = "×".join("?" if d is None else str(d) for d in declared)
        raise DataError(
            f"the model takes points of shape {text}; the data's points have shape "
            f"{'×'.join(map(str, shape))}"
        )


def _run(call: Any, batch: torch.Tensor) -> Any:
    """``call()``, with any exception but ours as a :class:`DataError` naming the batch."""
    try:
        return call()
    except (ConfigError, DataError):
        raise
    except Exception as exc:
        raise DataError(
            f"the model raised on a batch of {batch.shape[0]} training points of shape "
            f"{tuple(batch.shape)} ({batch.dtype}, {batch.device}): {type(exc).__name__}: "
            f"{one_line(str(exc))}"
        ) from None


def _check_outputs(out: torch.Tensor, spec: ModelSpec, n: int) -> int:
    """The logits (outputs) per point of ``out`` for a batch of ``n``, checked against
    the data."""
    if out.ndim == 0 or out.shape[0] != n:
        raise DataError(
            f"the model returns shape {tuple(out.shape)} for a batch of {n} points; its "
            f"first dimension must be the batch"
        )
    if not out.is_floating_point():
        raise DataError(f"the model returns {out.dtype} values; auditor needs floating logits")
    k = out[0].numel()
    rows = out.reshape(n, -1)
    if spec.task == "regression":
        if k != 1:
            raise DataError(
                f"the model returns {k} outputs per point; a regression needs one value"
            )
    elif not (k == spec.n_classes or (k == 1 and spec.n_classes == 2)):
        raise DataError(
            f"the model returns {k} outputs per point; the data has {spec.n_classes} classes "
            "(give one logit per class, or one logit for two classes)"
        )
    if not torch.isfinite(rows).all():
        raise DataError("the model's outputs on the first training points are not finite")
    if (
        spec.task == "classification"
        and k > 1
        and bool(((rows >= 0) & (rows <= 1)).all())
        and torch.allclose(rows.sum(dim=1), torch.ones_like(rows[:, 0]), atol=1e-4)
    ):
        raise DataError(
            "the model returns probabilities (each point's outputs sum to 1); auditor needs "
            "logits: drop the final softmax"
        )
    return k


def _check_last_layer(
    found: LastLayer, out: torch.Tensor, n_logits: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The last layer's weight and bias, checked to reproduce the model's outputs ``out``
    ``(b, k)`` from its embeddings."""
    embeddings, weight, bias = found
    if weight.ndim != 2 or weight.shape != (n_logits, embeddings.shape[1]):
        raise NoLastLayer(
            f"the last linear layer's weight has shape {tuple(weight.shape)} for "
            f"{embeddings.shape[1]} embeddings and {n_logits} outputs"
        )
    logits = embeddings @ weight.T + (0 if bias is None else bias)
    scale = float(out.abs().max()) or 1.0
    tol = 1e-4 if out.dtype != torch.float64 else 1e-9
    if not torch.allclose(logits, out, rtol=tol, atol=tol * scale):
        gap = float((logits - out).abs().max())
        raise NoLastLayer(
            f"the last linear layer's outputs differ from the model's (by up to {gap:.3g}): "
            "an operation follows it"
        )
    return weight, bias


def _check_functional(model: UserModel, x: torch.Tensor, out: torch.Tensor) -> None:
    """``params="all"``: the model as a function of its parameters reproduces ``out``,
    and ``torch.func`` differentiates it one point at a time."""
    y = model.predict(out.reshape(x.shape[0], -1))[0]
    if model.task == "regression":
        y = out.reshape(-1).to(x.dtype)
    theta = model._trained.to(device=x.device, dtype=x.dtype)

    def attempt() -> torch.Tensor:
        with torch.no_grad():
            again = model.outputs(theta, x)
        torch.testing.assert_close(again, out.reshape(x.shape[0], -1))
        grads: torch.Tensor = vmap(grad(model.example_loss), in_dims=(None, 0, 0))(
            theta, x[:2], y[:2]
        )
        return grads

    try:
        attempt()
    except (ConfigError, DataError):
        raise
    except Exception as exc:
        raise ConfigError(
            "--params all: torch.func cannot differentiate this model one point at a time "
            f"({type(exc).__name__}: {one_line(str(exc), 300)}); use --params last"
        ) from None
