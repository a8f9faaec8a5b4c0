"""EK-FAC against the exact solver over every weight of a small MLP and a small CNN.

    python benchmarks/ekfac_agreement.py            # about 3 minutes on 2 cores

MNIST test images (``../shared/data/mnist``), downsampled (8x8 for the MLP, 16x16 for the
CNN) and scaled to unit norm, fitted by auditor's own fit in float64; the exact Hessian
built densely with autograd. For each setting: Spearman and Pearson of the pair scores
``g_i^T A^{-1} g_j`` (every training point against every fifth), Spearman of the
self-influences, and the same for the exact Gauss-Newton matrix (what EK-FAC
approximates) against the exact Hessian.
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


def agreement(model, x, y, wd: float) -> dict:
    theta = fit(model, x, y, wd, seed=0).theta
    op = HessianOperator(model, theta, x, y, wd)
    g = per_example_grads(model, theta, x, y)
    hessian = op.dense()
    ggn = gauss_newton(model, theta, x) + wd * torch.eye(model.n_params, dtype=x.dtype)
    factors = fit_ekfac(model, theta, x, y)
    v = g[::5].T
    pairs = {
        "exact": g @ torch.linalg.solve(hessian, v),
        "ggn": g @ torch.linalg.solve(ggn, v),
        "ekfac": g @ factors.inverse_times(v, wd),
    }
    selfs = {
        "exact": (g * torch.linalg.solve(hessian, g.T).T).sum(1),
        "ggn": (g * torch.linalg.solve(ggn, g.T).T).sum(1),
        "ekfac": factors.quadratic_forms(g, wd),
    }
    row = {"p": model.n_params, "n": x.shape[0], "weight_decay": wd}
    for name in ("ekfac", "ggn"):
        a, b = pairs[name].flatten().numpy(), pairs["exact"].flatten().numpy()
        row[f"{name}_pairs_spearman"] = float(spearmanr(a, b).statistic)
        row[f"{name}_pairs_pearson"] = float(pearsonr(a, b).statistic)
        row[f"{name}_self_spearman"] = float(spearmanr(selfs[name], selfs["exact"]).statistic)
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
        "| model | p | n | weight decay | pairs Spearman | pairs Pearson | self Spearman | "
        "GGN pairs Spearman | GGN self Spearman |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['model']} | {r['p']} | {r['n']} | {r['weight_decay']} | "
            f"{r['ekfac_pairs_spearman']:.3f} | {r['ekfac_pairs_pearson']:.3f} | "
            f"{r['ekfac_self_spearman']:.3f} | {r['ggn_pairs_spearman']:.3f} | "
            f"{r['ggn_self_spearman']:.3f} |"
        )


if __name__ == "__main__":
    main()
