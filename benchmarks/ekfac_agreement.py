"""EK-FAC against the exact solver over every weight of a small MLP and a small CNN.

    python benchmarks/ekfac_agreement.py            # about 3 minutes on 2 cores

MNIST test images (``../shared/data/mnist``), downsampled (8x8 for the MLP, 16x16 for the
CNN) and scaled to unit norm, fitted by auditor's own fit in float64; the exact Hessian
built densely with autograd. For each setting: Spearman and Pearson of the pair scores
``g_i^T A^{-1} g_j`` (every training point against every fifth), Spearman of the
self-influences, and the same for the exact Gauss-Newton matrix (what EK-FAC
approximates) against the exact Hessian. Then EK-FAC against the exact Gauss-Newton matrix
(the approximation's own error), split in its two steps: the Gauss-Newton blocks within
each layer against the whole matrix (what dropping the blocks between layers costs), and
EK-FAC against those blocks (what the Kronecker eigenbasis with a diagonal costs); the mean over test points of each test point's Spearman
(the order a reviewer reads: which training points matter most to this test point), and
both solves with Kronfluence's default damping added (0.1 x the mean eigenvalue of the
Gauss-Newton matrix, ``--damping`` in a scan).
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from auditor.influence.ekfac import fit_ekfac
from auditor.influence.gradients import per_example_grads
from auditor.influence.hessian import HessianOperator
from auditor.models.cnn import CNN
from auditor.models.fit import fit
from auditor.models.mlp import MLP

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def mnist(side: int, n: int, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    raw = gzip.decompress((MNIST / "t10k-images-idx3-ubyte.gz").read_bytes())[16:]
    labels_raw = gzip.decompress((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    labels = np.frombuffer(labels_raw[8:], np.uint8)
    images = torch.tensor(np.frombuffer(raw, np.uint8).reshape(-1, 1, 28, 28) / 255.0)
    keep = np.flatnonzero(np.isin(labels, classes))[:n]
    x = torch.nn.functional.interpolate(images[keep], size=(side, side), mode="area")
    x = x.reshape(len(keep), -1)
    y = torch.tensor(np.searchsorted(classes, labels[keep])).long()
    return x / x.norm(dim=1, keepdim=True), y


def gauss_newton(model, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    jac = torch.func.jacrev(lambda t: model.outputs(t, x))(theta)
    p = torch.softmax(model.outputs(theta, x), 1)
    h_out = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("nkp,nkl,nlq->pq", jac, h_out, jac) / x.shape[0]


def per_query_spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over the columns (test points) of the Spearman of ``a`` and ``b`` ``(n, m)``."""
    return float(np.mean([spearmanr(a[:, j], b[:, j]).statistic for j in range(a.shape[1])]))


def compare(row: dict, name: str, got: dict, want: dict) -> None:
    """Spearman and Pearson of ``got``'s pair scores and self-influences against ``want``'s."""
    a, b = got["pairs"].numpy(), want["pairs"].numpy()
    row[f"{name}_pairs_spearman"] = float(spearmanr(a.ravel(), b.ravel()).statistic)
    row[f"{name}_pairs_pearson"] = float(pearsonr(a.ravel(), b.ravel()).statistic)
    row[f"{name}_query_spearman"] = per_query_spearman(a, b)
    row[f"{name}_self_spearman"] = float(spearmanr(got["self"], want["self"]).statistic)


def agreement(model, x, y, wd: float) -> dict:
    theta = fit(model, x, y, wd, seed=0).theta
    op = HessianOperator(model, theta, x, y, wd)
    g = per_example_grads(model, theta, x, y)
    eye = torch.eye(model.n_params, dtype=x.dtype)
    gn = gauss_newton(model, theta, x)
    factors = fit_ekfac(model, theta, x, y)
    v = g[::5].T
    damping = 0.1 * float(torch.trace(gn)) / model.n_params

    def dense(matrix: torch.Tensor) -> dict:
        return {
            "pairs": g @ torch.linalg.solve(matrix, v),
            "self": (g * torch.linalg.solve(matrix, g.T).T).sum(1),
        }

    def kfe(shift: float) -> dict:
        return {
            "pairs": g @ factors.inverse_times(v, shift),
            "self": factors.quadratic_forms(g, shift),
        }

    within = torch.zeros_like(gn)  # the Gauss-Newton blocks within each layer only
    for layer in factors.layers:
        idx = layer.index.flatten()
        within[idx[:, None], idx[None, :]] = gn[idx[:, None], idx[None, :]]
    exact, ggn, ekfac = dense(op.dense()), dense(gn + wd * eye), kfe(wd)
    blocks = dense(within + wd * eye)
    row = {"p": model.n_params, "n": x.shape[0], "weight_decay": wd, "damping": damping}
    compare(row, "ekfac", ekfac, exact)
    compare(row, "ggn", ggn, exact)
    compare(row, "ekfac_vs_ggn", ekfac, ggn)
    compare(row, "blocks_vs_ggn", blocks, ggn)
    compare(row, "ekfac_vs_blocks", ekfac, blocks)
    compare(row, "damped_ekfac", kfe(wd + damping), dense(op.dense() + damping * eye))
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/ekfac_agreement.json")
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    rows = []
    x, y = mnist(8, 500, list(range(10)))
    for wd in (0.01, 0.03):
        rows.append(
            {"model": "mlp (8x8, 10 classes, hidden 8)", **agreement(MLP(64, 10, 8), x, y, wd)}
        )
        print(rows[-1], flush=True)
    x, y = mnist(16, 190, [0, 1, 2])
    for wd in (0.01, 0.1):
        cnn = CNN((1, 16, 16), 3, params="all", channels=(2, 4), hidden=8, epochs=20)
        rows.append({"model": "cnn (16x16, 3 classes, 2+4 channels)", **agreement(cnn, x, y, wd)})
        print(rows[-1], flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(
        "| model | p | weight decay | pairs Spearman | per-test Spearman | pairs Pearson | "
        "self Spearman | GGN vs exact: pairs / per-test | EK-FAC vs GGN: pairs / per-test "
        "| damped: pairs / per-test / self | layer blocks vs GGN | EK-FAC vs layer blocks |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['model']} | {r['p']} | {r['weight_decay']} | "
            f"{r['ekfac_pairs_spearman']:.3f} | {r['ekfac_query_spearman']:.3f} | "
            f"{r['ekfac_pairs_pearson']:.3f} | {r['ekfac_self_spearman']:.3f} | "
            f"{r['ggn_pairs_spearman']:.3f} / {r['ggn_query_spearman']:.3f} | "
            f"{r['ekfac_vs_ggn_pairs_spearman']:.3f} / {r['ekfac_vs_ggn_query_spearman']:.3f} | "
            f"{r['damped_ekfac_pairs_spearman']:.3f} / {r['damped_ekfac_query_spearman']:.3f} / "
            f"{r['damped_ekfac_self_spearman']:.3f} | "
            f"{r['blocks_vs_ggn_pairs_spearman']:.3f} | {r['ekfac_vs_blocks_pairs_spearman']:.3f} |"
        )


if __name__ == "__main__":
    main()
