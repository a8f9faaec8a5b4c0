"""Out-of-fold class probabilities: every training point's predicted class probabilities
from a model of the scan's kind fitted without it (k-fold cross-validation).

They drive two things in an evaluation: ``--faults confusion`` (a point's label is flipped
to the class a held-out model most confuses it with) and the confident-learning baseline
(:mod:`auditor.evaluation.confident`). The folds are fitted as the scan fits (same model,
weight decay, dtype, seed), each from scratch on its own four fifths.
"""

from __future__ import annotations

import numpy as np
import torch

from auditor.config import ScanConfig
from auditor.data import Dataset
from auditor.models.base import ModelTask
from auditor.models.fit import fit
from auditor.models.weight_decay import default_weight_decay
from auditor.pipeline.distributed import torch_device
from auditor.pipeline.loading import dataset_tensors, model_for

#: Folds of the cross-validation.
FOLDS = 5


def class_probabilities(model: ModelTask, outputs: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Every class's probability ``(n, k)`` from a classifier's outputs ``(n, ...)``: the
    loss is the negative log-likelihood of the label, so ``p(c | x) = exp(-loss(x, c))``
    (the same for the binary logistic, multinomial, MLP and CNN heads)."""
    n = outputs.shape[0]
    columns = [
        torch.exp(
            -model.loss(outputs, torch.full((n,), c, dtype=torch.long, device=outputs.device))
        )
        for c in range(n_classes)
    ]
    return torch.stack(columns, dim=1)


def fold_of(n: int, seed: int, folds: int = FOLDS) -> np.ndarray:
    """Each point's fold ``(n,)`` in ``0..folds-1``: a seeded shuffle cut into near-equal
    parts."""
    order = np.random.default_rng(seed + 104729).permutation(n)
    fold = np.empty(n, dtype=np.int64)
    fold[order] = np.arange(n) % folds
    return fold


def out_of_fold_probabilities(
    config: ScanConfig, train: Dataset, seed: int, folds: int = FOLDS
) -> np.ndarray:
    """Class probabilities ``(n, k)`` of every point of ``train`` (class labels) under the
    model ``config`` describes, fitted on the other folds. A weight decay left ``auto`` is
    resolved once, on the whole of ``train``, as a scan of it would."""
    if train.task != "classification":
        raise ValueError("out-of-fold class probabilities need class labels")
    dtype, device = getattr(torch, config.model.dtype), torch_device(config.device)
    weight_decay = config.model.weight_decay
    if weight_decay is None:
        x, y = dataset_tensors(train, device, dtype)
        model = model_for(config, train, device=device)
        choice = default_weight_decay(model, x, y, seed, config.model.fit_kwargs())
        weight_decay = choice.weight_decay
    fold = fold_of(len(train), seed, folds)
    out = np.zeros((len(train), train.n_classes), dtype=np.float64)
    for f in range(folds):
        held = np.flatnonzero(fold == f)
        kept = np.flatnonzero(fold != f)
        part, rest = train.subset(torch.from_numpy(kept)), train.subset(torch.from_numpy(held))
        model = model_for(config, part, device=device)
        x, y = dataset_tensors(part, device, dtype)
        theta = fit(model, x, y, weight_decay, seed=seed, **config.model.fit_kwargs()).theta
        x_held, _ = dataset_tensors(rest, device, dtype)
        with torch.no_grad():
            p = class_probabilities(model, model.outputs(theta, x_held), train.n_classes)
        out[held] = p.double().cpu().numpy()
    return out
