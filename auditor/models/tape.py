"""The layers a forward pass went through, for Kronecker-factored curvature (EK-FAC).

A model that supports EK-FAC returns, besides its outputs, one :class:`TapedLayer` per
``Linear``/``Conv2d`` layer it applied: the layer's input, its output (the pre-activation,
still in the autograd graph, so the loss's gradient with respect to it can be taken) and
where each of the layer's weights lies in the flat parameter vector ``theta``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ConvGeometry:
    """How a ``Conv2d`` layer slides over its input (what ``F.unfold`` needs)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)


@dataclass
class TapedLayer:
    """One linear map ``s = W a (+ b)`` seen in a forward pass over ``n`` examples.

    Attributes:
        inputs: ``a``: ``(n, ..., d_in)`` for a linear layer (any middle dimensions are
            positions sharing the weight), ``(n, C, H, W)`` for a convolution.
        outputs: ``s``, in the autograd graph: ``(n, ..., d_out)`` or ``(n, d_out, H', W')``.
        index: ``(d_out, d_in')`` long: where weight ``[o, i]`` lies in ``theta``;
            ``d_in'`` is ``d_in`` (``C * kh * kw`` for a convolution) plus one column, the
            bias's positions, when the layer has a bias.
        conv: The convolution's geometry, ``None`` for a linear layer.
    """

    inputs: torch.Tensor
    outputs: torch.Tensor
    index: torch.Tensor
    conv: ConvGeometry | None = None

    @property
    def has_bias(self) -> bool:
        return self.index.shape[1] == self.fan_in + 1

    @property
    def fan_in(self) -> int:
        """``d_in``: inputs per output (``C * kh * kw`` for a convolution), bias aside."""
        if self.conv is None:
            return self.inputs.shape[-1]
        kh, kw = self.conv.kernel_size
        return self.inputs.shape[1] * kh * kw

    def without_bias(self) -> TapedLayer:
        """The same layer with its bias column dropped (a bias held fixed at 0)."""
        return TapedLayer(self.inputs, self.outputs, self.index[:, :-1], self.conv)


def in_out_index(
    offset: int, n_in: int, n_out: int, bias_offset: int | None, device: torch.device
) -> torch.Tensor:
    """Index ``(n_out, n_in [+ 1])`` of a layer computing ``a @ W + b`` whose ``W``
    ``(n_in, n_out)`` lies row-major at ``offset`` of ``theta`` and ``b`` ``(n_out,)`` at
    ``bias_offset`` (the built-in models' layout)."""
    weight = offset + torch.arange(n_in * n_out, device=device).reshape(n_in, n_out).T
    return _with_bias(weight, bias_offset)


def out_in_index(
    offset: int, n_out: int, n_in: int, bias_offset: int | None, device: torch.device
) -> torch.Tensor:
    """Index ``(n_out, n_in [+ 1])`` of a layer whose weight ``(n_out, n_in)`` (or
    ``(n_out, C, kh, kw)``, ``n_in = C * kh * kw``) lies row-major at ``offset`` of
    ``theta``, as ``nn.Linear`` and ``nn.Conv2d`` hold it, and its bias at ``bias_offset``."""
    weight = offset + torch.arange(n_out * n_in, device=device).reshape(n_out, n_in)
    return _with_bias(weight, bias_offset)


def _with_bias(weight: torch.Tensor, bias_offset: int | None) -> torch.Tensor:
    if bias_offset is None:
        return weight
    bias = bias_offset + torch.arange(weight.shape[0], device=weight.device)
    return torch.cat([weight, bias[:, None]], dim=1)
