"""Options shared by the commands that scan (``scan``, ``evaluate``)."""

from __future__ import annotations

import click

from auditor.config import DataArgs, FlagRule, ModelArgs, ScanConfig, SolverArgs
from auditor.models import MODEL_NAMES


def _classes(_ctx, _param, value: str | None) -> list[str] | None:
    if value is None:
        return None
    classes = [c.strip() for c in value.split(",") if c.strip()]
    if len(classes) < 2:
        raise click.BadParameter("give at least two comma-separated classes, e.g. 1,7")
    return classes


def _auto_or_float(_ctx, _param, value: str) -> float | None:
    if value == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither auto nor a number") from None


def _resize(_ctx, _param, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected HxW such as 28x28, got {value!r}") from None
    if h < 1 or w < 1:
        raise click.BadParameter(f"sizes must be positive, got {value!r}")
    return h, w


def _option(*decls: str, **attrs) -> tuple[str, object]:
    """A ``(--name, click.option)`` entry of the table: the name selects it in
    :func:`scan_options`'s ``without``."""
    return decls[0], click.option(*decls, **attrs)


_SCAN_OPTIONS: list[tuple[str, object]] = [
    _option(
        "--train",
        "train",
        metavar="DATA",
        help="toy-linear, an idx or image folder, a .csv or .npz.",
    ),
    _option("--test", "test", metavar="DATA", help="Test data (same kinds as --train)."),
    _option("--test-split", type=float, help="Hold out this fraction of --train as test points."),
    _option("--seed", type=int, default=0, show_default=True, help="Seeds the split and sampling."),
    _option("--classes", callback=_classes, help="Keep these classes, e.g. 1,7 (binary task)."),
    _option(
        "--normalize",
        type=click.Choice(["unit", "none"]),
        default="unit",
        show_default=True,
        help="Scale each image to unit L2 norm, or keep pixels in [0, 1].",
    ),
    _option("--resize", callback=_resize, metavar="HxW", help="Resize images of different sizes."),
    _option("--download", type=click.Choice(["mnist"]), help="Fetch MNIST through torchvision."),
    _option(
        "--download-root",
        default="data",
        show_default=True,
        help="Where --download stores files.",
    ),
    _option(
        "--model",
        type=click.Choice(list(MODEL_NAMES)),
        help="Default: linear for a numeric target, logistic for labels; cnn for images.",
    ),
    _option("--weight-decay", type=float, default=0.01, show_default=True, help="L2 coefficient."),
    _option(
        "--hidden", type=int, default=32, show_default=True, help="Hidden units of --model mlp."
    ),
    _option(
        "--params",
        type=click.Choice(["last", "all"]),
        default="last",
        show_default=True,
        help="--model cnn: influence over the last layer only, or over all weights.",
    ),
    _option("--epochs", type=int, default=8, show_default=True, help="Adam epochs of --model cnn."),
    _option(
        "--dtype",
        type=click.Choice(["float32", "float64"]),
        default="float32",
        show_default=True,
    ),
    _option(
        "--solver",
        type=click.Choice(["lissa", "exact", "cg"]),
        default="lissa",
        show_default=True,
    ),
    _option("--damping", type=float, default=0.0, show_default=True, help="Added to the Hessian."),
    _option("--scale", type=float, help="LiSSA scale (default: from the largest eigenvalue)."),
    _option("--depth", type=int, default=5000, show_default=True, help="Most LiSSA steps."),
    _option("--repeats", type=int, default=1, show_default=True, help="LiSSA repeats averaged."),
    _option("--batch-size", type=int, help="LiSSA minibatch size (default: all points)."),
    _option("--tol", type=float, default=1e-4, show_default=True, help="Solver relative residual."),
    _option(
        "--self-influence",
        type=click.Choice(["auto", "same"]),
        default="auto",
        show_default=True,
        help="Ranking self-influences: auto = exact Cholesky when the dense Hessian is "
        "affordable, else --solver; same = always --solver.",
    ),
    _option(
        "--outlier-z",
        default="auto",
        show_default=True,
        callback=_auto_or_float,
        help="Flag outlier at this robust z of log |self-influence| (auto: calibrated "
        "to the number of training points).",
    ),
    _option(
        "--mislabel-z",
        type=float,
        default=FlagRule.mislabel_z,
        show_default=True,
        help="Flag mislabel at this z when the prediction disagrees.",
    ),
    _option(
        "--trim",
        type=float,
        default=FlagRule.trim,
        show_default=True,
        help="Fraction left out of the masking refits (0: no refits).",
    ),
    _option("--device", default="cpu", show_default=True, help="cpu or cuda."),
    _option(
        "--chunk",
        type=click.IntRange(min=1),
        default=256,
        show_default=True,
        help="Test points per committed block of pair scores (work lost at most on a crash).",
    ),
]


def scan_options(*, without: tuple[str, ...] = ()):
    """Every option of ``auditor scan`` that builds its :class:`ScanConfig`, but the
    options named in ``without`` (e.g. ``("--seed",)``)."""

    def decorate(func):
        for name, option in reversed(_SCAN_OPTIONS):
            if name not in without:
                func = option(func)
        return func

    return decorate


#: Which :class:`ScanConfig` field each scan option sets, and how a rescan writes it back:
#: ``(option, section, field, to text)``; section ``None`` is a field of ScanConfig itself.
#: To text ``None``: a field the rescan does not repeat: where the data comes from (given
#: to :func:`scan_argv` apart) and the solver's copy of --seed (the data's repeats it).
_FIELDS = [
    ("--train", "data", "train", None),
    ("--test", "data", "test", None),
    ("--test-split", "data", "test_split", None),
    ("--download", "data", "download", None),
    ("--download-root", "data", "download_root", None),
    ("--seed", "data", "seed", str),
    ("--seed", "solver", "seed", None),
    ("--classes", "data", "classes", ",".join),
    ("--normalize", "data", "normalize", str),
    ("--resize", "data", "resize", lambda hw: f"{hw[0]}x{hw[1]}"),
    ("--model", "model", "name", str),
    ("--weight-decay", "model", "weight_decay", str),
    ("--hidden", "model", "hidden", str),
    ("--params", "model", "params", str),
    ("--epochs", "model", "epochs", str),
    ("--dtype", "model", "dtype", str),
    ("--solver", "solver", "solver", str),
    ("--damping", "solver", "damping", str),
    ("--scale", "solver", "scale", str),
    ("--depth", "solver", "depth", str),
    ("--repeats", "solver", "repeats", str),
    ("--batch-size", "solver", "batch_size", str),
    ("--tol", "solver", "tol", str),
    ("--self-influence", "solver", "self_influence", str),
    ("--outlier-z", "rule", "outlier_z", str),
    ("--mislabel-z", "rule", "mislabel_z", str),
    ("--trim", "rule", "trim", str),
    ("--device", None, "device", str),
    ("--chunk", None, "score_chunk", str),
]

#: The settings a rescan repeats: all of :data:`_FIELDS` but where the data comes from.
_REPEATED = [entry for entry in _FIELDS if entry[3] is not None]


def scan_config(opts: dict) -> ScanConfig:
    """The :class:`ScanConfig` the parsed ``scan_options`` describe (through
    :data:`_FIELDS`); a field whose option was left out (``evaluate`` has no --seed)
    keeps its default."""
    fields: dict = {"data": {}, "model": {}, "solver": {}, "rule": {}, None: {}}
    for option, section, name, _text in _FIELDS:
        param = option[2:].replace("-", "_")
        if param in opts:
            fields[section][name] = opts[param]
    return ScanConfig(
        data=DataArgs(**fields["data"]),
        model=ModelArgs(**fields["model"]),
        solver=SolverArgs(**fields["solver"]),
        rule=FlagRule(**fields["rule"]),
        **fields[None],
    )


def scan_argv(config: ScanConfig, train: str, test: str | None) -> list[str]:
    """The ``auditor scan`` argv that repeats ``config`` on the data ``train`` (and
    ``test``): the inverse of :func:`scan_config`, naming each option whose value is not
    the default, and ``--solver`` always."""
    default = ScanConfig(DataArgs(train=train))
    argv = ["auditor", "scan", "--train", train, *(["--test", test] if test else [])]
    for option, section, name, text in _REPEATED:
        value = getattr(config if section is None else getattr(config, section), name)
        stock = getattr(default if section is None else getattr(default, section), name)
        if value is not None and (value != stock or option == "--solver"):
            argv += [option, text(value)]
    return argv
