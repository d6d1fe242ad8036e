#!/usr/bin/env bash
# One prepared command on a CUDA machine (issue 17; reference: one H200, torch 2.11 + CUDA 13, no
# TensorFlow): every CUDA-only test, then the training benchmarks and the drift evidence, each
# step under its own timeout, the whole run within BUDGET seconds (default 480 = 8 min): a step
# only starts with the time it may take, steps in order of importance.
#
#   bash bench/gpu_check.sh [OUT_DIR]          # PY=python3 by default
#
# Writes at most 8 files into OUT_DIR (what a lent machine sends back): summary.txt (one line per
# step: exit code, seconds), tests.log, bench_train.log (light, full and compiled), drift.log,
# results.json (the benchmarks' and the drift script's JSON), infer.log, plus at most 2 files of
# the inference side's own (bench/gpu_check_infer.sh). Exit 1 if a step failed or was skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${1:-${OUT:-gpu_check_out}}
BUDGET=${BUDGET:-480}
mkdir -p "$OUT"
WORK=$(mktemp -d -t gpu_check_XXXXXX)            # JSON parts and the shared inductor cache (not sent back)
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CUBLAS_WORKSPACE_CONFIG=:4096:8              # the exact fp32 path's deterministic cuBLAS (set before CUDA starts)
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor"    # tests and drift compile the same 32-px graphs: one cold compile
START=$(date +%s)
rc=0
: > "$OUT/summary.txt"

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME CAP LOG CMD...: run CMD under `timeout min(CAP, time left)`, output appended to OUT/LOG
step() {
    local name=$1 cap=$2 log=$3; shift 3
    local remain; remain=$(left)
    local limit=$(( cap < remain ? cap : remain ))
    if (( limit < 20 )); then
        echo "$name: skipped (${remain} s of the ${BUDGET} s budget left)" | tee -a "$OUT/summary.txt"
        rc=1
        return
    fi
    local t0; t0=$(date +%s)
    echo "=== $name (timeout ${limit} s)" >> "$OUT/$log"
    timeout "$limit" "$@" >> "$OUT/$log" 2>&1
    local code=$?
    echo "$name: exit $code, $(( $(date +%s) - t0 )) s$( (( code == 124 )) && echo ' (timed out)')" | tee -a "$OUT/summary.txt"
    (( code == 0 )) || rc=1
}

step device 30 tests.log $PY -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0), "bf16:", torch.cuda.is_bf16_supported())'
[[ $(tail -1 "$OUT/summary.txt") == "device: exit 0"* ]] || { cat "$OUT/tests.log"; exit 1; }

# 1. the training tests that need CUDA (marker cuda), and the CPU-side proofs most tied to the
#    torch version there (multi-tensor Adam == per-parameter Adam bit for bit; no read back on meta)
step train_tests 240 tests.log $PY -m pytest -q -p no:cacheprovider -rs --durations=15 \
    parity_tests/test_train_graphs.py parity_tests/test_train_precision.py \
    -m "cuda or not slow" -k "cuda or adam or read_nothing"

# 2. the training benchmark and its targets (light 256 px, batch 1; every precision, graphs on/off, Morph C)
step bench_train 200 bench_train.log $PY bench/bench_train.py --device cuda --json "$WORK/bench_train.json"

# 3. the inference side of issue 17 (test phase, Morph translate / interpolate, ONNX, bench_fast):
#    ---- INFERENCE STEPS: bench/gpu_check_infer.sh OUT (written on the `infer` branch); its output
#    ---- goes to OUT/infer.log, it may write at most 2 more files into OUT, and it gets the seconds
#    ---- it may use in GPU_CHECK_SECONDS_LEFT
if [[ -f bench/gpu_check_infer.sh ]]; then
    export GPU_CHECK_SECONDS_LEFT; GPU_CHECK_SECONDS_LEFT=$(( $(left) - 150 ))   # keep 150 s for steps 4-6
    step inference $(( GPU_CHECK_SECONDS_LEFT > 20 ? GPU_CHECK_SECONDS_LEFT : 20 )) infer.log bash bench/gpu_check_infer.sh "$OUT"
else   # until that script exists: the inference fast-path tests with device cuda (as before issue 17)
    step inference_tests 100 infer.log $PY -m pytest -q -p no:cacheprovider -m "not tf" parity_tests/test_fast_paths.py
fi

# 4. why compiled fp32 drifts on CUDA: run-to-run spread, deterministic mode, a 1-ulp control,
#    compile, graphs, bf16 / fp16 / tf32, and one iteration's state per path
step drift 150 drift.log $PY bench/train_drift.py --json "$WORK/drift.json"

# 5. the full model (light False) beside the light one
step bench_train_full 90 bench_train.log $PY bench/bench_train.py --device cuda --light False \
    --modes fp32+graphs,tf32+graphs,bf16+graphs,fp16+graphs --json "$WORK/bench_train_full.json"

# 6. compiled bf16 with graphs (a cold inductor compile of the 256-px graphs: last, if time is left)
step bench_train_compile 150 bench_train.log $PY bench/bench_train.py --device cuda --modes bf16+compile+graphs \
    --pipelined 10 --json "$WORK/bench_train_compile.json"

$PY - "$WORK" "$OUT/results.json" <<'EOF'
import glob, json, os, sys
work, out = sys.argv[1], sys.argv[2]
parts = {os.path.basename(p)[:-5]: json.load(open(p)) for p in sorted(glob.glob(os.path.join(work, "*.json")))}
json.dump(parts, open(out, "w"), indent=1, default=str)
EOF
echo "total: $(( $(date +%s) - START )) s of ${BUDGET} s; exit $rc" | tee -a "$OUT/summary.txt"
exit $rc
