#!/usr/bin/env bash
# Every GPU check in one run (under 8 minutes on an H200):
#   1. tests/pipeline/test_device.py: a scan on CUDA matches the same scan on the CPU, and
#      --features embeds on the GPU (tests/models/test_features.py);
#   2. the benchmark's cases 2 (MNIST 10-class, exact and LiSSA), 3 (synthetic
#      50,000 x 10,000) and 5 (synthetic 60,000 x 10,000) with --device cuda.
# The table goes to the cuda section of benchmarks/RESULTS.md, or to the file given as $1.
# Needs a torch build with CUDA and the MNIST idx files at ../shared/data/mnist; on a
# machine without them, copy them into the checkout (benchmarks/data/mnist is git-ignored;
# a remote runner must carry that path) and they are linked into place.
#
#   bash benchmarks/gpu.sh                  # updates benchmarks/RESULTS.md
#   bash benchmarks/gpu.sh "$OUT/gpu.md"    # writes the table elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-benchmarks/RESULTS.md}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
MNIST=${MNIST:-benchmarks/data/mnist}
if [ ! -e ../shared/data/mnist ] && [ -e "$MNIST" ]; then
    mkdir -p ../shared/data && ln -s "$(realpath "$MNIST")" ../shared/data/mnist
fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/pipeline/test_device.py \
    tests/models/test_features.py::test_features_embed_on_the_gpu_with_device_cuda
timeout 400 "$PY" benchmarks/bench.py --cases 2,3,5 --device cuda --out "$OUT" --timeout 180
