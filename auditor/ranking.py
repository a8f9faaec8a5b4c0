"""Rank training points for review and flag likely mislabels and outliers.

The rule (documented in the README, thresholds overridable from the CLI):

1. The self-influence used for the masking refits below is ranked by the robust z-score of
   the influence norm ``sqrt(|self-influence|)``: ``z = (s - median(s)) / (1.4826 *
   MAD(s))``. The stored suspicion, rank and flags use :func:`combined_suspicion` (the
   largest robust z of the log training loss, harmfulness and log self-influence).
2. Masking: a cluster of bad points drags the fit towards itself and hides its members
   (five y = 100 points among twenty). So the self-influence is recomputed on refits that
   leave out the ``trim`` most suspicious fraction (concentration steps, as in least
   trimmed squares), and finally on a refit without the points flagged by step 3. Each
   point's score is then "how much its own loss depends on it, next to the clean data".
3. Flags: ``mislabel`` when the model predicts another class than the given label and
   ``z >= mislabel_z``; ``outlier`` when ``z >= outlier_z``
   and the point is not a mislabel. Regression data has no labels to flip: only outliers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch

from auditor.errors import ConfigError


@dataclass
class FlagRule:
    """Thresholds of the ranking rule (robust z-scores of the influence norm).

    Attributes:
        outlier_z: Flag ``outlier`` at or above this z.
        mislabel_z: Flag ``mislabel`` at or above this z when the prediction disagrees.
        outlier_support_z: The combined suspicion an ``outlier`` must also reach (the
            influence norm alone has a heavy right tail on clean data, more so with a small
            weight decay).
        trim: Fraction left out in the concentration refits (0 turns refits off).
        rounds: Most concentration refits.
    """

    outlier_z: float = 6.0
    mislabel_z: float = 5.0
    outlier_support_z: float = 4.0
    trim: float = 0.25
    rounds: int = 3

    def __post_init__(self) -> None:
        if not 0.0 <= self.trim < 0.5:
            raise ConfigError(f"--trim must lie in [0, 0.5), got {self.trim}")
        if self.rounds < 0:
            raise ConfigError(f"--rounds must be >= 0, got {self.rounds}")

    def to_dict(self) -> dict:
        return asdict(self)


def robust_z(values: torch.Tensor) -> torch.Tensor:
    """``(v - median) / (1.4826 * MAD)`` for ``values`` ``(n,)``; MAD 0 falls back to the
    mean absolute deviation, then to 1."""
    median = values.median()
    deviation = (values - median).abs()
    scale = 1.4826 * deviation.median()
    if scale <= 0:
        scale = deviation.mean()
    if scale <= 0:
        scale = torch.ones((), dtype=values.dtype, device=values.device)
    return (values - median) / scale


def suspicion(self_influence: torch.Tensor) -> torch.Tensor:
    """Robust z-score of the influence norm ``sqrt(|self-influence|)``: ``(n,)``."""
    return robust_z(self_influence.abs().sqrt())


#: How many robust standard deviations the secondary tests (harmfulness, self-influence)
#: must exceed the training-loss test by to decide a point's score.
SECONDARY_OFFSET = 2.0


def suspicion_tests(
    loss: torch.Tensor, harmfulness: torch.Tensor, self_influence: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Robust z-scores ``(n,)`` of the primary test, ``z(log loss)``, and of the stronger
    secondary test, ``max(z(harmfulness), z(log |self-influence|))``.

    Three tests for three kinds of fault. The log loss asks "does the model disagree with
    this label?" (a mislabel); harmfulness asks "does keeping this point raise the test
    loss?" (systematic faults such as class-conditional flips, which bend the boundary
    until the model fits them); the self-influence (from the masking refits) asks "does
    the fit lean on this point alone?" (outliers, also in clusters that mask each other's
    loss). Under the clean bulk each robust z is roughly standard normal; logs tame the
    heavy right tails of loss and self-influence.

    Args:
        loss: Per-example training loss ``(n,)`` under the fitted model.
        harmfulness: Sum of the point's influence over all test points ``(n,)``.
        self_influence: ``-g^T A^{-1} g`` per point ``(n,)`` (after the masking refits).
    """
    secondary = torch.maximum(robust_z(harmfulness.double()), robust_z(_log(self_influence.abs())))
    return robust_z(_log(loss)), secondary


def combined_suspicion(primary: torch.Tensor, secondary: torch.Tensor) -> torch.Tensor:
    """The product's ranking score ``(n,)``: ``max(primary, secondary - SECONDARY_OFFSET)``.

    A union of tests pays for every test's null tail (harmfulness has a heavy one), so the
    secondary tests must be :data:`SECONDARY_OFFSET` robust standard deviations more
    extreme than the loss to decide a point's score: the loss ranks, the others promote
    clear cases. The offset was chosen on design seeds (README, "Detection quality").
    """
    return torch.maximum(primary, secondary - SECONDARY_OFFSET)


def _log(values: torch.Tensor) -> torch.Tensor:
    return values.double().clamp_min(torch.finfo(torch.float64).tiny).log()


def trimmed_mask(score: torch.Tensor, trim: float) -> torch.Tensor:
    """Boolean ``(n,)`` mask keeping all but the ``trim`` fraction with the highest score."""
    n = score.shape[0]
    keep = torch.ones(n, dtype=torch.bool, device=score.device)
    keep[score.argsort(descending=True)[: int(trim * n)]] = False
    return keep


def flags_for(
    z: torch.Tensor, predicted: torch.Tensor, targets: torch.Tensor, task: str, rule: FlagRule
) -> list[list[str]]:
    """The flags of each point (a list of strings per point)."""
    flags: list[list[str]] = []
    disagrees = (
        predicted.ne(targets) if task == "classification" else torch.zeros_like(z, dtype=bool)
    )
    for zi, wrong in zip(z.tolist(), disagrees.tolist(), strict=True):
        if wrong and zi >= rule.mislabel_z:
            flags.append(["mislabel"])
        elif zi >= rule.outlier_z:
            flags.append(["outlier"])
        else:
            flags.append([])
    return flags


def combined_flags(
    union_z: torch.Tensor,
    influence_z: torch.Tensor,
    predicted: torch.Tensor,
    targets: torch.Tensor,
    task: str,
    rule: FlagRule,
) -> list[list[str]]:
    """Flags of the product's ranking: ``mislabel`` when the prediction disagrees with the
    label and the union of the tests ``union_z = max(primary, secondary)`` ``(n,)``
    reaches ``mislabel_z``; otherwise ``outlier`` when the masking-resistant influence-norm
    z ``influence_z`` ``(n,)`` reaches ``outlier_z`` (a cluster of outliers hides from the
    loss but not from the refits) and ``union_z`` reaches ``outlier_support_z``."""
    z = union_z
    mislabel = flags_for(z, predicted, targets, task, replace(rule, outlier_z=math.inf))
    supported = torch.where(z >= rule.outlier_support_z, influence_z, -math.inf)
    outlier = flags_for(supported, predicted, targets, task, replace(rule, mislabel_z=math.inf))
    return [m or o for m, o in zip(mislabel, outlier, strict=True)]


def ranks(score: torch.Tensor) -> torch.Tensor:
    """1-based rank ``(n,)`` by descending score (ties broken by index)."""
    order = torch.sort(score, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(1, score.shape[0] + 1, device=score.device)
    return rank
