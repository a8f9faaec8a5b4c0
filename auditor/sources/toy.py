"""The seed's built-in 1-D regression with two injected y = 100 outliers."""

from __future__ import annotations

import torch

from auditor.data import Dataset, SourceInfo

OUTLIER_INDEXES = (1, 15)


def toy_linear(
    seed: int = 0, outliers: tuple[int, ...] = OUTLIER_INDEXES
) -> tuple[Dataset, Dataset]:
    """The seed's regression: 20 training points and one test point.

    x = -5, -4.5, ..., 4.5; y = -5x + 5 + N(0, 0.1^2); y = 100 at the ``outliers`` indexes
    (x = -4.5 and x = 2.5 by default). The test point is x = 3.2 on the clean line.

    Returns:
        ``(train, test)`` regression datasets with ``(20, 1)`` and ``(1, 1)`` features.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.arange(-5.0, 5.0, 0.5)
    y = -5.0 * x + 5.0 + 0.1 * torch.randn(x.shape, generator=gen)
    for i in outliers:
        y[i] = 100.0
    x_test = torch.tensor([3.2])
    y_test = -5.0 * x_test + 5.0 + 0.1 * torch.randn(x_test.shape, generator=gen)
    source = SourceInfo("toy-linear", None, {"seed": seed})
    train = Dataset(
        x[:, None],
        y,
        [f"x={v:g}" for v in x.tolist()],
        "regression",
        source=source,
        name="toy-linear",
    )
    test = Dataset(
        x_test[:, None], y_test, ["x=3.2"], "regression", source=source, name="toy-linear"
    )
    return train, test
