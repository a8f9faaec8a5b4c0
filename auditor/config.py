"""Run configuration as dataclasses, stored with every run so it can be reproduced."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from statistics import NormalDist

from auditor.errors import ConfigError


@dataclass
class DataArgs:
    """Where the points come from.

    Attributes:
        train: A data spec: ``toy-linear``, an idx or ImageFolder directory, a CSV or NPZ
            file; ``None`` with ``download``.
        test: The test spec; ``None`` splits ``train`` (``test_split``) or, for a directory
            holding both MNIST parts, reads its ``t10k-*`` files.
        test_split: Fraction of ``train`` held out as test points, in (0, 1).
        seed: Seeds the split and the toy data.
        classes: Class names to keep, in this order (``["1", "7"]``).
        normalize: ``unit`` scales each image to unit L2 norm, ``none`` keeps [0, 1].
        resize: ``(H, W)`` to resize images of different sizes.
        download: ``mnist`` to fetch MNIST through torchvision into ``download_root``.
    """

    train: str | None = None
    test: str | None = None
    test_split: float | None = None
    seed: int = 0
    classes: list[str] | None = None
    normalize: str = "unit"
    resize: tuple[int, int] | None = None
    download: str | None = None
    download_root: str = "data"

    def __post_init__(self) -> None:
        if self.train is None and self.download is None:
            raise ConfigError("give --train DATA (or --download mnist)")
        if self.test_split is not None and not 0.0 < self.test_split < 1.0:
            raise ConfigError(
                f"--test-split must lie strictly between 0 and 1, got {self.test_split}"
            )
        if self.test is not None and self.test_split is not None:
            raise ConfigError("give either --test or --test-split, not both")
        if self.normalize not in ("unit", "none"):
            raise ConfigError(f"--normalize must be unit or none, got {self.normalize!r}")
        check_seed(self.seed, "--seed")


@dataclass
class ModelArgs:
    """The model and how it is fitted.

    Attributes:
        name: ``linear``, ``logistic``, ``mlp`` or ``cnn``; ``None`` follows the data.
        weight_decay: L2 coefficient lambda of the risk (keeps the Hessian positive definite).
        hidden: Hidden units of the MLP.
        max_iter: Most L-BFGS iterations.
        grad_tol: Gradient norm that counts as an optimum.
        dtype: ``float32`` or ``float64``.
        params: Parameters influence is taken over for ``cnn``: ``last`` (the final linear
            layer, on frozen embeddings) or ``all``.
        epochs: Minibatch Adam epochs that train ``cnn`` before the L-BFGS polish.
    """

    name: str | None = None
    weight_decay: float = 0.01
    hidden: int = 32
    max_iter: int = 2000
    grad_tol: float = 1e-5
    dtype: str = "float32"
    params: str = "last"
    epochs: int = 8

    def __post_init__(self) -> None:
        if self.params not in ("all", "last"):
            raise ConfigError(f"--params must be all or last, got {self.params!r}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {self.epochs}")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"--dtype must be float32 or float64, got {self.dtype!r}")
        if self.hidden < 1 or self.max_iter < 1:
            raise ConfigError("--hidden and the iteration limit must be >= 1")

    def fit_kwargs(self) -> dict:
        """The keyword arguments of :func:`auditor.models.fit.fit` these options set."""
        return {"max_iter": self.max_iter, "grad_tol": self.grad_tol}


@dataclass
class SolverArgs:
    """How to solve ``(H + damping I) s = v``.

    Attributes:
        solver: ``lissa``, ``exact`` or ``cg``.
        damping: Added to the Hessian's diagonal (all solvers), on top of the weight decay.
        tol: Target relative residual ``||A s - v|| / ||v||`` (largest over columns).
        scale: LiSSA's scale; ``None`` picks 1.1x (full batch) or 1.5x (minibatches) a
            power-iteration estimate of the largest eigenvalue.
        depth: LiSSA's most recursion steps (it stops early once ``tol`` is met).
        repeats: LiSSA recursions averaged (only useful with minibatches).
        batch_size: LiSSA's minibatch size; ``None`` or ``>= n`` uses every training point.
        max_iter: CG's most iterations.
        seed: Seeds minibatch sampling and the power iteration.
        squaring: Let full-batch LiSSA compute its iterate by repeated squaring of the
            dense ``I - A / scale`` when that takes fewer flops (same result).
        self_influence: How the ranking's self-influences ``g_i^T A^{-1} g_i`` (one per
            training point, on the full fit and on every refit) are solved: ``auto`` uses
            the exact Cholesky factor whenever the dense Hessian is affordable (closed
            form, at most 20,000 parameters) and ``solver`` otherwise; ``same`` always uses
            ``solver``. ``solver`` always computes the test points' IHVPs (pair scores).
    """

    solver: str = "lissa"
    damping: float = 0.0
    tol: float = 1e-4
    scale: float | None = None
    depth: int = 5000
    repeats: int = 1
    batch_size: int | None = None
    max_iter: int = 1000
    seed: int = 0
    self_influence: str = "auto"
    squaring: bool = True

    def __post_init__(self) -> None:
        if self.self_influence not in ("auto", "same"):
            raise ConfigError(f"--self-influence must be auto or same, got {self.self_influence!r}")
        if self.solver not in ("lissa", "exact", "cg"):
            raise ConfigError(f"unknown solver {self.solver!r}; choose lissa, exact or cg")
        if self.damping < 0:
            raise ConfigError(f"--damping must be >= 0, got {self.damping}")
        if self.depth < 1 or self.repeats < 1 or self.max_iter < 1:
            raise ConfigError("--depth, --repeats and the iteration limit must be >= 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.scale is not None and self.scale <= 0:
            raise ConfigError(f"--scale must be > 0, got {self.scale}")
        if not self.tol > 0:
            raise ConfigError(f"--tol (the solver tolerance) must be > 0, got {self.tol}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FlagRule:
    """Thresholds of the ranking rule (robust z-scores).

    Attributes:
        outlier_z: Flag ``outlier`` at or above this influence z; ``None`` (the default)
            calibrates it to the number of training points ``n``: the z that the largest
            of ``n`` standard normal draws exceeds with probability :data:`OUTLIER_ALPHA`
            (2.81 for 20 points, 4.02 for 1,730, 4.37 for 8,000). See :meth:`resolved`.
        mislabel_z: Flag ``mislabel`` at or above this z of the strongest test when the
            prediction disagrees.
        outlier_support_z: The strongest test's z an ``outlier`` must also reach; ``None``
            (the default) is ``outlier_z`` itself, so the calibrated threshold alone
            decides (runs stored before it existed keep their 4).
        trim: Fraction left out in the concentration refits (0 turns refits off).
        rounds: Most concentration refits.
        influence_scale: ``log``: the influence z is of ``log|self-influence|``. ``sqrt``
            (runs written before it existed): of the influence norm ``sqrt|self-influence|``,
            whose robust z explodes on well-fitted networks (README, "Ranking and flags").
    """

    outlier_z: float | None = None
    mislabel_z: float = 5.0
    outlier_support_z: float | None = None
    trim: float = 0.25
    rounds: int = 3
    influence_scale: str = "log"

    def __post_init__(self) -> None:
        if not 0.0 <= self.trim < 0.5:
            raise ConfigError(f"--trim must lie in [0, 0.5), got {self.trim}")
        if self.rounds < 0:
            raise ConfigError(f"--rounds must be >= 0, got {self.rounds}")
        if self.influence_scale not in INFLUENCE_SCALES:
            raise ConfigError(f"influence_scale must be log or sqrt, got {self.influence_scale!r}")
        for option, value in (("--outlier-z", self.outlier_z), ("--mislabel-z", self.mislabel_z)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{option} must be a positive finite number, got {value}")

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved(self, n: int) -> FlagRule:
        """This rule with ``outlier_z`` as a number for ``n`` training points."""
        outlier_z = self.outlier_z
        if outlier_z is None:
            outlier_z = NormalDist().inv_cdf(1.0 - OUTLIER_ALPHA / max(n, 1))
        support = outlier_z if self.outlier_support_z is None else self.outlier_support_z
        return replace(self, outlier_z=outlier_z, outlier_support_z=support)

    @classmethod
    def from_dict(cls, d: dict, *, checked: bool = True) -> FlagRule:
        """The rule a run stored; one stored before ``influence_scale`` existed used
        ``sqrt`` (and its thresholds were stored with it).

        ``checked=False`` keeps thresholds that are no longer accepted (a zero, negative
        or non-finite ``outlier_z`` or ``mislabel_z`` stored before they were checked):
        the run's flags were decided with them, so a report shows them as applied."""
        fields = {"influence_scale": "sqrt", **d}
        if checked:
            return cls(**fields)
        rule = cls(**{**fields, "outlier_z": None, "mislabel_z": cls.mislabel_z})
        rule.outlier_z = fields.get("outlier_z")
        rule.mislabel_z = fields.get("mislabel_z", cls.mislabel_z)
        return rule


