#!/usr/bin/env bash
# One command on a CUDA machine (issue 9): the parity suite's torch-side tests with the fast paths
# on CUDA (parity_tests/test_fast_paths.py runs its budgets with device cuda there, and the
# CUDA-only tests of bf16/fp16 generators and discriminators and of bf16 / fp16 / compiled
# training), then bench/bench_fast.py and bench/bench_train.py on CUDA (every mode incl. fp16;
# tf_reference only if TensorFlow is importable there).
#
#   bash bench/gpu_check.sh [OUT_DIR]          # PY=python3 by default; under 9 min on one H200
#
# Writes OUT_DIR/{device.txt,pytest.txt,bench_fast.*,bench_train.*}; exit 1 if a step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
$PY -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported())' 2>&1 | tee "$OUT/device.txt" || exit 1
rc=0
timeout 220 $PY -m pytest -q -p no:cacheprovider -m "not tf" parity_tests/test_fast_paths.py \
    parity_tests/test_torch_port_unit.py parity_tests/test_activation_fixtures.py \
    parity_tests/test_train_precision.py::test_cuda_training_fast_paths_follow_fp32 2>&1 | tee "$OUT/pytest.txt" || rc=1
SKIP_TF=$($PY -c 'import tensorflow' >/dev/null 2>&1 && echo "" || echo "--skip_tf")
timeout 150 $PY bench/bench_fast.py --device cuda --iters 20 $SKIP_TF --json "$OUT/bench_fast.json" 2>&1 \
    | tee "$OUT/bench_fast.txt" || rc=1
timeout 200 $PY bench/bench_train.py --device cuda --iters 5 $SKIP_TF --json "$OUT/bench_train.json" 2>&1 \
    | grep -v "^Epoch" | tee "$OUT/bench_train.txt" || rc=1
exit $rc
