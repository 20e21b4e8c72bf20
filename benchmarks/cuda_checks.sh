#!/usr/bin/env bash
# The DeepDPM issue's CUDA checks, for a machine with a GPU (run from the repository root
# with bnpdeep importable): the DeepDPM tests with device "auto" (CUDA there), the
# N=100,000 speed section and the paper's embeddings with DeepDPM on CUDA.  The records
# land in benchmarks/results/ as deepdpm_cuda.json and
# accuracy_deepdpm_mnist_umap-fashion_umap_cuda.json; logs go to $OUT (default
# cuda_checks/).  Each step has a time limit so that a slow one does not eat the rest.
set -u
out=${OUT:-cuda_checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" >> "$out/gpu.txt"
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/inference/test_deepdpm.py \
    > "$out/tests.log" 2>&1
timeout 200 python3 benchmarks/run_benchmarks.py deepdpm --device cuda > "$out/deepdpm.log" 2>&1
timeout 200 python3 benchmarks/run_benchmarks.py accuracy --sets mnist_umap fashion_umap \
    --methods deepdpm --device cuda > "$out/paper.log" 2>&1
tail -n 3 "$out"/*.log
