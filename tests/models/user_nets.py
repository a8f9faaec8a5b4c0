"""Small networks a user might bring to ``auditor scan --model-file``, their factories
(``--model-factory tests.models.user_nets:mlp``), how they are trained and saved."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


class MLP(nn.Module):
    """A tanh MLP: ``body`` then the last linear layer ``fc`` (``k`` outputs, with or
    without a bias); with ``squeeze`` a single output is returned as ``(n,)``."""

    def __init__(
        self, d: int = 3, hidden: int = 8, k: int = 2, squeeze: bool = False, bias: bool = True
    ):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, hidden), nn.Tanh())
        self.fc = nn.Linear(hidden, k, bias=bias)
        self.squeeze = squeeze

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(self.body(x))
        return out.squeeze(-1) if self.squeeze else out


class TinyCNN(nn.Module):
    """conv 5x5 (4) -> tanh -> avg-pool 4 -> linear (8) -> tanh -> linear (1 logit)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 4, 5),
            nn.Tanh(),
            nn.AvgPool2d(4),
            nn.Flatten(),
            nn.Linear(4 * 6 * 6, 8),
            nn.Tanh(),
        )
        self.fc = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class Scaled(MLP):
    """An MLP whose output is its last layer's times 2: not the layer's own output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.fc(self.body(x))


class Raises(MLP):
    """An MLP whose forward pass fails on every batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("this model cannot take a batch")


def mlp() -> nn.Module:
    return MLP()


def mlp3() -> nn.Module:
    """Three outputs: not the classes of two-class data."""
    return MLP(k=3)


def regressor() -> nn.Module:
    return MLP(k=1, squeeze=True)


def scaled() -> nn.Module:
    return Scaled()


def raises() -> nn.Module:
    return Raises()


class ConvNorm(nn.Module):
    """conv 3x3 stride 2 (2, padded) -> tanh -> LayerNorm -> linear (3 logits, no bias),
    on (1, 8, 8) images: EK-FAC factors the conv and the linear layer, not the norm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(2 * 4 * 4)
        self.fc = nn.Linear(2 * 4 * 4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(torch.tanh(self.conv(x)).flatten(1)))


def conv_norm() -> nn.Module:
    return ConvNorm()


def wide() -> nn.Module:
    """An MLP for 4 features: its state dict does not fit :func:`mlp`'s module."""
    return MLP(d=4)


def train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 200) -> nn.Module:
    """Full-batch Adam on the cross-entropy (binary for one logit, squared error for a
    float target); the network in eval mode."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(steps):
        optimizer.zero_grad()
        out = net(x)
        if y.is_floating_point():
            loss = nn.functional.mse_loss(out.reshape(-1), y)
        elif out.ndim == 1 or out.shape[1] == 1:
            loss = nn.functional.binary_cross_entropy_with_logits(out.reshape(-1), y.double())
            loss = loss.to(out.dtype)
        else:
            loss = nn.functional.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
    return net.eval()


def save_all(net: nn.Module, example: torch.Tensor, folder: Path, stem: str) -> dict[str, Path]:
    """``net`` saved as a torch.export program with a dynamic batch (``pt2``), one with
    the example's fixed batch (``pt2-static``), TorchScript (``ts``) and a state dict
    (``sd``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "pt2": folder / f"{stem}.pt2",
        "pt2-static": folder / f"{stem}-static.pt2",
        "ts": folder / f"{stem}.ts",
        "sd": folder / f"{stem}.sd",
    }
    batch = torch.export.Dim("batch")
    torch.export.save(
        torch.export.export(net, (example,), dynamic_shapes={"x": {0: batch}}), paths["pt2"]
    )
    torch.export.save(torch.export.export(net, (example,)), paths["pt2-static"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in torch 2.14
        torch.jit.save(torch.jit.script(net), str(paths["ts"]))
    torch.save(net.state_dict(), paths["sd"])
    return paths
