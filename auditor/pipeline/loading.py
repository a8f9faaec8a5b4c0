"""The scan's inputs: the datasets a :class:`~auditor.config.DataArgs` names, the model a
:class:`~auditor.config.ScanConfig` asks for, their tensors, and the fitted model's
outputs; and the check that a resumed run reads the data it started with."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TypedDict

import torch

from auditor import sources
from auditor.config import DataArgs, ScanConfig
from auditor.data import Dataset, check_compatible, fingerprint, train_test_split, validate
from auditor.errors import ConfigError, DataError
from auditor.models import ModelSpec, ModelTask, build_model, default_model_name
from auditor.models.pretrained import build_features_model
from auditor.models.user import CHECK_POINTS, load_user_model
from auditor.sources.idx import find_pairs
from auditor.store.runs import StoredRun


class _ReadOptions(TypedDict):
    """The options every data source takes from a :class:`DataArgs`."""

    classes: list[str] | None
    normalize: str


def load_data(args: DataArgs) -> tuple[Dataset, Dataset]:
    """The train and test datasets a :class:`DataArgs` names, validated and aligned."""
    kwargs: _ReadOptions = {"classes": args.classes, "normalize": args.normalize}
    test: Dataset | None
    if args.download:
        if args.download != "mnist":
            raise ConfigError(f"--download knows only 'mnist', got {args.download!r}")
        train = sources.download_mnist(args.download_root, "train", **kwargs)
        test = (
            None
            if args.test_split
            else sources.download_mnist(args.download_root, "test", **kwargs)
        )
    else:
        assert args.train is not None, "DataArgs asks for --train without --download"
        train = sources.load(args.train, role="train", resize=args.resize, seed=args.seed, **kwargs)
        test = None
        if args.test is not None:
            test = sources.load(
                args.test, role="test", resize=args.resize, seed=args.seed, **kwargs
            )
        elif args.test_split is None:
            if args.train == sources.TOY_LINEAR or _has_test_part(args.train):
                test = sources.load(args.train, role="test", seed=args.seed, **kwargs)
            else:
                raise ConfigError("give --test DATA or --test-split FRACTION")
    if test is None:  # every way of reading no test data above needs --test-split
        assert args.test_split is not None, "no test data and no --test-split"
        validate(train, "train")
        train, test = train_test_split(train, args.test_split, args.seed)
    train, test = sources.match_channels(train, test)
    if train.task == "classification" and test.class_names != train.class_names:
        test = sources.align_classes(test, train.class_names or [])
    validate(train, "train")
    validate(test, "test")
    check_compatible(train, test)
    if args.normalize == "standard":
        train, test = standardized(train, test)
    return train, test


def standardized(train: Dataset, test: Dataset) -> tuple[Dataset, Dataset]:
    """``train`` and ``test`` with every feature column ``(n, d)`` shifted by the training
    points' mean and divided by their standard deviation (a constant column by 1), in
    float64 (features of 1e30 are standardised without overflowing), then in the
    features' own dtype. Images (the report's thumbnails) are kept as they are."""
    x = train.features.to(torch.float64)
    mean = x.mean(dim=0)
    std = x.std(dim=0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))

    def scaled(ds: Dataset) -> Dataset:
        features = ((ds.features.to(torch.float64) - mean) / std).to(ds.features.dtype)
        return dataclasses.replace(ds, features=features)

    return scaled(train), scaled(test)


def model_for(
    config: ScanConfig,
    train: Dataset,
    sample: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> ModelTask:
    """The (unfitted) model ``config`` asks for, shaped for ``train``.

    A ``--model-file`` model is read on ``device`` in the config's dtype and checked on
    ``sample``, the first training points' features there (default: ``train``'s)."""
    image_shape = None if train.images is None else tuple(train.images.shape[1:])
    if config.model.model_file is not None:
        dtype = getattr(torch, config.model.dtype)
        if sample is None:
            sample = train.features[:CHECK_POINTS].to(device=device, dtype=dtype)
        spec = ModelSpec(
            train.task,
            train.n_features,
            train.n_classes,
            image_shape=image_shape,
            params=config.model.params,
        )
        return load_user_model(
            config.model.model_file,
            config.model.model_factory,
            spec,
            fit=config.model.fit,
            device=torch.device(device),
            dtype=dtype,
            sample=sample,
        )
    if config.model.features is not None:
        return build_features_model(
            config.model.features,
            train.task,
            train.n_classes,
            image_shape,
            weights=config.model.weights,
            size=config.model.features_size,
            normalize=config.data.normalize,
        )
    return build_model(
        config.model.name or default_model_name(train.task),
        train.task,
        train.n_features,
        train.n_classes,
        hidden=config.model.hidden,
        image_shape=image_shape,
        params=config.model.params,
        epochs=config.model.epochs,
    )


def _has_test_part(spec: str) -> bool:
    """Whether ``spec`` is a folder holding both a train and a test idx pair."""
    path = Path(spec).expanduser()
    return path.is_dir() and len(find_pairs(path)) >= 2


def check_fingerprint(run: StoredRun, train: Dataset, test: Dataset) -> None:
    """Raise :class:`DataError` unless ``train`` and ``test`` are the data ``run`` read:
    the same fingerprint (features, targets, ids), task and class names (the fingerprint
    holds neither: renamed classes keep the targets, and changing it would invalidate
    stored runs and decisions files)."""
    found = fingerprint(train, test)
    if found != run.data_fingerprint:
        change = f"fingerprint {found[:12]}, the run has {run.data_fingerprint[:12]}"
    elif train.task != run.task:
        change = f"a {train.task} task, the run has {run.task}"
    elif list(train.class_names or []) != list(run.class_names or []):
        change = (
            f"classes {_short_list(train.class_names)}, the run has {_short_list(run.class_names)}"
        )
    else:
        return
    raise DataError(
        f"run {run.id}: the data changed since the run started ({change}); start a new scan"
    )


def check_model_source(run: StoredRun, model: ModelTask) -> None:
    """Raise :class:`DataError` unless ``model`` comes from where ``run``'s model came
    from: a ``--model-file`` model must be the same file (its SHA-256), since a resume
    reads the network's body from it again."""
    stored = (run.sources or {}).get("model")
    found = model.provenance()
    if stored is None or found is None or stored.get("sha256") == found.get("sha256"):
        return
    raise DataError(
        f"run {run.id}: the model file {found['path']} changed since the run started "
        f"(SHA-256 {found['sha256'][:12]}, the run has {str(stored.get('sha256'))[:12]}); "
        "start a new scan"
    )


def _short_list(names: list[str] | None, most: int = 5) -> str:
    names = list(names or [])
    shown = ", ".join(repr(n) for n in names[:most])
    return f"[{shown}{', ...' if len(names) > most else ''}]"


def dataset_tensors(
    ds: Dataset, device: torch.device | str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(n, d)`` in ``dtype`` and targets ``(n,)`` (class indices, or values in
    ``dtype``) on ``device``."""
    y = ds.targets.to(device)
    return ds.features.to(device=device, dtype=dtype), y if ds.task == "classification" else y.to(
        dtype
    )


@torch.no_grad()
def model_outputs(
    model: ModelTask, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-point ``predicted``, ``probability`` and ``loss`` ``(n,)`` of the fitted model
    (``theta`` ``(p,)``) on ``x`` ``(n, d)`` with targets ``y`` ``(n,)``."""
    out = model.outputs(theta, x)
    predicted, probability = model.predict(out)
    return {"predicted": predicted, "probability": probability, "loss": model.loss(out, y)}
