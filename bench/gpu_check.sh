#!/usr/bin/env bash
# One prepared command on a CUDA machine (issue 17; lent: one H100, ~80 GB, or one H200, 141 GB;
# torch 2.11 + CUDA 13, no TensorFlow; issue 17's targets were set on an H200): every CUDA-only test, then the training benchmarks and the drift evidence, each
# step under its own timeout, the whole run within BUDGET seconds (default 480 = 8 min): a step
# only starts with the time it may take, steps in order of importance.
#
#   bash bench/gpu_check.sh [OUT_DIR]          # PY=python3 by default
#   STEPS="drift bench_train_full bench_train_compile" BUDGET=400 bash bench/gpu_check.sh OUT2
#                                              # a second call: only the named steps
#   STEPS=cuda_tests_full BUDGET=420 bash bench/gpu_check.sh OUT3   # the full tier's CUDA tests
#
# Writes at most 8 files into OUT_DIR (what a lent machine sends back): summary.txt (the GPU as
# torch names it; one line per step: exit code, seconds), tests.log, bench_train.log (light, full
# and compiled), drift.log, results.json (the benchmarks' and the drift script's JSON), plus the inference side's 3
# (bench/gpu_check_infer.sh: infer_tests.log, infer_bench.log, infer.json; its console lines go to
# tests.log). Exit 1 if a step failed or was skipped for time.
# OUT_DIR is this run's alone: one that already holds a file by one of those names (an earlier
# run's results, or your own) is refused - nothing is truncated, appended to or replaced - and so
# is an OUT_DIR another gpu_check run is writing (flock on the folder, let go when this script
# ends in any way); one `error:` line, exit 2, before any step. Give each call its own OUT_DIR.
#
# Expected on an H100 / H200 (estimates: nothing here has run on a GPU yet): tests ~2 min, training
# benchmark ~2 min, inference ~3 min (its own timeouts), drift ~1 min; the full model and the
# compiled benchmark run only if the budget leaves room (summary.txt says what was skipped: run
# them in a second call with STEPS, as above, when the lease allows).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${1:-${OUT:-gpu_check_out}}
BUDGET=${BUDGET:-480}
# the names written into OUT_DIR (and the temp files of the two JSON files)
OUT_NAMES="summary.txt tests.log bench_train.log drift.log results.json results.json.tmp infer_tests.log
           infer_bench.log infer.json infer.json.tmp"
refuse() { echo "gpu_check.sh: error: OUT_DIR '$OUT' $*" >&2; exit 2; }
[[ -e $OUT && ! -d $OUT ]] && refuse "is a file, not a folder"
mkdir -p "$OUT" 2>/dev/null && [[ -w $OUT ]] || refuse "cannot be made or written"
exec 9<"$OUT" || refuse "cannot be opened"
if command -v flock >/dev/null && ! flock -n 9; then  # held to the end (the steps inherit it)
    refuse "is being written by another gpu_check run: wait for it to end, or give this one another OUT_DIR"
fi
taken=""
for n in $OUT_NAMES; do [[ -e $OUT/$n || -L $OUT/$n ]] && taken="$taken $n"; done
[[ -n $taken ]] && refuse "already holds$taken (an earlier run's results, or your own files): they are never \
overwritten or appended to; give a new OUT_DIR, or move them away"
# JSON parts and the shared inductor cache (not sent back). Held for the run's life by flock on
# WORK/.owner.lock (the steps inherit it), renamed to that name only once locked: a killed run's
# WORK (its lock free) is removed by the next run, said in one line (bench/work_folders.py), never
# a running one's
$PY bench/work_folders.py sweep gpu_check_
WORK=$(mktemp -d -t gpu_check_XXXXXX)
trap 'rm -rf "$WORK"' EXIT
if command -v flock >/dev/null; then
    exec 8>"$WORK/.owner.lock.part" && flock -n 8 \
        && printf '{"pid": %d, "started": "%s", "command": "bench/gpu_check.sh"}' $$ "$(date -Iseconds)" >&8 \
        && mv "$WORK/.owner.lock.part" "$WORK/.owner.lock"
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CUBLAS_WORKSPACE_CONFIG=:4096:8              # the exact fp32 path's deterministic cuBLAS (set before CUDA starts)
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor"    # tests and drift compile the same 32-px graphs: one cold compile
START=$(date +%s)
rc=0
: > "$OUT/summary.txt"

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME CAP LOG CMD...: run CMD under `timeout min(CAP, time left)`, output appended to OUT/LOG
STEPS=${STEPS:-}
step() {
    local name=$1 cap=$2 log=$3; shift 3
    if [[ -n "$STEPS" && " $STEPS " != *" $name "* && $name != device ]]; then return; fi
    local remain; remain=$(left)
    local limit=$(( cap < remain ? cap : remain ))
    if (( limit < 20 )); then
        echo "$name: skipped (${remain} s of the ${BUDGET} s budget left)" | tee -a "$OUT/summary.txt"
        rc=1
        return
    fi
    local t0; t0=$(date +%s)
    echo "=== $name (timeout ${limit} s)" >> "$OUT/$log"
    # SIGINT first: pytest then prints the failures so far and its summary line (SIGTERM kills it
    # silently); KILL 15 s later if it is still running
    timeout -s INT -k 15 "$limit" "$@" >> "$OUT/$log" 2>&1
    local code=$?
    echo "$name: exit $code, $(( $(date +%s) - t0 )) s$( (( code == 124 || code == 137 )) && echo ' (timed out)')" | tee -a "$OUT/summary.txt"
    (( code == 0 )) || rc=1
    merge_results  # after every step: a run cut short still returns the JSON measured so far
}

