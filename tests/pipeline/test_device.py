"""``--device cuda`` end to end: the same scan on the GPU and on the CPU agree.

Skipped without a CUDA device; ``benchmarks/gpu.sh`` runs it on the GPU machine.
"""

import numpy as np
import pytest
import torch

from auditor.config import DataArgs, ModelArgs, ScanConfig, SolverArgs
from auditor.pipeline.scan import scan
from auditor.store import open_db, pairs, points, runs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("solver", ["exact", "lissa", "cg"])
def test_cuda_scan_matches_cpu_scan(tmp_path, mnist_dir, solver):
    data = DataArgs(train=str(mnist_dir), classes=["1", "7"], test_split=0.2)
    results = {}
    for device in ("cpu", "cuda"):
        engine = open_db(str(tmp_path / f"{device}.db"))
        config = ScanConfig(data=data, solver=SolverArgs(solver=solver), device=device)
        run_id = scan(engine, config).run_id
        train = points.read_points(engine, run_id, "train")
        results[device] = (pairs.read_pair_scores(engine, run_id), train)
    cpu_scores, cpu_train = results["cpu"]
    gpu_scores, gpu_train = results["cuda"]
    scale = np.abs(cpu_scores).max()
    assert np.abs(gpu_scores - cpu_scores).max() <= 1e-3 * scale
    top = {r["idx"] for r in sorted(cpu_train, key=lambda r: r["rank"])[:20]}
    top_gpu = {r["idx"] for r in sorted(gpu_train, key=lambda r: r["rank"])[:20]}
    assert len(top & top_gpu) >= 18


@pytest.mark.parametrize("params", ["last", "all"])
def test_cuda_cnn_scan_completes_on_the_gpu(tmp_path, mnist_dir, params):
    """The CNN on the GPU: its frozen body's embeddings (``last``) or all its weights
    (``all``, CG over every parameter) stay on the device through fit, gradients, solves
    and refits, and the run is complete with finite scores and a fitted model."""
    data = DataArgs(train=str(mnist_dir), classes=["1", "7"], test_split=0.2)
    engine = open_db(str(tmp_path / "cnn.db"))
    config = ScanConfig(
        data=data,
        model=ModelArgs(name="cnn", params=params, epochs=2),
        # all weights of a network two epochs in: not convex there, so CG needs damping
        solver=SolverArgs(solver="exact") if params == "last" else SolverArgs("cg", damping=0.01),
        device="cuda",
    )
    run_id = scan(engine, config).run_id
    run = runs.get_run(engine, run_id)
    assert run.status == "complete"
    assert run.metrics is not None and run.metrics["test_accuracy"] >= 0.95
    assert np.isfinite(pairs.read_pair_scores(engine, run_id)).all()


def test_cuda_ekfac_factors_and_solve_match_the_cpu():
    """EK-FAC over every weight of a CNN: the factors fitted on the GPU solve like the
    CPU's (float64, so the comparison is tight), and the tape's indexes live there."""
    from auditor.influence.ekfac import fit_ekfac
    from auditor.models.cnn import CNN

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=gen)
    model = CNN((1, 16, 16), 3, params="all", channels=(2, 3), hidden=5)
    theta = torch.randn(model.n_params, generator=gen, dtype=torch.float64) * 0.3
    v = torch.randn(model.n_params, 5, generator=gen, dtype=torch.float64)
    solved = {}
    for device in ("cpu", "cuda"):
        f = fit_ekfac(model, theta.to(device), x.to(device), y.to(device), chunk=16)
        assert all(layer.index.device.type == device for layer in f.layers)
        solved[device] = f.inverse_times(v.to(device), 0.01).cpu()
    torch.testing.assert_close(solved["cuda"], solved["cpu"], rtol=1e-6, atol=1e-9)


def test_cuda_scan_with_ekfac_completes(tmp_path, mnist_dir):
    data = DataArgs(train=str(mnist_dir), classes=["1", "7"], test_split=0.9)
    engine = open_db(str(tmp_path / "a.db"))
    config = ScanConfig(
        data=data,
        model=ModelArgs(model="cnn", params="all", epochs=2),
        solver=SolverArgs(solver="ekfac"),
        device="cuda",
    )
    run = runs.get_run(engine, scan(engine, config).run_id)
    assert run.status == "complete" and run.solver["covered"] == run.n_params
    assert np.isfinite(pairs.read_pair_scores(engine, run.id)).all()
