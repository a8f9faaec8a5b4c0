"""Pretrained torchvision networks cut into frozen feature extractors (``--features``).

A :class:`Backbone` is a torchvision classification network with its classifier replaced
by the identity, so that it maps images ``(b, 3, S, S)`` to embeddings ``(b, h)``, with the
weights of a state dict file loaded into it. The weights come from ``--weights PATH`` or
from the torch hub cache (where ``torchvision.models.resnet18(weights="DEFAULT")`` puts
them on a machine with network); nothing here downloads anything: the network is built
with ``weights=None`` and the state dict is loaded from the file.

:data:`FAMILIES` says, per family of architectures, where its classifier sits; the
architectures ``--features`` takes are torchvision's classification models of these
families (:func:`architectures`).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torchvision
from torch import nn

from auditor.errors import ConfigError, DataError
from auditor.models.files import sha256_of

#: ImageNet's per-channel mean and standard deviation, which every torchvision
#: classification weights were trained with (``weights.transforms()``).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Family:
    """How one family of torchvision architectures is cut.

    Attributes:
        prefix: The architectures' names start with it (``resnet``).
        classifier: The attribute path of the classifier replaced by the identity:
            ``fc``, or ``classifier.-1`` for the last module of a ``Sequential``.
        min_size: The smallest input side (pixels) the network accepts.
        fixed_size: The network is built for one input size (ViT: its position
            embeddings), which its weights must have been trained at.
    """

    prefix: str
    classifier: str
    min_size: int = 32
    fixed_size: bool = False


FAMILIES = (
    Family("resnet", "fc"),
    Family("resnext", "fc"),
    Family("wide_resnet", "fc"),
    Family("regnet", "fc"),
    Family("shufflenet_v2", "fc"),
    Family("densenet", "classifier"),
    Family("mobilenet_v2", "classifier.-1"),
    Family("mobilenet_v3", "classifier.-1"),
    Family("efficientnet", "classifier.-1"),
    Family("convnext", "classifier.-1"),
    Family("vgg", "classifier.-1"),
    Family("swin", "head"),
    Family("vit_", "heads", fixed_size=True),
)

#: DenseNet's published weights name the layers of a dense layer ``norm.1``, which
#: torchvision renames to ``norm1`` when it loads them (``densenet._load_state_dict``).
_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def family_of(name: str) -> Family | None:
    """The family of the architecture ``name``, or ``None``."""
    return next((f for f in FAMILIES if name.startswith(f.prefix)), None)


def architectures() -> list[str]:
    """The torchvision architectures ``--features`` takes, sorted."""
    names = cast(list[str], torchvision.models.list_models(module=torchvision.models))
    return sorted(n for n in names if family_of(n) is not None)


def check_architecture(name: str) -> Family:
    """The family of ``name``; :class:`ConfigError` listing the supported architectures
    when ``--features`` does not take it."""
    family = family_of(name)
    if family is None or name not in architectures():
        raise ConfigError(
            f"--features: unknown architecture {name!r}; choose one of {', '.join(architectures())}"
        )
    return family


def _weights_enum(name: str) -> Any:
    """torchvision's weights enum of ``name`` (reading it downloads nothing)."""
    return torchvision.models.get_model_weights(name)


def default_size(name: str) -> int:
    """The input side the DEFAULT weights of ``name`` were evaluated at (224 for most)."""
    transforms = _weights_enum(name).DEFAULT.transforms()
    return int(transforms.crop_size[0])


def hub_file_names(name: str) -> list[str]:
    """The file names torchvision's weights of ``name`` are saved under in the torch hub
    cache, the DEFAULT weights' first."""
    enum = _weights_enum(name)
    default = enum.DEFAULT
    ordered = [default, *(w for w in enum if w is not default)]
    return [str(w.url).rsplit("/", 1)[-1] for w in ordered]


def hub_checkpoints() -> Path:
    """The torch hub cache's folder of weights (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(name: str, weights: str | None) -> Path:
    """The state dict file of ``name``: ``weights`` if given, else torchvision's file of
    it in the torch hub cache. Raises :class:`DataError` saying where to put it (and how
    to get it) when there is none."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise DataError(f"--weights {weights}: no such file")
        return path
    folder = hub_checkpoints()
    for file in hub_file_names(name):
        if (folder / file).is_file():
            return folder / file
    raise DataError(
        f"no weights for --features {name}: give --weights PATH (a state dict file) or put "
        f"{hub_file_names(name)[0]} into {folder}; on a machine with network, "
        f"python -c \"import torchvision; torchvision.models.{name}(weights='DEFAULT')\" "
        "downloads it there"
    )


@dataclass
class Backbone:
    """A pretrained network without its classifier.

    Attributes:
        name: The torchvision architecture (``resnet18``).
        module: The network, in eval mode, classifier replaced by the identity.
        dim: Its embedding size ``h``.
        size: The side of the square images it embeds.
        weights: The state dict file loaded into it.
        sha256: That file's SHA-256.
    """

    name: str
    module: nn.Module
    dim: int
    size: int
    weights: Path
    sha256: str


