"""PNG thumbnails of stored pixels, as ``data:image/png;base64,...`` URIs.

Small images (MNIST's 28x28) are enlarged by an integer factor with nearest-neighbour
repetition so every stored pixel stays a crisp block; large ones are shrunk with
antialiasing. A thumbnail's longest side is close to :data:`SIZE` pixels. numpy and
Pillow only: the report never loads torch.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

SIZE = 56


def scale_factor(shape: Sequence[int]) -> int:
    """The integer enlargement for an image of ``shape`` ``[C, H, W]`` (1 if none)."""
    return max(1, SIZE // max(shape[1], shape[2]))


def pixels(image: bytes, shape: Sequence[int]) -> np.ndarray:
    """Stored raw bytes as a ``(C, H, W)`` uint8 array (``C`` is 1 or 3)."""
    array = np.frombuffer(image, dtype=np.uint8).reshape(*shape)
    if array.shape[0] not in (1, 3):  # a PNG of gray or RGB only
        array = array[:1] if array.shape[0] == 2 else array[:3]
    return array


def thumbnail(image: np.ndarray) -> np.ndarray:
    """A ``(C, H', W')`` uint8 thumbnail of a ``(C, H, W)`` uint8 image.

    ``H' = k*H`` and ``W' = k*W`` with ``k = scale_factor`` when the image is no larger
    than :data:`SIZE`; otherwise the longest side becomes ``SIZE`` (aspect ratio kept,
    antialiased bilinear).
    """
    image = np.asarray(image, dtype=np.uint8)
    _, h, w = image.shape
    if max(h, w) <= SIZE:
        k = scale_factor(image.shape)
        return image.repeat(k, axis=1).repeat(k, axis=2)
    ratio = SIZE / max(h, w)
    size = (max(1, round(w * ratio)), max(1, round(h * ratio)))  # Pillow's (width, height)
    shrunk = _image(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
    array = np.asarray(shrunk)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _image(array: np.ndarray) -> Image.Image:
    """A Pillow image of a ``(1 or 3, H, W)`` uint8 array."""
    if array.shape[0] == 1:
        return Image.fromarray(np.ascontiguousarray(array[0]), mode="L")
    return Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0)), mode="RGB")


def png_bytes(image: np.ndarray) -> bytes:
    """``(C, H, W)`` uint8 pixels (``C`` 1 or 3) encoded as PNG."""
    out = io.BytesIO()
    _image(image).save(out, format="PNG")
    return out.getvalue()


def png_data_uri(image: bytes, shape: Sequence[int]) -> str:
    """A ``data:image/png;base64,...`` URI of the thumbnail of stored pixels.

    Args:
        image: Raw uint8 pixels, ``prod(shape)`` bytes.
        shape: ``[C, H, W]`` (``runs.image_shape``).
    """
    png = png_bytes(thumbnail(pixels(image, shape)))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
