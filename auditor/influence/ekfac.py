"""EK-FAC: the Hessian of a network as Kronecker-factored blocks with corrected eigenvalues.

For each ``Linear``/``Conv2d`` layer ``s = W a`` (George et al. 2018, as Kronfluence uses
it for influence, Grosse et al. 2023) the curvature block of ``W`` is approximated by the
Gauss-Newton matrix of the layer, ``E[(g g^T) kron (a a^T)]``, where ``g`` is a gradient of
the loss with respect to ``s`` under targets drawn from the model's own predictive
distribution (so that its expectation is the Gauss-Newton matrix, not the empirical
Fisher). K-FAC takes ``A = E[a a^T]`` and ``S = E[g g^T]`` apart; EK-FAC keeps their
eigenvectors ``Q_A``, ``Q_S`` and fits the eigenvalues afresh in that basis,
``lambda[o, i] = mean_n ((Q_S^T G_n Q_A)[o, i])^2`` with ``G_n`` the per-example gradient
``(d_out, d_in)`` of the layer's weights. Then the damped inverse of a block is

    (Q_S kron Q_A) diag(1 / (lambda + shift)) (Q_S kron Q_A)^T

which costs a few small matrix products per vector. The factors take
``d_in^2 + d_out^2 + d_out d_in`` numbers per layer: no ``(p, p)`` matrix, nothing of size
``n``. Convolutions treat every output position as one more sample of ``a`` (the input
patch, ``F.unfold``) and ``g`` (Grosse and Martens' KFC).

Parameters outside every factored layer (a normalisation layer's scale, a shared layer)
get an inverse of 0: influence is taken over the covered parameters only
(:attr:`EkfacFactors.covered` says how many).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import hessian, vmap

from auditor.errors import ConfigError, SolverError
from auditor.models.base import ModelTask
from auditor.models.tape import TapedLayer

#: Training points per forward/backward pass while fitting the factors.
FIT_CHUNK = 256
#: Most outputs per point for which the Gauss-Newton factors are exact (one backward pass
#: per output); above, one sampled direction per point.
EXACT_OUTPUTS = 16
#: Numbers per temporary while applying the inverse to a chunk of vectors.
APPLY_BUDGET = 2**25


@dataclass
class LayerFactors:
    """One layer's EK-FAC factors.

    Attributes:
        index: ``(d_out, d_in')`` positions of the layer's weights (and bias) in ``theta``.
        q_in: ``(d_in', d_in')`` eigenvectors of ``A = E[a a^T]``.
        q_out: ``(d_out, d_out)`` eigenvectors of ``S = E[g g^T]``.
        eigenvalues: ``(d_out, d_in')`` corrected eigenvalues (mean over the training
            points, so the blocks approximate the mean loss Hessian).
    """

    index: torch.Tensor
    q_in: torch.Tensor
    q_out: torch.Tensor
    eigenvalues: torch.Tensor

    def inverse_terms(
        self, dtype: torch.dtype, shift: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """``Q_S``, ``Q_A`` and ``1 / (lambda + shift)`` in ``dtype``, and how many vectors
        to rotate at once within :data:`APPLY_BUDGET`."""
        d_out, d_in = self.index.shape
        scale = 1.0 / (self.eigenvalues.to(dtype) + shift)
        step = max(1, APPLY_BUDGET // (d_out * d_in))
        return self.q_out.to(dtype), self.q_in.to(dtype), scale, step


@dataclass
class EkfacFactors:
    """Every factored layer of a model at ``theta`` ``(p,)``."""

    layers: list[LayerFactors]
    p: int

    @property
    def covered(self) -> int:
        """How many of the ``p`` parameters lie in a factored layer."""
        return sum(layer.index.numel() for layer in self.layers)

    def smallest_denominator(self, shift: float) -> float:
        """The smallest ``lambda + shift`` over every layer (what the inverse divides by)."""
        return min(float(layer.eigenvalues.min()) for layer in self.layers) + shift

    def inverse_times(self, v: torch.Tensor, shift: float) -> torch.Tensor:
        """``(F + shift I)^{-1} v`` for ``v`` ``(p, m)``: ``(p, m)``, 0 outside the layers."""
        out = torch.zeros_like(v)
        for layer in self.layers:
            q_out, q_in, scale, step = layer.inverse_terms(v.dtype, shift)
            for start in range(0, v.shape[1], step):
                block = v[layer.index, start : start + step].permute(2, 0, 1)  # (m, o, i)
                rotated = q_out.T @ block @ q_in
                back = q_out @ (rotated * scale) @ q_in.T
                out[layer.index, start : start + step] = back.permute(1, 2, 0)
        return out

    def quadratic_forms(self, g: torch.Tensor, shift: float) -> torch.Tensor:
        """``g_i^T (F + shift I)^{-1} g_i`` for each row of ``g`` ``(n, p)``: ``(n,)``,
        without any ``(p, n)`` temporary."""
        out = torch.zeros(g.shape[0], dtype=g.dtype, device=g.device)
        for layer in self.layers:
            q_out, q_in, scale, step = layer.inverse_terms(g.dtype, shift)
            for start in range(0, g.shape[0], step):
                rows = g[start : start + step, layer.index]  # (b, o, i)
                rotated = q_out.T @ rows @ q_in
                out[start : start + step] += (rotated * rotated * scale).sum(dim=(1, 2))
        return out


def fit_ekfac(
    model: ModelTask,
    theta: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int = 0,
    chunk: int = FIT_CHUNK,
) -> EkfacFactors:
    """EK-FAC factors of ``model`` at ``theta`` ``(p,)`` over ``x`` ``(n, d)``, ``y``
    ``(n,)``: two passes over the data, one for ``A`` and ``S``, one for the eigenvalues
    (for models with many outputs, each draws its own directions, seeded by ``seed``).

    Raises:
        ConfigError: The model cannot tell its layers, or has none.
    """
    first = _taped(model, theta, x[:1])
    if not first:
        raise ConfigError(f"--solver ekfac found no Linear or Conv2d layer in {model.name}")
    _check_disjoint(first, theta.shape[0])
    bases = _kronecker_bases(model, theta, x, first, chunk, torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed + 1)
    eigenvalues = _corrected_eigenvalues(model, theta, x, bases, chunk, gen)
    layers = [
        LayerFactors(layer.index, q_in, q_out, lam)
        for layer, (q_in, q_out), lam in zip(first, bases, eigenvalues, strict=True)
    ]
    return EkfacFactors(layers, theta.shape[0])


def _kronecker_bases(
    model: ModelTask,
    theta: torch.Tensor,
    x: torch.Tensor,
    layers: list[TapedLayer],
    chunk: int,
    gen: torch.Generator,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the eigenvectors ``(Q_A, Q_S)`` of ``A = sum a a^T`` ``(d_in', d_in')``
    and ``S = sum g g^T`` ``(d_out, d_out)`` (accumulated in float64; their scale does not
    matter, the eigenvalues are fitted afterwards)."""
    device, wide = theta.device, torch.float64
    a_sums = [
        torch.zeros(ly.index.shape[1], ly.index.shape[1], dtype=wide, device=device)
        for ly in layers
    ]
    s_sums = [
        torch.zeros(ly.index.shape[0], ly.index.shape[0], dtype=wide, device=device)
        for ly in layers
    ]
    for rows in _layer_rows(model, theta, x, chunk, gen):
        for k, (a, g) in enumerate(rows):
            a2 = a.reshape(-1, a.shape[-1]).to(wide)
            g2 = g.reshape(-1, g.shape[-1]).to(wide)  # every column of the root
            a_sums[k] += a2.T @ a2
            s_sums[k] += g2.T @ g2
    return [
        (
            torch.linalg.eigh(a_sum).eigenvectors.to(theta.dtype),
            torch.linalg.eigh(s_sum).eigenvectors.to(theta.dtype),
        )
        for a_sum, s_sum in zip(a_sums, s_sums, strict=True)
    ]


def _corrected_eigenvalues(
    model: ModelTask,
    theta: torch.Tensor,
    x: torch.Tensor,
    bases: list[tuple[torch.Tensor, torch.Tensor]],
    chunk: int,
    gen: torch.Generator,
) -> list[torch.Tensor]:
    """Per layer, ``mean_n sum_c ((Q_S^T G_nc Q_A)[o, i])^2`` ``(d_out, d_in')``, ``G_nc``
    the layer's weight gradient of point ``n`` along output direction ``c``."""
    wide = torch.float64
    sums = [
        torch.zeros(q_out.shape[0], q_in.shape[0], dtype=wide, device=theta.device)
        for q_in, q_out in bases
    ]
    for rows in _layer_rows(model, theta, x, chunk, gen):
        for k, (a, g) in enumerate(rows):
            q_in, q_out = bases[k]
            per_example = torch.einsum("cblo,bli->cboi", g @ q_out, a @ q_in)
            sums[k] += (per_example.to(wide) ** 2).sum(dim=(0, 1))
    return [(total / x.shape[0]).to(theta.dtype) for total in sums]


def check_denominators(factors: EkfacFactors, shift: float) -> None:
    """Raise :class:`SolverError` when ``lambda + shift`` reaches 0 (a unit that never
    fires and no weight decay or damping): the inverse would divide by it."""
    smallest = factors.smallest_denominator(shift)
    if smallest > 0:
        return
    mean = sum(float(f.eigenvalues.mean()) for f in factors.layers) / len(factors.layers)
    raise SolverError(
        f"EK-FAC's corrected eigenvalues reach {smallest:.2e} with weight decay and damping "
        f"{shift:g}; add --damping (0.1 x their mean, {0.1 * mean:.2e}, is Kronfluence's "
        "default)"
    )


def check_ekfac_model(model: ModelTask) -> None:
    """Raise :class:`ConfigError` unless EK-FAC can see ``model``'s layers (checked before
    a scan writes anything)."""
    frozen_body_head = model.head is not None and model.head.tapes_layers
    if not (model.tapes_layers or frozen_body_head):
        raise ConfigError(
            f"--solver ekfac needs to see the model's layers, and a {model.name} model "
            "cannot show them; use --solver cg or lissa, --params last, or give the model "
            "as a state dict with --model-factory"
        )


def _taped(model: ModelTask, theta: torch.Tensor, x: torch.Tensor) -> list[TapedLayer]:
    check_ekfac_model(model)
    found = model.taped_outputs(theta, x)
    assert found is not None, "a model that tapes its layers returns them"
    return found[1]


def _check_disjoint(layers: list[TapedLayer], p: int) -> None:
    positions = torch.cat([layer.index.reshape(-1) for layer in layers])
    if torch.unique(positions).numel() != positions.numel() or int(positions.max()) >= p:
        raise ConfigError("--solver ekfac: two layers share parameters; use --solver cg")


def _layer_rows(
    model: ModelTask,
    theta: torch.Tensor,
    x: torch.Tensor,
    chunk: int,
    gen: torch.Generator,
) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per chunk of rows, per layer: inputs ``a`` ``(b, L, d_in')`` (a column of ones
    appended for a bias) and output gradients ``g`` ``(c, b, L, d_out)``, one per column
    of :func:`output_hessian_roots` (``c`` of them); ``L`` the positions sharing the
    weights (1 for a plain linear layer)."""
    theta = theta.detach().requires_grad_(True)
    for start in range(0, x.shape[0], chunk):
        xb = x[start : start + chunk]
        with torch.enable_grad():
            found = model.taped_outputs(theta, xb)
            assert found is not None, "checked by _taped"
            outputs, layers = found
            roots = output_hessian_roots(model, outputs.detach(), gen)
            columns = [
                torch.autograd.grad(
                    outputs,
                    [layer.outputs for layer in layers],
                    root,
                    retain_graph=c < roots.shape[0] - 1,
                )
                for c, root in enumerate(roots)
            ]
        yield [
            _rows(layer, torch.stack([col[k].detach() for col in columns]))
            for k, layer in enumerate(layers)
        ]


def _rows(layer: TapedLayer, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c, b = g.shape[:2]
    inputs = layer.inputs.detach()
    if layer.conv is None:
        a = inputs.reshape(b, -1, inputs.shape[-1])
        g = g.reshape(c, b, -1, g.shape[-1])
    else:
        geo = layer.conv
        a = F.unfold(inputs, geo.kernel_size, geo.dilation, geo.padding, geo.stride)
        a = a.transpose(1, 2)
        g = g.reshape(c, b, g.shape[2], -1).transpose(2, 3)
    if layer.has_bias:
        a = torch.cat([a, a.new_ones(*a.shape[:2], 1)], dim=2)
    return a, g


def output_hessian_roots(
    model: ModelTask, outputs: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """Vectors ``r_c`` ``(c, b, k)`` with ``sum_c r_c r_c^T = H_o`` per row of ``outputs``
    ``(b, k)`` (exactly, or in expectation), ``H_o`` the Hessian of the example's loss in
    its outputs. Backpropagated, they give the Gauss-Newton matrix, which for the
    cross-entropy is the Fisher with targets drawn from the model, not the empirical one.

    With at most :data:`EXACT_OUTPUTS` outputs the columns of the symmetric root
    ``H_o^{1/2}`` (``c = k`` backward passes, no randomness); with more, one draw
    ``H_o^{1/2} eps``, ``eps`` standard normal from ``gen`` (Kronfluence's sampling).
    Generic in the loss: ``H_o`` comes from ``torch.func.hessian``."""

    def example_loss(o: torch.Tensor) -> torch.Tensor:
        # the built-in losses' Hessian in the outputs does not depend on the target
        return model.loss(o[None], _any_target(o))[0]

    h: torch.Tensor = vmap(hessian(example_loss))(outputs)  # (b, k, k)
    values, vectors = torch.linalg.eigh(h)
    root: torch.Tensor = (vectors * values.clamp_min(0).sqrt()[:, None, :]) @ vectors.mT
    if outputs.shape[1] <= EXACT_OUTPUTS:
        return root.permute(2, 0, 1)  # column c of every row's root
    eps = torch.randn(outputs.shape, generator=gen, dtype=outputs.dtype).to(outputs.device)
    return (root @ eps[..., None])[None, ..., 0]


def _any_target(o: torch.Tensor) -> torch.Tensor:
    """A target the loss accepts (class 0, or 0.0 for a regression)."""
    if o.shape[0] > 1:  # logits of several classes
        return torch.zeros(1, dtype=torch.long, device=o.device)
    return torch.zeros(1, dtype=o.dtype, device=o.device)