INFLUENCE_SCALES = ("log", "sqrt")

#: The chance that a scan of ``n`` clean points, with standard normal influence zs, flags
#: one of them ``outlier`` under the default (calibrated) ``outlier_z``. Real influence zs
#: have a heavier right tail than the normal, so expect somewhat more (README).
OUTLIER_ALPHA = 0.05


@dataclass
class ScanConfig:
    """Everything a scan needs; ``to_dict`` is stored in ``runs.config``."""

    data: DataArgs
    model: ModelArgs = field(default_factory=ModelArgs)
    solver: SolverArgs = field(default_factory=SolverArgs)
    rule: FlagRule = field(default_factory=FlagRule)
    device: str = "cpu"
    score_chunk: int = 256

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ScanConfig:
        data = dict(d["data"])
        if data.get("resize") is not None:
            data["resize"] = tuple(data["resize"])
        return cls(
            data=DataArgs(**data),
            model=ModelArgs(**d["model"]),
            solver=SolverArgs(**{"self_influence": "same", **d["solver"]}),
            rule=FlagRule.from_dict(d["rule"]),
            device=d.get("device", "cpu"),
            score_chunk=d.get("score_chunk", 256),
        )


#: Seeds must fit torch's and numpy's generators (a signed 64-bit integer, not negative).
MAX_SEED = 2**63 - 1


def check_seed(seed: int, option: str) -> None:
    """Raise :class:`ConfigError` unless ``0 <= seed <= MAX_SEED``."""
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{option} must lie in 0..{MAX_SEED}, got {seed}")
