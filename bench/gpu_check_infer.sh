#!/usr/bin/env bash
# The test phase on CUDA (issue 17, item 2), in one call on a CUDA machine; bench/gpu_check.sh
# calls it. Each step runs under its own timeout, so a slow step cannot take the others' time,
# and the benchmark writes its JSON after every measurement, so a step cut short keeps what it
# measured. Three files in OUT_DIR:
#   infer_tests.log   the CUDA tests of parity_tests/test_fast_infer.py (-m cuda)
#   infer_bench.log   bench/bench_fast.py --device cuda (every fast path at batch 1/16/64, the
#                     end-to-end test phase, Morph, the full model, the targets beside the
#                     measured values), then the ONNX Runtime provider check and an fp16 export
#                     verified on the CPU
#   infer.json        the benchmark's results, plus each step's exit code and seconds ("steps")
#
#   bash bench/gpu_check_infer.sh OUT_DIR     # PY=python3; about 3 minutes with the default timeouts
#
# Timeouts (seconds, environment): INFER_TEST_S=60 INFER_BENCH_S=110 INFER_ONNX_S=30; INFER_SECTIONS
# (default: every section of bench/infer_matrix.py, in its order of importance). Exit 1 if a step failed.
# Its three files (and infer.json.tmp) must not exist in OUT_DIR (an earlier run's, or yours: never
# truncated or replaced, nor an earlier infer.json taken for this run's), and no other run may be
# writing OUT_DIR (flock on the folder; bench/gpu_check.sh's own lock, inherited, counts as this
# run's): one `error:` line, exit 2, before any step.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${1:?usage: bash bench/gpu_check_infer.sh OUT_DIR}
refuse() { echo "gpu_check_infer.sh: error: OUT_DIR '$OUT' $*" >&2; exit 2; }
[[ -e $OUT && ! -d $OUT ]] && refuse "is a file, not a folder"
mkdir -p "$OUT" 2>/dev/null && [[ -w $OUT ]] || refuse "cannot be made or written"
if ! [[ -e /dev/fd/9 && /dev/fd/9 -ef $OUT ]]; then  # not under bench/gpu_check.sh holding this OUT_DIR
    exec 9<"$OUT" || refuse "cannot be opened"
fi
if command -v flock >/dev/null && ! flock -n 9; then
    refuse "is being written by another run: wait for it to end, or give this one another OUT_DIR"
fi
taken=""
for n in infer_tests.log infer_bench.log infer.json infer.json.tmp; do
    [[ -e $OUT/$n || -L $OUT/$n ]] && taken="$taken $n"
done
[[ -n $taken ]] && refuse "already holds$taken (an earlier run's results, or your own files): they are never \
overwritten; give a new OUT_DIR, or move them away"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
TESTS_LOG="$OUT/infer_tests.log" BENCH_LOG="$OUT/infer_bench.log" JSON="$OUT/infer.json"
STEPS=""
rc=0

# INFER_BUDGET_S (set by bench/gpu_check.sh): the whole script's share; each step is cut to what
# is left of it, so the script ends (and writes its summary) before its caller's timeout
END=$(( SECONDS + ${INFER_BUDGET_S:-100000} ))

step() {  # step NAME TIMEOUT LOG COMMAND...: run under timeout, append to LOG, record rc and seconds
    local name=$1 limit=$2 log=$3
    shift 3
    local t0=$SECONDS code
    (( END - SECONDS < limit )) && limit=$(( END - SECONDS ))
    if (( limit < 10 )); then
        echo "=== $name: skipped (${limit} s of the budget left)" >>"$log"
        STEPS="$STEPS$name 125 0;"
        return 125
    fi
    echo "=== $name (timeout ${limit}s): $*" >>"$log"
    timeout -s INT -k 10 "$limit" "$@" >>"$log" 2>&1  # INT: pytest prints what failed so far
    code=$?
    echo "=== $name: exit $code after $((SECONDS - t0)) s" >>"$log"
    STEPS="$STEPS$name $code $((SECONDS - t0));"
    return $code
}

: >"$TESTS_LOG"
: >"$BENCH_LOG"
step tests "${INFER_TEST_S:-60}" "$TESTS_LOG" $PY -m pytest -q -p no:cacheprovider --full -m cuda \
    parity_tests/test_fast_infer.py || rc=1
step bench "${INFER_BENCH_S:-110}" "$BENCH_LOG" $PY bench/bench_fast.py --device cuda --json "$JSON" \
    ${INFER_SECTIONS:+--sections "$INFER_SECTIONS"} || rc=1
# ONNX Runtime on CUDA: the reference machine's onnxruntime is the CPU-only wheel; this says so
# (exit 2 expected there) rather than timing the CPU in its place
step onnx_cuda_provider 20 "$BENCH_LOG" $PY bench/bench_onnx.py --provider cuda --skip_tf
# the fp16 export (meant for GPUs) built and verified with this machine's onnx / onnxruntime, on its CPU
step onnx_fp16_export "${INFER_ONNX_S:-30}" "$BENCH_LOG" $PY bench/bench_onnx.py --img_size 64 --ch 64 --fp16 \
    --runtimes onnxruntime_fp16,torch_port --skip_tf --iters 2 --threads 8 || rc=1

# the steps' exit codes and seconds into infer.json, strict JSON (bench/merge_results.py)
$PY bench/merge_results.py infer "$JSON" "$STEPS" "$TESTS_LOG"
grep -A12 "^| target" "$BENCH_LOG" | head -14
exit $rc