# results.json: every JSON part written so far (a part cut mid-write is named, not fatal), as strict
# JSON (a NaN / inf as null, named in `non_finite`: bench/merge_results.py)
merge_results() {
    $PY bench/merge_results.py parts "$WORK" "$OUT/results.json"
}

step device 30 tests.log $PY -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0), "bf16:", torch.cuda.is_bf16_supported(), "GiB:", round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))'
[[ $(tail -1 "$OUT/summary.txt") == "device: exit 0"* ]] || { cat "$OUT/tests.log"; exit 1; }
echo "gpu: $(tail -1 "$OUT/tests.log")" >> "$OUT/summary.txt"   # the GPU measured (torch's name for it)

# 1. every test that needs CUDA (marker cuda; the inference ones run in step 3), the quick tier's
#    (the 50-iteration float64 free runs on CUDA are full tier: STEPS=cuda_tests_full), then the
#    CPU-side proofs most tied to the torch version there (multi-tensor Adam == per-parameter Adam
#    bit for bit; no read back on meta)
#    The CUDA training-precision test first (issue 17 found it failing; the others compile cold and
#    a timeout cuts the last file), then the rest
step cuda_precision 90 tests.log $PY -m pytest -q -p no:cacheprovider --full -rs --durations=5 -m "cuda and not slow" \
    parity_tests/test_train_precision.py
step cuda_tests 170 tests.log $PY -m pytest -q -p no:cacheprovider --full -rs --durations=15 -m "cuda and not slow" \
    --ignore=parity_tests/test_fast_infer.py --ignore=parity_tests/test_train_precision.py parity_tests
step cpu_proofs 40 tests.log $PY -m pytest -q -p no:cacheprovider parity_tests/test_train_graphs.py -k "adam or read_nothing"

# 2. the training benchmark and its targets (light 256 px, batch 1; every precision, graphs on/off, Morph C)
step bench_train 140 bench_train.log $PY bench/bench_train.py --device cuda --json "$WORK/bench_train.json"

# 3. the inference side of issue 17 (test phase, Morph translate / interpolate, ONNX, bench_fast):
#    ---- INFERENCE STEPS: bench/gpu_check_infer.sh OUT (the `infer` branch): its 3 files go into OUT,
#    ---- its console lines into tests.log; it gets what is left but 90 s (kept for the drift step),
#    ---- and is told its share (INFER_BUDGET_S: its own steps fit inside it, its summary is written)
if [[ -f bench/gpu_check_infer.sh ]]; then
    share=$(( $(left) - 90 ))
    if (( share >= 30 )); then
        INFER_BUDGET_S=$(( share - 20 )) step inference "$share" tests.log bash bench/gpu_check_infer.sh "$OUT"
    else
        echo "inference: skipped (${share} s left for it)" | tee -a "$OUT/summary.txt"
        rc=1
    fi
else   # without that script: the inference fast-path tests with device cuda (as before issue 17)
    step inference_tests 100 tests.log $PY -m pytest -q -p no:cacheprovider -m "not tf" parity_tests/test_fast_paths.py
fi

# 4. why compiled fp32 drifts on CUDA: run-to-run spread, deterministic mode, a 1-ulp control,
#    compile, graphs, bf16 / fp16 / tf32, and one iteration's state per path
step drift 90 drift.log $PY bench/train_drift.py --json "$WORK/drift.json"

# 5. the full model (light False) beside the light one
step bench_train_full 90 bench_train.log $PY bench/bench_train.py --device cuda --light False \
    --modes fp32+graphs,tf32+graphs,bf16+graphs,fp16+graphs --json "$WORK/bench_train_full.json"

# 6. compiled bf16 with graphs (a cold inductor compile of the 256-px graphs: last, if time is left)
step bench_train_compile 150 bench_train.log $PY bench/bench_train.py --device cuda --modes bf16+compile+graphs \
    --pipelined 10 --json "$WORK/bench_train_compile.json"

# 7. the full tier's CUDA tests (float64 free runs of 50 iterations, CUDA port vs CPU port): on request only
if [[ " $STEPS " == *" cuda_tests_full "* ]]; then
    step cuda_tests_full 400 tests.log $PY -m pytest -q -p no:cacheprovider --full -rs -m "cuda and slow" parity_tests
fi

merge_results
echo "total: $(( $(date +%s) - START )) s of ${BUDGET} s; exit $rc" | tee -a "$OUT/summary.txt"
exit $rc
