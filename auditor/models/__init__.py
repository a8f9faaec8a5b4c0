"""Models: the :class:`~auditor.models.base.ModelTask` seam, the built-in models and their fit.

Adding a model is one file in this package (a ``ModelTask`` and a builder taking a
:class:`~auditor.models.base.ModelSpec`) and one line in :data:`MODELS`.
"""

from __future__ import annotations

from collections.abc import Callable

from auditor.data import Task
from auditor.errors import ConfigError
from auditor.models.base import ModelSpec, ModelTask
from auditor.models.cnn import build_cnn
from auditor.models.glm import build_linear, build_logistic
from auditor.models.mlp import build_mlp

#: Model name -> builder; the order is the order ``--model`` lists them in.
MODELS: dict[str, Callable[[ModelSpec], ModelTask]] = {
    "linear": build_linear,
    "logistic": build_logistic,
    "mlp": build_mlp,
    "cnn": build_cnn,
}
MODEL_NAMES = tuple(MODELS)


def build_model(
    name: str,
    task: Task,
    n_features: int,
    n_classes: int,
    hidden: int = 32,
    *,
    image_shape: tuple[int, ...] | None = None,
    params: str = "last",
    epochs: int = 8,
) -> ModelTask:
    """The model ``name`` (one of :data:`MODEL_NAMES`) for a ``task``.

    ``logistic`` is binary for two classes and multinomial for more. ``cnn`` needs the
    ``image_shape`` ``(C, H, W)`` and takes influence over ``params`` (``last`` or ``all``).
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    spec = ModelSpec(task, n_features, n_classes, hidden, image_shape, params, epochs)
    return MODELS[name](spec)


def default_model_name(task: Task) -> str:
    """The model that follows the data: ``linear`` for regression, ``logistic`` otherwise."""
    return "linear" if task == "regression" else "logistic"


__all__ = ["MODELS", "MODEL_NAMES", "ModelSpec", "ModelTask", "build_model", "default_model_name"]