def build_backbone(name: str, weights: str | None, size: int | None) -> Backbone:
    """The network ``name`` cut at its classifier, with the weights of ``weights`` (or of
    the torch hub cache), for images of side ``size`` (default: :func:`default_size`).

    Raises:
        ConfigError: an unknown architecture, or a size it does not take.
        DataError: no weights file, or one that is not a state dict of ``name``.
    """
    family = check_architecture(name)
    side = default_size(name) if size is None else size
    check_size(name, family, side)
    path = resolve_weights(name, weights)
    try:
        network = cast(
            nn.Module,
            torchvision.models.get_model(
                name, weights=None, **({"image_size": side} if family.fixed_size else {})
            ),
        )
    except (AssertionError, ValueError) as exc:  # ViT: a size its patches do not divide
        raise ConfigError(f"--features {name} cannot take {side}x{side} images: {exc}") from None
    prefix, removed = _cut(network, family.classifier)
    _load_weights(network, name, family, prefix, path, side)
    network.eval().requires_grad_(False)
    return Backbone(name, network, _in_features(removed, name), side, path, sha256_of(path))


def check_size(name: str, family: Family, size: int) -> None:
    """:class:`ConfigError` unless ``name`` embeds images of side ``size``."""
    if size < family.min_size:
        raise ConfigError(
            f"--features-size {size} is below the {family.min_size} pixels {name} needs"
        )
    patch = int(name.rsplit("_", 1)[-1]) if family.fixed_size else 1
    if size % patch:
        raise ConfigError(
            f"--features-size {size} is not a multiple of {name}'s {patch}-pixel patches"
        )


def _cut(network: nn.Module, path: str) -> tuple[str, nn.Module]:
    """Replace the module at ``path`` (``fc``, ``classifier.-1``) by the identity; its
    state dict prefix (``fc.``, ``classifier.3.``) and the module removed."""
    *parents, last = path.split(".")
    owner = network
    for part in parents:
        owner = cast(nn.Module, getattr(owner, part))
    if last == "-1":
        sequential = cast(nn.Sequential, owner)
        index = len(sequential) - 1
        removed = sequential[index]
        sequential[index] = nn.Identity()
        return ".".join([*parents, str(index)]) + ".", removed
    removed = cast(nn.Module, getattr(owner, last))
    setattr(owner, last, nn.Identity())
    return path + ".", removed


def _in_features(removed: nn.Module, name: str) -> int:
    """The input size of the classifier removed: the embedding size."""
    for module in removed.modules():
        if isinstance(module, nn.Linear):
            return module.in_features
    raise TypeError(f"{name}'s classifier has no linear layer")  # FAMILIES names only such


def _load_weights(
    network: nn.Module, name: str, family: Family, prefix: str, path: Path, size: int
) -> None:
    """Load the state dict file ``path`` into ``network`` (cut at ``prefix``: the
    classifier's keys in the file are ignored, so fine-tuned weights of any number of
    classes load). :class:`DataError` naming the file and the first mismatching key."""
    state = _read_state_dict(path, name)
    if family.prefix == "densenet":
        state = {_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(prefix)}
    expected = network.state_dict()
    at = f" at {size}x{size} pixels" if family.fixed_size else ""
    for key, value in state.items():
        if key in expected and expected[key].shape != value.shape:
            raise DataError(
                f"{path} does not hold {name} weights{at}: key {key!r} has shape "
                f"{tuple(value.shape)}, {name} has {tuple(expected[key].shape)}"
                + (" (give the --features-size the weights were trained at)" if at else "")
            )
    try:
        result = network.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape mismatch of a key the network renames
        first = str(exc).strip().splitlines()[-1].strip()
        raise DataError(f"{path} does not hold {name} weights{at}: {first}") from None
    if result.missing_keys:
        raise DataError(
            f"{path} does not hold {name} weights: key {result.missing_keys[0]!r} is missing"
        )
    if result.unexpected_keys:
        raise DataError(
            f"{path} does not hold {name} weights: unexpected key {result.unexpected_keys[0]!r}"
        )


def _read_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (also inside ``{"state_dict": ...}`` or with the
    ``module.`` prefix of ``DistributedDataParallel``); :class:`DataError` otherwise."""
    advice = "save one with torch.save(model.state_dict(), PATH)"
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # pickle, zip and torch's own errors: none is a state dict
        with open(path, "rb") as f:
            head = f.read(2)
        written_by_torch = zipfile.is_zipfile(path) or head[:1] == b"\x80"  # zip or pickle
        what = (
            "holds objects other than tensors (a whole model, saved with torch.save(model)?)"
            if written_by_torch
            else "is not a file torch.save wrote"
        )
        raise DataError(f"{path} is not a state dict of {name}: it {what}; {advice}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping) or not state:
        raise DataError(f"{path} is not a state dict of {name}; {advice}")
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise DataError(f"{path} is not a state dict of {name}: {bad!r} is not a tensor; {advice}")
    keys = [str(k) for k in state]
    if all(k.startswith("module.") for k in keys):
        return {k[len("module.") :]: v for k, v in zip(keys, state.values(), strict=True)}
    return dict(zip(keys, state.values(), strict=True))
