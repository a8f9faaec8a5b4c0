"""PNG thumbnails of stored pixels, as ``data:image/png;base64,...`` URIs.

Small images (MNIST's 28x28) are enlarged by an integer factor with nearest-neighbour
repetition so every stored pixel stays a crisp block; large ones are shrunk with
antialiasing. A thumbnail's longest side is close to :data:`SIZE` pixels.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import torch
from torchvision.io import encode_png
from torchvision.transforms.v2.functional import resize

SIZE = 56


def scale_factor(shape: Sequence[int]) -> int:
    """The integer enlargement for an image of ``shape`` ``[C, H, W]`` (1 if none)."""
    return max(1, SIZE // max(shape[1], shape[2]))


def pixels(image: bytes, shape: Sequence[int]) -> torch.Tensor:
    """Stored raw bytes as a ``(C, H, W)`` uint8 tensor (``C`` is 1 or 3)."""
    tensor = torch.frombuffer(bytearray(image), dtype=torch.uint8).reshape(*shape)
    if tensor.shape[0] not in (1, 3):  # encode_png takes gray or RGB only
        tensor = tensor[:1] if tensor.shape[0] == 2 else tensor[:3]
    return tensor


def thumbnail(image: torch.Tensor) -> torch.Tensor:
    """A ``(C, H', W')`` uint8 thumbnail of a ``(C, H, W)`` uint8 image.

    ``H' = k*H`` and ``W' = k*W`` with ``k = scale_factor`` when the image is no larger
    than :data:`SIZE`; otherwise the longest side becomes ``SIZE`` (aspect ratio kept).
    """
    _, h, w = image.shape
    if max(h, w) <= SIZE:
        k = scale_factor(image.shape)
        return image.repeat_interleave(k, dim=1).repeat_interleave(k, dim=2)
    ratio = SIZE / max(h, w)
    target = [max(1, round(h * ratio)), max(1, round(w * ratio))]
    return resize(image, target, antialias=True)


def png_data_uri(image: bytes, shape: Sequence[int]) -> str:
    """A ``data:image/png;base64,...`` URI of the thumbnail of stored pixels.

    Args:
        image: Raw uint8 pixels, ``prod(shape)`` bytes.
        shape: ``[C, H, W]`` (``runs.image_shape``).
    """
    png = encode_png(thumbnail(pixels(image, shape)))
    return "data:image/png;base64," + base64.b64encode(png.numpy().tobytes()).decode("ascii")
