"""Pretrained features (``--features ARCH``): a frozen torchvision network embeds every
image once, and influence is taken over a logistic head on the embeddings.

The model is a :class:`~auditor.models.ModelTask` with a frozen body, like the CNN with
``params="last"``: :meth:`PretrainedFeatures.frozen_features` returns the backbone's
embeddings ``(n, h)`` and :attr:`PretrainedFeatures.head` is the (binary or multinomial)
logistic regression over them, whose Hessian has a closed form (the exact solver is the
default). The pipeline embeds the training and test points once and fits, solves and
refits on the head.

How an image is embedded: the features ``(n, C*H*W)`` are reshaped to ``(C, H, W)``; with
``--normalize unit`` (the default, which scales each image to unit L2 norm) each image is
scaled back to [0, 1] by its largest pixel, with ``--normalize none`` its pixels are taken
as they are; a gray image is repeated to 3 channels; the image is resized (bilinear) so
that its shorter side is the backbone's input size and centre-cropped to a square, then
normalised with ImageNet's mean and standard deviation. The embeddings are computed in
batches, in float32, on the scan's device, and cached on disk
(:mod:`auditor.models.embedding_cache`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from auditor.data import Task
from auditor.errors import ConfigError, DataError
from auditor.models import embedding_cache
from auditor.models.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    build_backbone,
    check_architecture,
    check_size,
    default_size,
    resolve_weights,
)
from auditor.models.base import ModelTask
from auditor.models.glm import BinaryLogistic, MultinomialLogistic

#: ``progress(phase, done, total)``, as the scan reports it.
ProgressFn = Callable[[str, int, int], None]
#: The phase name the embedding reports its progress under.
PHASE = "embedding"
#: Images per forward pass of the backbone, on the CPU and on a GPU.
CPU_BATCH = 64
GPU_BATCH = 256
#: The 16-bit words of the weights' SHA-256 a fitted state starts with (exact in float32).
DIGEST_WORDS = 3


def run_backbone(module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """One forward pass: the embeddings ``(b, h)`` of preprocessed ``images``
    ``(b, 3, S, S)``."""
    return cast(torch.Tensor, module(images))


def preprocess(
    x: torch.Tensor, image_shape: tuple[int, int, int], size: int, rescale: bool
) -> torch.Tensor:
    """The network's input ``(b, 3, size, size)`` (float32) from features ``x`` ``(b, d)``
    (see the module docstring); ``rescale`` scales each image by its largest pixel."""
    c, h, w = image_shape
    images = x.to(torch.float32).reshape(x.shape[0], c, h, w)
    if rescale:
        peak = images.amax(dim=(1, 2, 3), keepdim=True)
        images = images / torch.where(peak > 0, peak, torch.ones_like(peak))
    if c == 1:
        images = images.expand(-1, 3, -1, -1)
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) != (h, w):
        images = F.interpolate(
            images, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )
    top, left = (new_h - size) // 2, (new_w - size) // 2
    images = images[:, :, top : top + size, left : left + size]
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (images - mean) / std


class PretrainedFeatures(ModelTask):
    """A frozen pretrained backbone and a logistic head on its embeddings.

    Args:
        backbone: The network without its classifier, with its weights.
        image_shape: ``(C, H, W)`` of the images (C is 1 or 3); features ``(n, C*H*W)``.
        n_outputs: Number of classes.
        rescale: Scale each image by its largest pixel first (``--normalize unit``).
    """

    def __init__(
        self,
        backbone: Backbone,
        image_shape: tuple[int, int, int],
        n_outputs: int,
        *,
        rescale: bool = True,
    ) -> None:
        c, h, w = image_shape
        super().__init__(c * h * w, n_outputs)
        if c not in (1, 3):
            raise ConfigError(f"--features needs gray or RGB images, got {c} channels")
        self.backbone = backbone
        self.image_shape = (c, h, w)
        self.rescale = rescale
        self.name = f"{backbone.name}+logistic"
        self.head: BinaryLogistic | MultinomialLogistic = (
            BinaryLogistic(backbone.dim)
            if n_outputs == 2
            else MultinomialLogistic(backbone.dim, n_outputs)
        )
        self.n_params = self.head.n_params

    # --- the embeddings ----------------------------------------------------------------
    def cache_key(self, x: torch.Tensor) -> str:
        """The embedding cache's key of features ``x`` ``(n, d)`` under this backbone."""
        b = self.backbone
        return embedding_cache.cache_key(
            x,
            b.name,
            b.sha256,
            f"size={b.size}",
            f"rescale={self.rescale}",
            f"image={self.image_shape}",
        )

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's embeddings ``(n, h)`` of features ``x`` ``(n, d)``, in ``x``'s
        dtype and on its device: from the cache, or computed (and cached)."""
        key = self.cache_key(x)
        embeddings = embedding_cache.load(key, x.shape[0], self.backbone.dim)
        if embeddings is None:
            embeddings = self.embed(x)
            embedding_cache.store(key, embeddings)
        return embeddings.to(device=x.device, dtype=x.dtype)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The embeddings ``(n, h)`` (float32, on ``x``'s device) computed in batches on
        ``x``'s device, reporting progress as :data:`PHASE`."""
        module = self.backbone.module.to(x.device)
        batch = GPU_BATCH if x.device.type == "cuda" else CPU_BATCH
        n = x.shape[0]
        parts = []
        for start in range(0, n, batch):
            images = preprocess(
                x[start : start + batch], self.image_shape, self.backbone.size, self.rescale
            )
            parts.append(run_backbone(module, images).to(torch.float32).flatten(1))
            if self.progress is not None:
                self.progress(PHASE, min(start + batch, n), n)
        if not parts:
            return x.new_zeros(0, self.backbone.dim, dtype=torch.float32)
        return torch.cat(parts)

    # --- the model over the features, through the head -----------------------------------
    def outputs(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.head.outputs(theta, self.frozen_features(x))

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head.loss(outputs, y)

    def predict(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head.predict(outputs)

    def hvp(
        self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        return self.head.hvp(theta, self.frozen_features(x), y, v)

    def loss_hessian(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head.loss_hessian(theta, self.frozen_features(x), y)

    # --- what a run stores ---------------------------------------------------------------
    def _digest(self) -> list[int]:
        """The first :data:`DIGEST_WORDS` 16-bit words of the weights' SHA-256."""
        return [int(self.backbone.sha256[4 * i : 4 * i + 4], 16) for i in range(DIGEST_WORDS)]

    def fitted_state(self, theta: torch.Tensor) -> torch.Tensor:
        """``[digest of the weights file, theta]``: a resume checks that the backbone
        still has the weights the head was fitted on."""
        return torch.cat([theta.new_tensor(self._digest()), theta])

    def load_fitted_state(self, state: torch.Tensor) -> torch.Tensor | None:
        if state.numel() != DIGEST_WORDS + self.n_params:
            return None
        stored = [int(v) for v in state[:DIGEST_WORDS].tolist()]
        if stored != self._digest():
            raise DataError(
                f"the weights of --features {self.backbone.name} changed since the run was "
                f"fitted: {self.backbone.weights} has sha256 {self.backbone.sha256[:12]}; "
                "start a new scan"
            )
        return state[DIGEST_WORDS:].clone()

    def facts(self) -> dict[str, str]:
        b = self.backbone
        return {
            "features": f"{b.name}, {b.dim}-d embeddings of {b.size}×{b.size} images",
            "weights": f"{b.weights.name} (sha256 {b.sha256[:12]})",
        }


def check_features(features: str, weights: str | None, size: int | None) -> None:
    """The checks of ``--features`` made before a scan loads any data: a known
    architecture, a size it takes and a weights file that exists."""
    family = check_architecture(features)
    check_size(features, family, default_size(features) if size is None else size)
    resolve_weights(features, weights)


def build_features_model(
    features: str,
    task: Task,
    n_classes: int,
    image_shape: tuple[int, ...] | None,
    *,
    weights: str | None = None,
    size: int | None = None,
    normalize: str = "unit",
) -> PretrainedFeatures:
    """The ``--features`` model for data of ``task``, ``n_classes`` and ``image_shape``
    ``(C, H, W)`` (``None``: not images).

    Raises:
        ConfigError: not labelled images, an unknown architecture or a size it does not take.
        DataError: no weights file, or one that is not a state dict of ``features``.
    """
    if image_shape is None or len(image_shape) != 3:
        raise ConfigError("--features needs images (idx, image folder, image NPZ)")
    if task != "classification":
        raise ConfigError("--features fits a logistic head: it needs class labels")
    c, h, w = image_shape
    if c not in (1, 3):
        raise ConfigError(f"--features needs gray or RGB images, got {c} channels")
    if normalize == "standard":
        raise ConfigError(
            "--features feeds the images' own pixels to the network; --normalize standard "
            "does not apply (use unit or none)"
        )
    backbone = build_backbone(features, weights, size)
    return PretrainedFeatures(backbone, (c, h, w), n_classes, rescale=normalize == "unit")
