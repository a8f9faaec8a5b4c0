"""Pixel handling shared by the image sources (idx, image folders, image-shaped NPZ)."""

from __future__ import annotations

import torch

from auditor.errors import ConfigError

NORMALIZE_CHOICES = ("unit", "none", "standard")


def check_normalize(normalize: str) -> None:
    """Raise :class:`ConfigError` unless ``normalize`` is one of :data:`NORMALIZE_CHOICES`."""
    if normalize not in NORMALIZE_CHOICES:
        choices = ", ".join(repr(c) for c in NORMALIZE_CHOICES)
        raise ConfigError(f"unknown normalize value {normalize!r}; choose one of {choices}")


def images_to_features(images: torch.Tensor, normalize: str) -> torch.Tensor:
    """Flatten uint8 images into a float feature matrix.

    Pixels are scaled to ``[0, 1]``; ``normalize="unit"`` then scales every row to unit
    L2 norm (all-zero rows stay zero), ``normalize="none"`` keeps the ``[0, 1]`` values, and
    so does ``"standard"`` (whose columns :func:`auditor.pipeline.loading.load_data`
    standardises once train and test are known).

    Args:
        images: ``(n, C, H, W)`` uint8 pixels.
        normalize: ``"unit"``, ``"none"`` or ``"standard"``.

    Returns:
        ``(n, C*H*W)`` float32 features.
    """
    check_normalize(normalize)
    if images.dtype != torch.uint8 or images.ndim != 4:
        shape = tuple(images.shape)
        raise ValueError(f"expected (n, C, H, W) uint8 images, got {images.dtype} {shape}")
    features = images.reshape(images.shape[0], -1).to(torch.float32).div_(255.0)
    if normalize == "unit":
        norms = features.norm(dim=1, keepdim=True)
        features.div_(torch.where(norms > 0, norms, torch.ones_like(norms)))
    return features


def to_uint8_chw(image: torch.Tensor) -> torch.Tensor:
    """Bring one decoded image to uint8 with 1 (gray) or 3 (RGB) channels.

    Args:
        image: ``(C, H, W)`` decoded pixels, C in 1..4 (alpha is dropped), uint8 or uint16.

    Returns:
        ``(1, H, W)`` or ``(3, H, W)`` uint8 pixels.
    """
    if image.dtype == torch.uint16:
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    elif image.dtype != torch.uint8:
        raise ValueError(f"unsupported pixel type {image.dtype}")
    if image.shape[0] in (2, 4):  # gray + alpha, RGB + alpha
        image = image[:-1]
    if image.shape[0] not in (1, 3):
        raise ValueError(f"unsupported number of channels {image.shape[0]}")
    return image


def to_rgb(image: torch.Tensor) -> torch.Tensor:
    """``(1, H, W)`` gray -> ``(3, H, W)`` RGB, or a batch ``(n, 1, H, W)`` -> ``(n, 3, H, W)``;
    RGB images are returned unchanged."""
    if image.shape[-3] != 1:
        return image
    return image.expand(*image.shape[:-3], 3, *image.shape[-2:]).contiguous()
