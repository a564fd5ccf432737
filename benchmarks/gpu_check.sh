#!/usr/bin/env bash
# One-shot check of the kernels on a GPU machine (written for an NVIDIA H200, jax 0.11.x),
# in order of priority, each stage under its own time limit (about 13 minutes in all):
#   1. the kernel tests natively: forward and backward kernels of both scans, decode, the
#      reference forms and the lowering checks (the interpret-mode subclasses are deselected;
#      `-m "slow or not slow"` includes the full length x group x dtype grid),
#   2. the models through implementation="pallas" against "xla" (native kernels on a GPU),
#   3. `python -m benchmarks.scan --preset gpu --dtype bfloat16`: the scans at L = 4096 and
#      16 384 (fraction of the copy bandwidth measured in the same run, of peak FLOP/s),
#      decode latency to context 131 072, and the training step of mamba2-130m and
#      mamba-130m with "auto" (Pallas) against "xla",
#   4. the same scans in float32 (HIGHEST-precision dots),
#   5. `--autotune`: block configurations of every kernel against the defaults.
# Targets (issue 11): scans at L >= 4096 and decode at context >= 8192 reach >= 50% of the
# copy bandwidth; the "auto" training step of mamba2-130m is faster than "xla".
# Results go to $OUT (default results/gpu_check). Run from anywhere: bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu_check}
mkdir -p "$OUT"
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}  # tests/conftest.py defaults to cpu otherwise
export PYTHONPATH=${PYTHONPATH:-$PWD}
{
  python -c "import jax, sys; print(sys.version); print(jax.__version__, jax.devices())"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv
} 2>&1 | tee "$OUT/env.txt"

stage() {  # stage NAME SECONDS COMMAND...: runs COMMAND with a limit, logs to $OUT/NAME.txt
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*" | tee "$OUT/$name.txt"
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$name.txt"
  echo "$name exit status: ${PIPESTATUS[0]}" | tee -a "$OUT/$name.txt"
}

stage kernel_tests 240 python -m pytest -q -p no:cacheprovider -m "slow or not slow" \
  tests/test_kernels_scan.py tests/test_kernels_decode.py tests/test_kernels_reference.py \
  tests/test_lowering.py -k "not Interpret" -x --durations=15
stage model_tests 120 python -m pytest -q -p no:cacheprovider tests/test_model_kernels.py
stage benchmark_bf16 240 python -m benchmarks.scan --preset gpu --dtype bfloat16 \
  --sections model,decode,train --json "$OUT/scan_bf16.json" --plot "$OUT/scan_bf16.png"
stage benchmark_f32 120 python -m benchmarks.scan --preset gpu --dtype float32 \
  --sections scan --json "$OUT/scan_f32.json"
stage autotune 150 python -m benchmarks.scan --preset gpu --dtype bfloat16 --sections "" \
  --autotune --autotune-seconds 110 --json "$OUT/autotune.json"
