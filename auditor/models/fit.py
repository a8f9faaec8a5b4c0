"""Fit a model to the regularised empirical risk and record how close it got to an optimum.

R(theta) = mean_i L(z_i, theta) + (weight_decay / 2) * ||theta||^2. Influence functions
assume grad R = 0, so the final gradient norm is recorded and checked.

The optimiser follows the model: a convex risk (linear and logistic models, and the head
of a model with a frozen body) is minimised by Newton-CG with its closed-form
Hessian-vector products (:mod:`auditor.models.newton`), which reaches the gradient
tolerance in a few iterations also in float32; any other risk by full-batch L-BFGS.

A fit never ends in a traceback from the optimiser: data too large for the fit's dtype is
refused before it starts (:func:`check_scale`, :class:`~auditor.errors.DataError`), and a
non-finite risk or gradient, or a failure inside L-BFGS's line search, is a
:class:`~auditor.errors.SolverError`.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace
from types import TracebackType

import torch

from auditor.errors import DataError, SolverError
from auditor.models.base import ModelTask
from auditor.models.newton import newton_cg

#: Rows of the features whose norms :func:`check_scale` computes at once (in float64).
SCALE_CHUNK = 4096
#: The file of torch's L-BFGS (its line search): an exception raised there is a failure
#: of the optimiser, not of the model.
LBFGS_FILE = inspect.getfile(torch.optim.LBFGS)


@dataclass
class FitResult:
    """The fitted parameters ``theta`` ``(p,)`` and how the fit ended."""

    theta: torch.Tensor
    risk: float
    grad_norm: float
    iterations: int
    converged: bool
    #: The embeddings ``(n, h)`` of the training points the head of a model with a frozen
    #: body was fitted over (:meth:`~auditor.models.ModelTask.frozen_features`), else None.
    features: torch.Tensor | None = None


def risk(
    model: ModelTask, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weight_decay: float
) -> torch.Tensor:
    """Regularised empirical risk (scalar) over ``x`` ``(n, d)`` and ``y`` ``(n,)``."""
    return model.loss(model.outputs(theta, x), y).mean() + 0.5 * weight_decay * theta.dot(theta)


def fit(
    model: ModelTask,
    x: torch.Tensor,
    y: torch.Tensor,
    weight_decay: float,
    *,
    seed: int = 0,
    max_iter: int = 2000,
    grad_tol: float = 1e-5,
    theta0: torch.Tensor | None = None,
) -> FitResult:
    """Minimise the risk: Newton-CG for a convex model (:attr:`ModelTask.convex_risk`),
    else full-batch L-BFGS (strong Wolfe line search).

    Args:
        model: The model.
        x: ``(n, d)`` features.
        y: ``(n,)`` targets.
        weight_decay: L2 coefficient (lambda above).
        seed: Seeds the starting point of non-convex models (and their minibatch
            :meth:`~auditor.models.ModelTask.pretrain`, run first when ``theta0`` is None).
        max_iter: Most iterations of the optimiser (Newton or L-BFGS); 0 (a model's ``max_polish_iter`` of 0) keeps
            the starting point and only measures the risk and its gradient there.
        grad_tol: Stop when ``||grad R|| <= grad_tol``; ``converged`` records whether it did.
        theta0: Optional warm start ``(p,)``.

    A model with a frozen body (:meth:`~auditor.models.ModelTask.frozen_features`) has its
    head fitted over the body's embeddings of ``x``, computed once (and returned).

    Raises:
        DataError: ``x`` (or a regression's ``y``) is too large for a fit in ``x``'s dtype
            (:func:`check_scale`), checked before anything is computed.
        SolverError: The fit overflowed, L-BFGS's line search broke down, or the risk or
            its gradient came out non-finite (NaN or inf).
    """
    check_scale(x, y)
    gen = torch.Generator().manual_seed(seed)
    if theta0 is None:
        theta0 = model.pretrain(x, y, weight_decay, seed)
    max_iter = min(max_iter, getattr(model, "max_polish_iter", max_iter))
    features = model.frozen_features(x)
    if features is not None:
        if model.head is None:
            raise TypeError(f"model {model.name!r} has frozen features but no head to fit")
        head = fit(
            model.head,
            features,
            y,
            weight_decay,
            seed=seed,
            max_iter=max_iter,
            grad_tol=grad_tol,
            theta0=theta0,
        )
        return replace(head, features=features)
    theta = model.init_params(gen, x.dtype).to(x.device) if theta0 is None else theta0.clone()
    if max_iter < 1:  # a model used as trained (--model-file, --fit none): measured only
        grad_norm = _grad_norm(model, theta, x, y, weight_decay)
        with torch.no_grad():
            value = float(risk(model, theta, x, y, weight_decay))
        _check_finite(value, grad_norm, 0, x, y)
        return FitResult(theta.detach(), value, grad_norm, 0, grad_norm <= grad_tol)
    if model.convex_risk:
        theta, grad_norm, iterations = _fit_newton(
            model, x, y, weight_decay, theta, max_iter, grad_tol
        )
    else:
        theta, grad_norm, iterations = _fit_lbfgs(
            model, x, y, weight_decay, theta, max_iter, grad_tol
        )
    with torch.no_grad():
        value = float(risk(model, theta, x, y, weight_decay))
    _check_finite(value, grad_norm, int(iterations), x, y)
    return FitResult(
        theta=theta,
        risk=value,
        grad_norm=grad_norm,
        iterations=int(iterations),
        converged=grad_norm <= grad_tol,
    )


def _fit_newton(
    model: ModelTask,
    x: torch.Tensor,
    y: torch.Tensor,
    weight_decay: float,
    theta: torch.Tensor,
    max_iter: int,
    grad_tol: float,
) -> tuple[torch.Tensor, float, int]:
    """:func:`~auditor.models.newton.newton_cg` on a convex model's risk with its closed-form
    Hessian-vector products: the parameters ``(p,)``, their gradient norm, the iterations."""

    def risk_and_gradient(t: torch.Tensor) -> tuple[float, torch.Tensor]:
        t = t.detach().requires_grad_(True)
        value = risk(model, t, x, y, weight_decay)
        (g,) = torch.autograd.grad(value, t)
        return float(value.detach()), g

    def hessian_product(t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        hv = model.hvp(t, x, y, v[:, None])
        assert hv is not None, "a convex model has a closed-form Hessian-vector product"
        return hv[:, 0] + weight_decay * v

    found = newton_cg(
        risk_and_gradient, hessian_product, theta.detach(), max_iter=max_iter, grad_tol=grad_tol
    )
    return found.theta, found.grad_norm, found.iterations


def _fit_lbfgs(
    model: ModelTask,
    x: torch.Tensor,
    y: torch.Tensor,
    weight_decay: float,
    theta: torch.Tensor,
    max_iter: int,
    grad_tol: float,
) -> tuple[torch.Tensor, float, int]:
    """Full-batch L-BFGS (strong Wolfe line search) on a non-convex model's risk: the
    parameters ``(p,)``, their gradient norm, the iterations."""
    theta.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=grad_tol / theta.numel() ** 0.5,  # L-BFGS checks the max-norm
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = risk(model, theta, x, y, weight_decay)
        torch.autograd.backward(value)  # value.backward(), typed (torch leaves it unannotated)
        return value

    # L-BFGS can stop early on a stalled line search; a restart from there often goes on.
    try:
        for _ in range(3):
            optimizer.step(closure)  # type: ignore[no-untyped-call]  # LBFGS.step is unannotated
            grad_norm = _grad_norm(model, theta, x, y, weight_decay)
            if grad_norm <= grad_tol or not math.isfinite(grad_norm):  # the latter: refused below
                break
    except RuntimeError as exc:  # torch refuses a step that overflows float32/float64
        if "overflow" not in str(exc):
            _raise_if_line_search(exc, x, y)
            raise
        raise SolverError(
            f"the fit overflowed ({exc}); the feature or target values are too large: "
            "scale them, or use --dtype float64"
        ) from None
    except Exception as exc:  # IndexError, UnboundLocalError... from a broken line search
        _raise_if_line_search(exc, x, y)
        raise
    theta = theta.detach()
    iterations = optimizer.state[optimizer._params[0]].get("n_iter", 0)
    return theta, grad_norm, int(iterations)


def data_scale(x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[float, str]:
    """The scale of the data a fit sees, and where it is reached: the largest Euclidean
    norm of a row ``(x_i, 1)`` of the features ``x`` ``(n, d)`` with the bias term
    appended (``"features"``), or, for a regression (floating ``y`` ``(n,)``), the largest
    ``|y_i|`` if that is larger (``"targets"``). Computed in float64 from rows divided by
    the largest ``|x|``, so it does not overflow; ``inf`` or NaN for non-finite data."""
    largest, what = _largest_abs(x), "features"
    norm = 0.0
    if 0.0 < largest < math.inf:
        flat = x.detach().reshape(x.shape[0], -1)
        for start in range(0, flat.shape[0], SCALE_CHUNK):
            rows = flat[start : start + SCALE_CHUNK].double() / largest
            norm = max(norm, float(torch.linalg.vector_norm(rows, dim=1).max()))
        scale = math.hypot(largest * norm, 1.0)
    else:
        scale = math.hypot(largest, 1.0)  # no features (1.0), or inf or NaN
    if y is not None and y.is_floating_point() and not _largest_abs(y) <= scale:
        scale, what = _largest_abs(y), "targets"
    return scale, what


def check_scale(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """Raise :class:`DataError` unless a fit in ``x``'s dtype can take the data.

    The rule: with ``s`` the data's scale (:func:`data_scale`: the largest norm of a row
    ``(x_i, 1)``, or a regression's largest ``|y_i|`` if larger), ``n`` the rows and ``M``
    the dtype's largest finite value (``torch.finfo(x.dtype).max``: 3.4e38 for float32,
    1.8e308 for float64), the data is refused when ``n * (2 s)^2 > M``, i.e. when
    ``s > sqrt(M / n) / 2``. At parameters of unit norm, a linear model's squared error
    ``(x_i . theta - y_i)^2``, its gradient ``(x_i . theta - y_i) x_i`` and the Hessian's
    ``x_i x_i^T`` each reach ``(2 s)^2`` for one row, and the risk, its gradient and the
    Hessian sum ``n`` of them before dividing by ``n``: beyond the bound they overflow to
    inf in the dtype (in float32: 1.5e18 for 40 points, 2.9e16 for 100,000). Data whose
    values are all finite in float32 always passes in float64. (A fit of data well
    inside the bound can still fail: an optimiser's steps span the square of the data's range
    of scales; that failure is a :class:`SolverError` from :func:`fit`.)

    Raises:
        DataError: Naming the scale found, the bound and what to do.
    """
    n = x.shape[0]
    if n == 0 or x.numel() == 0:
        return
    bound = math.sqrt(torch.finfo(x.dtype).max / n) / 2
    cheap = math.hypot(math.sqrt(x[0].numel()) * _largest_abs(x), 1.0)  # >= every row norm
    if y is not None and y.is_floating_point():
        cheap = max(cheap, _largest_abs(y))
    if cheap <= bound:
        return
    scale, what = data_scale(x, y)
    if scale <= bound:
        return
    dtype = _dtype_name(x)
    advice = (
        "standardise each column with --normalize standard"
        if what == "features"
        else "scale them down"
    )
    if x.dtype != torch.float64:
        advice += ", or use --dtype float64"
    largest = "the largest row norm" if what == "features" else "the largest |target|"
    raise DataError(
        f"the fit overflowed {dtype}: the {what} reach a scale of {scale:.3g} ({largest}), "
        f"beyond the {bound:.3g} at which the loss and gradient of a {dtype} fit of {n} "
        f"points overflow; {advice}"
    )


def _largest_abs(t: torch.Tensor) -> float:
    """``max |t|`` (0.0 for an empty tensor, NaN if ``t`` holds one), without a copy."""
    if t.numel() == 0:
        return 0.0
    low, high = torch.aminmax(t.detach())
    low_abs, high_abs = abs(float(low)), abs(float(high))
    return high_abs if not low_abs >= high_abs else low_abs


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _check_finite(
    value: float, grad_norm: float, iterations: int, x: torch.Tensor, y: torch.Tensor
) -> None:
    """Raise :class:`SolverError` if the fit's risk ``value`` or gradient norm is not
    finite (NaN or inf)."""
    if math.isfinite(value) and math.isfinite(grad_norm):
        return
    what, found = ("risk", value) if not math.isfinite(value) else ("gradient", grad_norm)
    steps = f"{iterations} iteration{'' if iterations == 1 else 's'}"
    raise SolverError(
        f"the fit reached a non-finite {what} ({found}) after {steps}{_scale_note(x, y)}; "
        "scale the data, raise --weight-decay, or use --dtype float64"
    )


def _raise_if_line_search(exc: BaseException, x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise :class:`SolverError` for ``exc`` if torch's L-BFGS raised it itself: its
    strong-Wolfe line search breaks down on a NaN risk (an ``IndexError`` from its bracket
    of one point, an ``UnboundLocalError``...). An error raised inside the model, or by
    auditor, stays as it is."""
    if not _raised_in(exc.__traceback__, LBFGS_FILE):
        return
    raise SolverError(
        f"the fit failed: L-BFGS's line search broke down ({type(exc).__name__}: {exc})"
        f"{_scale_note(x, y)}; the risk overflows or is not finite along the search: scale "
        "the data, raise --weight-decay, or use --dtype float64"
    ) from None


def _raised_in(tb: TracebackType | None, filename: str) -> bool:
    """Whether the innermost frame of traceback ``tb`` runs code of file ``filename``."""
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and last.tb_frame.f_code.co_filename == filename


def _scale_note(x: torch.Tensor, y: torch.Tensor) -> str:
    """``" on float32 features of scale S (the largest row norm)"``, for an error message."""
    scale, what = data_scale(x, y)
    largest = "largest row norm" if what == "features" else "largest |target|"
    return f" on {_dtype_name(x)} {what} of scale {scale:.3g} (the {largest})"


def _grad_norm(
    model: ModelTask, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weight_decay: float
) -> float:
    t = theta.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(risk(model, t, x, y, weight_decay), t)
    return float(g.norm())
