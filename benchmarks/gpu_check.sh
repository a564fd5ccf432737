#!/usr/bin/env bash
# One-shot check of the kernels on a GPU machine (written for an NVIDIA H200, jax 0.11.x):
#   1. the kernel tests natively (the TestScanKernel / TestDecodeKernel classes, incl. slow
#      sweeps; the interpret-mode subclasses are deselected),
#   2. the models through implementation="pallas" vs "xla" (interpret=True there is still
#      checked: it runs the GPU form through the interpreter),
#   3. `python -m benchmarks.scan --preset gpu` (copy bandwidth, scan throughput, decode
#      latency, achieved fraction of copy bandwidth) as a table, JSON and PNG.
# Results go to $OUT (default results/gpu_check). Run from anywhere: bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu_check}
mkdir -p "$OUT"
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}  # tests/conftest.py defaults to cpu otherwise
{
  python -c "import jax, sys; print(sys.version); print(jax.__version__, jax.devices())"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv
} 2>&1 | tee "$OUT/env.txt"
timeout 360 python -m pytest -q -p no:cacheprovider -m "slow or not slow" \
  tests/test_kernels_scan.py tests/test_kernels_decode.py tests/test_kernels_reference.py \
  -k "not Interpret" \
  --durations=10 2>&1 | tee "$OUT/kernel_tests.txt"
echo "kernel tests exit status: ${PIPESTATUS[0]}" | tee -a "$OUT/kernel_tests.txt"
timeout 200 python -m pytest -q -p no:cacheprovider tests/test_model_kernels.py 2>&1 \
  | tee "$OUT/model_tests.txt"
timeout 420 python -m benchmarks.scan --preset gpu --json "$OUT/scan_gpu.json" \
  --plot "$OUT/scan_gpu.png" 2>&1 | tee "$OUT/benchmark.txt"
echo "benchmark exit status: ${PIPESTATUS[0]}" | tee -a "$OUT/benchmark.txt"
