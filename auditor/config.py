"""Run configuration as dataclasses, stored with every run so it can be reproduced.

Every setting is declared once, here: a field that ``auditor scan`` takes as an option
carries that option's declaration in its metadata (:func:`cli`: name, section, help,
choices, parser, and how a rescan writes it back). :mod:`auditor.cli.options` builds the
Click options, the :class:`ScanConfig` they describe, the rescan's command line and the
docs' option tables by walking these fields; a field without ``cli`` metadata has no
option. This module imports nothing from the package but :mod:`auditor.errors`: it is the
vocabulary every wing shares, so the names of registered solvers and models (which live
with their code) are looked up by the CLI, not here (``registry``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any

from auditor.errors import ConfigError

#: Where ``auditor scan --help`` and the docs list an option, in this order.
SECTIONS = ("data", "model", "solver", "ranking", "run")
#: The metadata key of a field's command-line declaration (:class:`CliOption` or :class:`CliCopy`).
CLI = "cli"


@dataclass(frozen=True)
class CliOption:
    """How a settings field is given on the command line.

    Attributes:
        flag: The option, e.g. ``--test-split``; Click's parameter is named after it
            (``test_split``).
        section: Where ``--help`` and the docs list it: one of :data:`SECTIONS`.
        help: Its ``--help`` text (``None``: none).
        choices: The values it accepts, or ``None``.
        registry: Instead of ``choices``: the registry whose names it accepts
            (``solvers``, ``models``), looked up by the CLI.
        metavar: The value's name in ``--help`` (default: Click's, from the type).
        parse: Turns the typed text into the field's value, raising :class:`ConfigError`
            on bad text; for values that are not a plain ``int``, ``float`` or ``str``
            (the field's annotation gives those).
        default_text: The default as typed, when the field's default is not typeable
            (``auto`` for ``--outlier-z``'s ``None``); it goes through ``parse``.
        minimum: The least value an integer option accepts (checked by Click).
        to_text: Writes a value back as text for the rescan command line; ``None``: the
            rescan does not repeat it (where the data comes from, given to it apart).
        always: The rescan names it even at its default.
    """

    flag: str
    section: str
    help: str | None = None
    choices: tuple[str, ...] | None = None
    registry: str | None = None
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    default_text: str | None = None
    minimum: int | None = None
    to_text: Callable[[Any], str] | None = str
    always: bool = False

    def __post_init__(self) -> None:
        if self.section not in SECTIONS:
            raise ValueError(f"{self.flag}: section {self.section!r} is not one of {SECTIONS}")
        if not self.flag.startswith("--"):
            raise ValueError(f"option {self.flag!r} must start with --")
        if self.choices is not None and self.registry is not None:
            raise ValueError(f"{self.flag}: give choices or a registry, not both")


@dataclass(frozen=True)
class CliCopy:
    """A settings field set by an option declared on another field (the solver's copy of
    ``--seed``); the rescan repeats only that field."""

    flag: str


def cli(flag: str, section: str, help: str | None = None, **declaration: Any) -> dict[str, Any]:
    """The ``metadata`` of a field that option ``flag`` sets (see :class:`CliOption`)."""
    return {CLI: CliOption(flag, section, help, **declaration)}


def cli_copy(flag: str) -> dict[str, Any]:
    """The ``metadata`` of a field that takes the value of ``flag``, declared elsewhere."""
    return {CLI: CliCopy(flag)}


def parse_classes(text: str) -> list[str]:
    """``--classes 1,7`` -> ``["1", "7"]``; at least two."""
    classes = [c.strip() for c in text.split(",") if c.strip()]
    if len(classes) < 2:
        raise ConfigError("give at least two comma-separated classes, e.g. 1,7")
    return classes


def parse_resize(text: str) -> tuple[int, int]:
    """``--resize 28x28`` -> ``(28, 28)``."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"expected HxW such as 28x28, got {text!r}") from None
    if h < 1 or w < 1:
        raise ConfigError(f"sizes must be positive, got {text!r}")
    return h, w


def parse_factory(text: str) -> str:
    """``--model-factory pkg.module:build`` -> the same text, checked for its form."""
    module, _, function = text.partition(":")
    if not module.strip() or not function.strip() or ":" in function:
        raise ConfigError(f"expected MODULE:FUNCTION such as mypkg.nets:build, got {text!r}")
    return text.strip()


def absolute_path_text(path: str) -> str:
    """A path as an absolute one, for a rescan run from another folder."""
    return str(Path(path).expanduser().resolve())


def resize_text(size: tuple[int, int]) -> str:
    """``(28, 28)`` -> ``28x28``: :func:`parse_resize`'s inverse."""
    return f"{size[0]}x{size[1]}"


def parse_auto_float(text: str) -> float | None:
    """``auto`` -> ``None`` (calibrated), otherwise a number."""
    if text == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{text!r} is neither auto nor a number") from None


#: The values of the settings with choices: their options accept them, ``__post_init__``
#: checks them.
NORMALIZE = ("unit", "none", "standard")
DOWNLOADS = ("mnist",)
PARAMS = ("last", "all")
FITS = ("none", "last")
DTYPES = ("float32", "float64")
SELF_INFLUENCE = ("auto", "same")
#: ``--solver auto``: the exact solver where the dense Hessian is affordable, else LiSSA
#: (:func:`auditor.influence.solvers.resolved_solver`); a scan stores the one it chose.
AUTO_SOLVER = "auto"


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
        normalize: ``unit`` scales each image to unit L2 norm, ``none`` keeps [0, 1] (and
            tabular features as read), ``standard`` standardises every feature column by
            the training points' mean and standard deviation (test points too).
        resize: ``(H, W)`` to resize images of different sizes.
        download: ``mnist`` to fetch MNIST through torchvision into ``download_root``.
    """

    train: str | None = field(
        default=None,
        metadata=cli(
            "--train",
            "data",
            "toy-linear, an idx or image folder, a .csv or .npz.",
            metavar="DATA",
            to_text=None,
        ),
    )
    test: str | None = field(
        default=None,
        metadata=cli(
            "--test", "data", "Test data (same kinds as --train).", metavar="DATA", to_text=None
        ),
    )
    test_split: float | None = field(
        default=None,
        metadata=cli(
            "--test-split",
            "data",
            "Hold out this fraction of --train as test points.",
            to_text=None,
        ),
    )
    seed: int = field(default=0, metadata=cli("--seed", "data", "Seeds the split and sampling."))
    classes: list[str] | None = field(
        default=None,
        metadata=cli(
            "--classes",
            "data",
            "Keep these classes, e.g. 1,7 (binary task).",
            parse=parse_classes,
            to_text=",".join,
        ),
    )
    normalize: str = field(
        default="unit",
        metadata=cli(
            "--normalize",
            "data",
            "unit: scale each image to unit L2 norm; none: keep pixels in [0, 1] and "
            "features as read; standard: standardise every feature column (tabular or "
            "pixels) by the training points' mean and spread.",
            choices=NORMALIZE,
        ),
    )
    resize: tuple[int, int] | None = field(
        default=None,
        metadata=cli(
            "--resize",
            "data",
            "Resize images of different sizes.",
            metavar="HxW",
            parse=parse_resize,
            to_text=resize_text,
        ),
    )
    download: str | None = field(
        default=None,
        metadata=cli(
            "--download",
            "data",
            "Fetch MNIST through torchvision.",
            choices=DOWNLOADS,
            to_text=None,
        ),
    )
    download_root: str = field(
        default="data",
        metadata=cli("--download-root", "data", "Where --download stores files.", to_text=None),
    )

    def __post_init__(self) -> None:
        if self.train is None and self.download is None:
            raise ConfigError("give --train DATA (or --download mnist)")
        if self.test_split is not None and not 0.0 < self.test_split < 1.0:
            raise ConfigError(
                f"--test-split must lie strictly between 0 and 1, got {self.test_split}"
            )
        if self.test is not None and self.test_split is not None:
            raise ConfigError("give either --test or --test-split, not both")
        if self.normalize not in NORMALIZE:
            raise ConfigError(f"--normalize must be unit, none or standard, got {self.normalize!r}")
        check_seed(self.seed, "--seed")


@dataclass
class ModelArgs:
    """The model and how it is fitted.

    Attributes:
        name: A name in :data:`auditor.models.MODEL_NAMES` (``linear``, ``logistic``,
            ``mlp``, ``cnn``); ``None`` follows the data.
        weight_decay: L2 coefficient lambda of the risk (keeps the Hessian positive definite);
            ``None`` (``auto``) is chosen when the scan loads its data
            (:func:`auditor.models.weight_decay.default_weight_decay`) and stored as a number.
        hidden: Hidden units of the MLP.
        max_iter: Most iterations of the fit (Newton for ``linear`` and ``logistic``,
            L-BFGS otherwise).
        grad_tol: Gradient norm that counts as an optimum.
        dtype: ``float32`` or ``float64``.
        params: Parameters influence is taken over for ``cnn`` and ``model_file``:
            ``last`` (the final linear layer, on frozen embeddings) or ``all``.
        epochs: Minibatch Adam epochs that train ``cnn`` before the L-BFGS polish.
        features: A torchvision architecture (``resnet18``, ``vit_b_16``...): embed the
            images with that pretrained network, frozen, and fit a logistic head on the
            embeddings (:mod:`auditor.models.pretrained`); ``None``: no pretrained features.
            ``--solver auto`` then solves exactly: the head's dense Hessian is small.
        weights: The state dict file of ``features`` (stored as an absolute path);
            ``None`` takes torchvision's file from the torch hub cache.
        features_size: The side, in pixels, images are resized to for ``features``;
            ``None``: the size its weights were trained at (224 for most).
        model_file: The user's own trained network instead of a built-in model: a
            ``torch.export`` program (``.pt2``), a TorchScript file, or a state dict
            (with ``model_factory``); see :mod:`auditor.models.user`.
        model_factory: ``MODULE:FUNCTION``, a callable that builds the ``nn.Module`` a
            state dict ``model_file`` is loaded into.
        fit: For ``model_file``: ``none`` uses the model as trained (no refit); ``last``
            refits its last linear layer to the regularised risk (``weight_decay``) from
            the trained values.
    """

    name: str | None = field(
        default=None,
        metadata=cli(
            "--model",
            "model",
            "Default: linear for a numeric target, logistic for labels (also for images; "
            "--model cnn trains a small network on them).",
            registry="models",
        ),
    )
    weight_decay: float | None = field(
        default=None,
        metadata=cli(
            "--weight-decay",
            "model",
            "L2 coefficient (auto: for --model logistic, the strongest of 0.01, 0.001 and "
            "0.0001 within one point of the best held-out accuracy; 0.01 otherwise).",
            parse=parse_auto_float,
            default_text="auto",
        ),
    )
    hidden: int = field(
        default=32, metadata=cli("--hidden", "model", "Hidden units of --model mlp.")
    )
    max_iter: int = 2000
    grad_tol: float = 1e-5
    dtype: str = field(
        default="float32",
        metadata=cli(
            "--dtype", "model", "Floating type of the fit, gradients and solves.", choices=DTYPES
        ),
    )
    params: str = field(
        default="last",
        metadata=cli(
            "--params",
            "model",
            "--model cnn and --model-file: influence over the last layer only, or over all "
            "weights.",
            choices=PARAMS,
        ),
    )
    epochs: int = field(default=8, metadata=cli("--epochs", "model", "Adam epochs of --model cnn."))
    features: str | None = field(
        default=None,
        metadata=cli(
            "--features",
            "model",
            "Embed the images with this pretrained torchvision network (resnet18, resnet50, "
            "vit_b_16, ...) and fit a logistic head on the embeddings.",
            metavar="ARCH",
        ),
    )
    weights: str | None = field(
        default=None,
        metadata=cli(
            "--weights",
            "model",
            "State dict file of --features (default: torchvision's file in the torch cache).",
            metavar="PATH",
        ),
    )
    features_size: int | None = field(
        default=None,
        metadata=cli(
            "--features-size",
            "model",
            "Side in pixels images are resized to for --features (default: the weights' own, "
            "224 for most).",
            metavar="PIXELS",
            minimum=1,
        ),
    )
    model_file: str | None = field(
        default=None,
        metadata=cli(
            "--model-file",
            "model",
            "Your own trained network instead of --model: a torch.export program (.pt2), "
            "a TorchScript file, or a state dict with --model-factory.",
            metavar="FILE",
            to_text=absolute_path_text,
        ),
    )
    model_factory: str | None = field(
        default=None,
        metadata=cli(
            "--model-factory",
            "model",
            "The function that builds the nn.Module of a state dict --model-file.",
            metavar="MODULE:FUNCTION",
            parse=parse_factory,
        ),
    )
    fit: str = field(
        default="none",
        metadata=cli(
            "--fit",
            "model",
            "--model-file: use the model as trained (none), or refit its last linear layer "
            "with --weight-decay (last).",
            choices=FITS,
        ),
    )

    def __post_init__(self) -> None:
        if self.features is None:
            for option, value in (
                ("--weights", self.weights),
                ("--features-size", self.features_size),
            ):
                if value is not None:
                    raise ConfigError(f"{option} needs --features ARCH")
        elif self.name not in (None, "logistic"):
            raise ConfigError(
                f"--features fits a logistic head on the embeddings; --model {self.name} "
                "cannot be combined with it"
            )
        if self.weights is not None:  # absolute: a resume or rescan may run elsewhere
            self.weights = os.path.abspath(os.path.expanduser(self.weights))
        if self.features_size is not None and self.features_size < 1:
            raise ConfigError(f"--features-size must be >= 1, got {self.features_size}")
        if self.params not in PARAMS:
            raise ConfigError(f"--params must be all or last, got {self.params!r}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {self.epochs}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be float32 or float64, got {self.dtype!r}")
        if self.hidden < 1 or self.max_iter < 1:
            raise ConfigError("--hidden and the iteration limit must be >= 1")
        if self.fit not in FITS:
            raise ConfigError(f"--fit must be none or last, got {self.fit!r}")
        if self.model_file is None:
            if self.model_factory is not None:
                raise ConfigError(
                    "--model-factory builds the module of a state dict: give the state dict "
                    "as --model-file"
                )
            if self.fit != "none":
                raise ConfigError("--fit applies to --model-file (the built-in models are fitted)")
        elif self.name is not None:
            raise ConfigError("give --model or --model-file, not both")
        elif self.features is not None:
            raise ConfigError("give --features or --model-file, not both")

    @property
    def resolved_weight_decay(self) -> float:
        """``weight_decay`` once a scan's load phase has resolved ``auto`` (``None``)."""
        if self.weight_decay is None:
            raise ValueError("--weight-decay auto is resolved when the scan loads its data")
        return self.weight_decay

    def fit_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`auditor.models.fit.fit` these options set."""
        return {"max_iter": self.max_iter, "grad_tol": self.grad_tol}


@dataclass
class SolverArgs:
    """How to solve ``(H + damping I) s = v``.

    Attributes:
        solver: A name in :data:`auditor.influence.solvers.SOLVERS` (``lissa``, ``exact``,
            ``cg``, ``ekfac``) or ``auto`` (exact where the dense Hessian is affordable,
            else lissa; a scan stores the one it chose); checked when a scan starts
            (:func:`auditor.pipeline.scan.check_registered`), since this module may not
            import the solvers.
        damping: Added to the Hessian's diagonal (all solvers), on top of the weight decay.
        tol: Target relative residual ``||A s - v|| / ||v||`` (largest over columns).
        scale: LiSSA's scale; ``None`` picks 1.1x (full batch) or 1.5x (minibatches) a
            power-iteration estimate of the largest eigenvalue.
        depth: LiSSA's most recursion steps (it stops early once ``tol`` is met).
        repeats: LiSSA recursions averaged (only useful with minibatches).
        batch_size: LiSSA's minibatch size; ``None`` or ``>= n`` uses every training point.
        max_iter: CG's most iterations.
        seed: Seeds minibatch sampling and the power iteration (``--seed``, as the data's).
        squaring: Let full-batch LiSSA compute its iterate by repeated squaring of the
            dense ``I - A / scale`` when that takes fewer flops (same result).
        self_influence: How the ranking's self-influences ``g_i^T A^{-1} g_i`` (one per
            training point, on the full fit and on every refit) are solved: ``auto`` uses
            the exact Cholesky factor whenever the dense Hessian is affordable (closed
            form, at most 20,000 parameters) and ``solver`` otherwise; ``same`` always uses
            ``solver``. ``solver`` always computes the test points' IHVPs (pair scores).
    """

    solver: str = field(
        default=AUTO_SOLVER,
        metadata=cli(
            "--solver",
            "solver",
            "How the inverse-Hessian-vector products are solved (docs/method.md); auto: "
            "exact where the dense Hessian is affordable (closed form, at most 20,000 "
            "parameters), else lissa.",
            registry="solvers",
            always=True,
        ),
    )
    damping: float = field(
        default=0.0, metadata=cli("--damping", "solver", "Added to the Hessian.")
    )
    tol: float = field(default=1e-4, metadata=cli("--tol", "solver", "Solver relative residual."))
    scale: float | None = field(
        default=None,
        metadata=cli("--scale", "solver", "LiSSA scale (default: from the largest eigenvalue)."),
    )
    depth: int = field(default=5000, metadata=cli("--depth", "solver", "Most LiSSA steps."))
    repeats: int = field(default=1, metadata=cli("--repeats", "solver", "LiSSA repeats averaged."))
    batch_size: int | None = field(
        default=None,
        metadata=cli("--batch-size", "solver", "LiSSA minibatch size (default: all points)."),
    )
    max_iter: int = 1000
    seed: int = field(default=0, metadata=cli_copy("--seed"))
    self_influence: str = field(
        default="auto",
        metadata=cli(
            "--self-influence",
            "solver",
            "Ranking self-influences: auto = exact Cholesky when the dense Hessian is "
            "affordable, else --solver; same = always --solver.",
            choices=SELF_INFLUENCE,
        ),
    )
    squaring: bool = True

    def __post_init__(self) -> None:
        if self.self_influence not in SELF_INFLUENCE:
            raise ConfigError(f"--self-influence must be auto or same, got {self.self_influence!r}")
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

    @property
    def streams_gradients(self) -> bool:
        """Whether the training gradients are streamed instead of held (``n x p``): EK-FAC's
        memory is bounded by its factors (:class:`~auditor.influence.gradients.StreamedGradients`)."""
        return self.solver == "ekfac"

    def to_dict(self) -> dict[str, Any]:
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
        mislabel_p: ... and when the given label's leave-one-out probability is at most
            this: ``exp(-(loss - self_influence / n))``, the first-order estimate of the
            model fitted without the point (Koh & Liang, eq. 2), at most ``mislabel_p``.
            A hard but rightly labelled point keeps a fair chance of its label once left
            out; a flipped one does not. ``None`` (runs stored before it existed) drops
            the condition.
        outlier_support_z: The strongest test's z an ``outlier`` must also reach; ``None``
            (the default) is ``outlier_z`` itself, so the calibrated threshold alone
            decides (runs stored before it existed keep their 4).
        trim: Fraction left out in the concentration refits (0 turns refits off).
        rounds: Most concentration refits.
        influence_scale: ``log``: the influence z is of ``log|self-influence|``. ``sqrt``
            (runs written before it existed): of the influence norm ``sqrt|self-influence|``,
            whose robust z explodes on well-fitted networks (README, "Ranking and flags").
    """

    outlier_z: float | None = field(
        default=None,
        metadata=cli(
            "--outlier-z",
            "ranking",
            "Flag outlier at this robust z of log |self-influence| (auto: calibrated "
            "to the number of training points).",
            parse=parse_auto_float,
            default_text="auto",
        ),
    )
    mislabel_z: float = field(
        default=5.0,
        metadata=cli(
            "--mislabel-z", "ranking", "Flag mislabel at this z when the prediction disagrees."
        ),
    )
    mislabel_p: float | None = field(
        default=0.3,
        metadata=cli(
            "--mislabel-p",
            "ranking",
            "Flag mislabel only when the label's leave-one-out probability is at most "
            "this (1: no such condition).",
        ),
    )
    outlier_support_z: float | None = None
    trim: float = field(
        default=0.25,
        metadata=cli(
            "--trim", "ranking", "Fraction left out of the masking refits (0: no refits)."
        ),
    )
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
        if self.mislabel_p is not None and not 0.0 < self.mislabel_p <= 1.0:
            raise ConfigError(f"--mislabel-p must lie in (0, 1], got {self.mislabel_p}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolved(self, n: int) -> FlagRule:
        """This rule with ``outlier_z`` as a number for ``n`` training points."""
        outlier_z = self.outlier_z
        if outlier_z is None:
            outlier_z = NormalDist().inv_cdf(1.0 - OUTLIER_ALPHA / max(n, 1))
        support = outlier_z if self.outlier_support_z is None else self.outlier_support_z
        return replace(self, outlier_z=outlier_z, outlier_support_z=support)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, checked: bool = True) -> FlagRule:
        """The rule a run stored; one stored before ``influence_scale`` existed used
        ``sqrt`` (and its thresholds were stored with it).

        ``checked=False`` keeps thresholds that are no longer accepted (a zero, negative
        or non-finite ``outlier_z`` or ``mislabel_z`` stored before they were checked):
        the run's flags were decided with them, so a report shows them as applied."""
        fields = {"influence_scale": "sqrt", "mislabel_p": None, **d}
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
    """Everything a scan needs; ``to_dict`` is stored in ``runs.config``.

    Its fields that are settings dataclasses (``data``, ``model``, ``solver``, ``rule``)
    hold the options of their sections; ``device`` and ``score_chunk`` are the run's."""

    data: DataArgs
    model: ModelArgs = field(default_factory=ModelArgs)
    solver: SolverArgs = field(default_factory=SolverArgs)
    rule: FlagRule = field(default_factory=FlagRule)
    device: str = field(default="cpu", metadata=cli("--device", "run", "cpu or cuda."))
    score_chunk: int = field(
        default=256,
        metadata=cli(
            "--chunk",
            "run",
            "Test points per committed block of pair scores (work lost at most on a crash).",
            minimum=1,
        ),
    )

    threads: int | None = field(
        default=None,
        metadata=cli(
            "--threads",
            "run",
            "CPU threads for torch (default: the cores this process may use, shared by "
            "torchrun's local ranks).",
            minimum=1,
        ),
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScanConfig:
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
            threads=d.get("threads"),
        )


#: Seeds must fit torch's and numpy's generators (a signed 64-bit integer, not negative).
MAX_SEED = 2**63 - 1


def check_seed(seed: int, option: str) -> None:
    """Raise :class:`ConfigError` unless ``0 <= seed <= MAX_SEED``."""
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{option} must lie in 0..{MAX_SEED}, got {seed}")
