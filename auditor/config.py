"""Run configuration as dataclasses, stored with every run so it can be reproduced."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from auditor.errors import ConfigError
from auditor.ranking import FlagRule
from auditor.solvers.base import SolverArgs


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
        """The keyword arguments of :func:`auditor.training.fit` these options set."""
        return {"max_iter": self.max_iter, "grad_tol": self.grad_tol}


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
