"""The one call of `bash bench/gpu_check.sh OUT` on a lent GPU, checked without one: what would
make it fail or waste its minutes. The benchmarks' CUDA paths run here with `torch.cuda` stubbed
(no kernel runs); their measuring code is exercised by the CPU smoke runs elsewhere
(test_fast_infer.py's --matrix run, the README's CPU runs of bench_train / train_drift)."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import types

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


@pytest.fixture
def bench_modules(monkeypatch):
    """The bench folder importable (its scripts import `workers`, `infer_matrix` from it)."""
    monkeypatch.syspath_prepend(BENCH)
    import importlib

    return lambda name: importlib.import_module(name)


H100 = "NVIDIA H100 80GB HBM3"


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch told it has one CUDA device (an H100), the process's CUDA math flags restored after
    (pick_device sets them)."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: H100)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: types.SimpleNamespace(
        name=H100, major=9, minor=0, total_memory=85_045_231_616))
    yield
    cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = saved


FAKE_TRAIN_WORKER = textwrap.dedent("""
    import json, sys
    log = open(sys.argv[sys.argv.index("--request_log") + 1], "a")
    log.write("start\\n")  # a new worker process
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        what = line.strip()
        log.write(what + "\\n")
        log.flush()
        if what == "quit":
            break
        if what == "build:fp32+graphs":  # this mode dies (as an out-of-memory would)
            sys.exit(1)
        if what.startswith("train:"):
            out = {"seconds": 0.05, "host_seconds": 0.01}
        elif what == "floor":
            out = {"flops": 1e9, "peak": 1e12, "peak_bf16": 2e12}
        elif what.startswith("release:"):
            out = {"released": what[8:], "peak_allocated_gib": 1.25, "peak_reserved_gib": 1.5}
        else:
            out = {"seconds": 0.04, "built": what}
        print(json.dumps(out), flush=True)
""")


def test_bench_train_goes_on_after_a_worker_dies(bench_modules, fake_gpu, monkeypatch, tmp_path, capsys):
    """A worker that dies on the GPU (an out-of-memory, a crash) costs that mode's row only: a new
    worker runs the group's next modes, the other groups are measured, the summary and the JSON
    are written. (Worker.close after the death wrote "quit" into the pipe `_read` had closed:
    ValueError, which ended the whole benchmark.) And the GPU holds one mode at a time: each is
    built, timed and released before the next is built (a group's modes at once, the full
    model's four graphed modes, would not fit an H100's memory by our estimate)."""
    bench_train = bench_modules("bench_train")
    from workers import Worker
    script, log = tmp_path / "fake_worker.py", tmp_path / "requests.log"
    script.write_text(FAKE_TRAIN_WORKER)
    monkeypatch.setattr(bench_train, "_Worker", lambda name, args, env=None: Worker(
        str(script), name, list(args) + ["--request_log", str(log)], env))
    out = tmp_path / "r.json"
    written, write = [], bench_train._write_json
    monkeypatch.setattr(bench_train, "_write_json", lambda path, cfg, device, rows, *more: written.append(set(rows)) or
                        write(path, cfg, device, rows, *more))
    assert bench_train.main(["--device", "cuda", "--modes", "fp32,fp32+graphs,bf16,morph-fp32,morph-bf16+graphs",
                             "--iters", "2", "--warmup", "1", "--pipelined", "3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fp32+graphs" in printed and "failed: torch_port worker exited (code 1)" in printed, printed
    data = json.loads(out.read_text())
    assert set(data["rows"]) == {"fp32", "bf16", "morph-fp32", "morph-bf16+graphs"}, data["rows"]
    assert set(data["failed"]) == {"fp32+graphs"} and data["rows"]["bf16"]["peak_reserved_gib"] == 1.5, data
    assert data["floor"]["flops"] == 1e9 and "targets (issue 17" in printed
    assert written[:3] == [{"fp32"}, {"fp32"}, {"fp32", "bf16"}], written  # the JSON after every mode (a timeout)
    # the GPU measured is named as torch names it (an H100 here), beside targets set on an H200
    assert data["measured_on"]["gpu"] == H100 and data["measured_on"]["memory_gib"] == 79.2, data["measured_on"]
    assert f"set on an H200 for light 256 px batch 1) against {H100}" in printed, printed
    assert f"measured on {H100}; the targets were set on an H200" in printed, printed
    built = None
    for what in log.read_text().split():
        kind, _, mode = what.partition(":")
        if kind == "start":  # a new process: the one before has gone with its memory
            built = None
        elif kind == "build":
            assert built is None, f"{mode} built while {built} was not released"
            built = mode
        elif kind in ("train", "pipe"):
            assert mode.split(":")[0] == built, (what, built)
        elif kind == "release":
            assert mode == built
            built = None


def test_train_modes_are_built_at_once_on_a_cpu_and_on_demand_on_cuda(bench_modules):
    bench_train = bench_modules("bench_train")
    made = []
    lazy = bench_train.TrainModes(["fp32", "bf16"], lambda mode: made.append(mode) or mode)
    assert made == [] and list(lazy) == ["fp32", "bf16"] and "bf16" in lazy and "fp16" not in lazy
    assert lazy["bf16"] == "bf16" and lazy["bf16"] == "bf16" and made == ["bf16"]
    lazy.release("bf16")
    assert lazy.built() == [] and lazy["bf16"] == "bf16" and made == ["bf16", "bf16"]
    with pytest.raises(KeyError):
        lazy["fp16"]


def test_bench_train_worker_builds_and_releases_on_request(bench_modules):
    """The real worker (a CPU, tiny model): build / train / release requests, as the CUDA run sends
    them, each answered with one JSON line."""
    from workers import Worker
    w = Worker(os.path.join(BENCH, "bench_train.py"), "torch_port",
               ["--img_size", "32", "--ch", "2", "--n_dis", "4", "--device", "cpu", "--modes", "fp32,bf16"],
               dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    try:
        assert w.ask("build:bf16") == {"built": "bf16"}
        assert w.time("train:bf16") > 0
        assert w.ask("release:bf16") == {"released": "bf16"}
        assert w.time("train:bf16") > 0  # built again when asked for
    finally:
        w.close()


def test_inference_targets_name_the_gpu_measured(bench_modules, fake_gpu):
    """bench_fast.py's table of issue 17's targets (set on an H200) names the GPU measured, as torch
    names it, and says so where it is another card; the JSON's meta names it too."""
    matrix = bench_modules("infer_matrix")
    from workers import measured_on
    info = measured_on(torch.device("cuda"))
    assert info["gpu"] == H100 and info["capability"] == "9.0"
    res = matrix.Results(None, {"gpu": info["gpu"]})
    lines = matrix.targets(res)
    assert f"| target (issue 17, set on an H200, 256 px) | measured on {H100} (best variant) |" in lines[1]
    assert lines[-1] == f"(measured on {H100}; the targets were set on an H200 (issue 17): a verdict here is this " \
                        f"GPU's, not the H200's)"
    res = matrix.Results(None, {"gpu": "NVIDIA H200"})
    assert "measured on NVIDIA H200 (best variant)" in matrix.targets(res)[1]
    assert not matrix.targets(res)[-1].startswith("(measured on")


def test_a_dead_workers_close_returns(bench_modules, tmp_path):
    from workers import Worker
    script = tmp_path / "dies.py"
    script.write_text("import json, sys\nprint(json.dumps({'ready': True}), flush=True)\nsys.stdin.readline()\n"
                      "sys.exit(3)\n")
    w = Worker(str(script), "w", [])
    with pytest.raises(RuntimeError, match="w worker exited"):
        w.ask("anything")
    w.close()
    w.close()  # twice: nothing left to do
    assert w.proc.returncode == 3 and w.proc.stdin.closed and w.proc.stdout.closed


# -- a NaN / inf measurement stays strict JSON from the worker to the merged results --------------------

def _refuse_bare_constant(name):
    raise ValueError(f"not strict JSON: {name}")


def _strict_load(path):
    """A file as a strict parser reads it (jq, JavaScript, serde_json): NaN / Infinity refused."""
    with open(path) as fh:
        return json.loads(fh.read(), parse_constant=_refuse_bare_constant)


def _script_part(script: str, first: str, last: str) -> str:
    """The lines of bench/`script` from the one matching `first` to the one matching `last`."""
    with open(os.path.join(ROOT, script)) as fh:
        lines = fh.read().splitlines()
    i = next(n for n, ln in enumerate(lines) if re.search(first, ln))
    j = next(n for n, ln in enumerate(lines) if n >= i and re.search(last, ln))
    return "\n".join(lines[i:j + 1])


NAN_TRAIN_WORKER = textwrap.dedent("""
    import math, sys
    sys.path.insert(0, sys.argv[sys.argv.index("--bench") + 1])
    from workers import reply  # the benchmarks' own answer line
    reply({"ready": True})
    for line in sys.stdin:
        what = line.strip()
        if what == "quit":
            break
        if what.startswith("pipe:"):  # a timing that failed
            reply({"seconds": math.nan})
        elif what.startswith("train:"):
            reply({"seconds": 0.05, "host_seconds": 0.01, "loss": math.inf})
        elif what == "floor":
            reply({"flops": 1e9, "peak": 1e12, "peak_bf16": 2e12})
        elif what.startswith("release:"):
            reply({"released": what[8:]})
        else:
            reply({"built": what})
""")


def test_a_nan_measurement_is_strict_json_from_worker_to_merged_results(bench_modules, fake_gpu, monkeypatch,
                                                                         tmp_path, capsys):
    """A worker's NaN timing or inf loss went to its parent as Python's bare `NaN` / `Infinity`,
    and gpu_check.sh / gpu_check_infer.sh merged their parts with json.dump: a part that held one
    (or its `non_finite` field, nested under the part's name where no reader looks) left
    results.json / infer.json either not strict JSON or with the value lost. Now the worker's line
    is strict JSON (workers.reply), the parent gets the NaN back (Worker), the benchmark's file is
    strict, and both scripts' merges (run here as the scripts run them) write strict JSON whose
    top `non_finite` field names each value where it is: strict_json.restore puts it back."""
    import math

    from ugatit_common import strict_json
    bench_train = bench_modules("bench_train")
    from workers import Worker, reply
    reply({"seconds": math.nan, "loss": -math.inf})  # the worker's line itself
    line = capsys.readouterr().out
    assert strict_json.restore(json.loads(line, parse_constant=_refuse_bare_constant)) is not None, line
    got = strict_json.restore(json.loads(line))
    assert math.isnan(got["seconds"]) and got["loss"] == -math.inf, line

    script = tmp_path / "nan_worker.py"
    script.write_text(NAN_TRAIN_WORKER)
    w = Worker(str(script), "torch_port", ["--bench", BENCH])
    try:  # the parent gets the numbers back, not None
        assert math.isnan(w.time("pipe:fp32:3")) and w.ask("train:fp32")["loss"] == math.inf
    finally:
        w.close()

    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    monkeypatch.setattr(bench_train, "_Worker", lambda name, args, env=None: Worker(
        str(script), name, list(args) + ["--bench", BENCH], env))
    assert bench_train.main(["--device", "cuda", "--modes", "fp32", "--iters", "1", "--warmup", "1",
                             "--pipelined", "3", "--json", str(work / "bench_train.json")]) == 0
    part = _strict_load(work / "bench_train.json")
    assert math.isnan(strict_json.restore(part)["rows"]["fp32"]["pipelined_seconds"]), part
    with open(work / "drift.json", "w") as fh:  # a part written with Python's bare NaN (not write_json)
        json.dump({"spread": [0.0, math.nan]}, fh)
    env = dict(os.environ, PY=sys.executable, WORK=str(work), OUT=str(out), PYTHONPATH=ROOT)
    merge = _script_part("bench/gpu_check.sh", r"^merge_results\(\) \{", r"^\}")
    p = subprocess.run(["bash", "-c", merge + "\nmerge_results"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    merged = strict_json.restore(_strict_load(out / "results.json"))
    assert math.isnan(merged["bench_train"]["rows"]["fp32"]["pipelined_seconds"]), merged
    assert math.isnan(merged["drift"]["spread"][1]) and merged["drift"]["spread"][0] == 0.0, merged

    # gpu_check_infer.sh: infer.json (the benchmark's, a NaN timing in it) with the steps added
    infer = out / "infer.json"
    with open(infer, "w") as fh:
        json.dump({"sections": {"fast": {"batch1": math.nan}}}, fh)
    (out / "infer_tests.log").write_text("3 passed in 1.00s\n")
    steps = _script_part("bench/gpu_check_infer.sh", r'"\$JSON" "\$STEPS" "\$TESTS_LOG"', r"^(EOF|\$PY .*TESTS_LOG\")$")
    p = subprocess.run(["bash", "-c", steps], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env=dict(env, JSON=str(infer), STEPS="tests 0 1;bench 124 110;",
                                TESTS_LOG=str(out / "infer_tests.log")))
    assert p.returncode == 0 and "tests: 3 passed in 1.00s" in p.stdout, (p.stdout, p.stderr)
    data = strict_json.restore(_strict_load(infer))
    assert math.isnan(data["sections"]["fast"]["batch1"]) and data["steps"]["bench"] == {"exit": 124,
                                                                                          "seconds": 110.0}, data


# -- every command line of the two scripts passes its script's checks, as on the GPU machine ----------

SCRIPTS = ("bench/gpu_check.sh", "bench/gpu_check_infer.sh")
_STEP_LINE = re.compile(r"^\s*(?:\w+=(?:\$\(\([^)]*\)\)|\S+)\s+)*step\s")


def script_steps(script: str, work: str) -> list[tuple[str, list[str]]]:
    """[(step name, command argv)] of every `step NAME CAP LOG COMMAND...` line of `script` (also
    the steps run only on request), each as bash expands it there: PY=python3, WORK / OUT under
    `work`, the environment's knobs (INFER_SECTIONS, the timeouts) at their defaults."""
    lines, heredoc = [], None
    with open(os.path.join(ROOT, script)) as f:
        text = f.read().replace("\\\n", " ")  # continuation lines joined
    for line in text.splitlines():
        if heredoc:  # a here-document's body is not shell
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        m = re.search(r"<<-?\s*'?(\w+)'?", line)
        if m:
            heredoc = m.group(1)
        if _STEP_LINE.match(line):
            lines.append(line.strip())
    assert lines, f"{script}: no step line found (has its form changed? update script_steps)"
    prog = "\n".join([
        "unset INFER_SECTIONS INFER_TEST_S INFER_BENCH_S INFER_ONNX_S INFER_BUDGET_S STEPS",
        f"PY=python3 WORK={shlex.quote(work)}/work OUT={shlex.quote(work)}/out share=400 rc=0",
        'TESTS_LOG="$OUT/infer_tests.log" BENCH_LOG="$OUT/infer_bench.log" JSON="$OUT/infer.json"',
        "step() { printf 'STEP\\0%s\\0' \"$1\"; shift 3; printf '%s\\0' \"$@\"; }", *lines])
    out = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    parts = out.stdout.split("\0")[:-1]
    steps, i = [], 0
    while i < len(parts):
        assert parts[i] == "STEP", parts[i:]
        j = parts.index("STEP", i + 1) if "STEP" in parts[i + 1:] else len(parts)
        steps.append((parts[i + 1], parts[i + 2:j]))
        i = j
    assert len(steps) == len(lines), (lines, steps)
    return steps


class Started(Exception):
    """The script reached its first piece of work: every check of its flags had passed."""


def _start(*args, **kwargs):
    raise Started(*args)


def _must_start(what: str, call) -> tuple:
    """`call()` must get as far as its first piece of work (Started); a refusal fails the test."""
    try:
        call()
    except Started as e:
        return e.args
    except (SystemExit, Exception) as e:  # noqa: BLE001 - a refusal, said with the command line
        pytest.fail(f"{what}: refused on a (simulated) CUDA machine: {type(e).__name__}: {e}")
    pytest.fail(f"{what}: returned without starting any work")


def _check_worker(what, module, name, args, monkeypatch):
    """A worker's own command line (`script --worker NAME ARGS`), up to its work."""
    monkeypatch.setattr(module, "worker", _start)
    _must_start(f"{what} -> its {name} worker ({' '.join(args)})", lambda: module.main(["--worker", name] + list(args)))


def check_bench_command(argv: list[str], load, monkeypatch) -> None:
    """bench/<script>.py ARGS as on the GPU machine, up to the first piece of work (a worker started,
    the first result written, the first measurement); the workers' command lines too."""
    script, args = os.path.basename(argv[0]), argv[1:]
    what = f"{script} {' '.join(args)}"
    if script == "bench_train.py":
        m = load("bench_train")
        monkeypatch.setattr(m, "_Worker", _start)
        name, worker_args = _must_start(what, lambda: m.main(args))[:2]
        _check_worker(what, m, name, worker_args, monkeypatch)
    elif script == "bench_fast.py":
        m, matrix = load("bench_fast"), load("infer_matrix")
        monkeypatch.setattr(m, "_Worker", _start)
        monkeypatch.setattr(matrix, "Results", _start)  # the matrix's first write, after its checks
        started = _must_start(what, lambda: m.main(args))
        if started and started[0] in ("torch_port", "tf_reference"):
            _check_worker(what, m, started[0], started[1], monkeypatch)
    elif script == "bench_onnx.py":
        m = load("bench_onnx")
        real = m.check_provider
        # the GPU machine's onnxruntime is the CPU-only wheel: --provider cuda stops there by design
        # (the step expects exit 2); every flag before it must pass
        monkeypatch.setattr(m, "check_provider", lambda p: _start("provider", p) if p == "cuda" else real(p))
        monkeypatch.setattr(m, "_Worker", _start)
        started = _must_start(what, lambda: m.main(args))
        if started[0] != "provider":
            _check_worker(what, m, started[0], started[1], monkeypatch)
    elif script == "train_drift.py":
        m = load("train_drift")
        monkeypatch.setattr(m, "one_iteration_state", _start)
        _must_start(what, lambda: m.main(args))
    else:
        pytest.fail(f"{what}: a benchmark this test does not know: add its check to check_bench_command")


def _gpu_commands(tmp_path):
    for folder in ("work", "out"):  # the scripts make both before any step (mktemp -d, mkdir -p)
        (tmp_path / folder).mkdir(exist_ok=True)
    cmds = []
    for script in SCRIPTS:
        for name, argv in script_steps(script, str(tmp_path)):
            cmds.append((script, name, argv))
    return cmds


def test_every_gpu_check_command_line_passes_its_checks_on_cuda(tmp_path, bench_modules, fake_gpu, monkeypatch):
    """Each benchmark command line of bench/gpu_check.sh and bench/gpu_check_infer.sh, as bash
    expands it there, gets past every check of its flags and config to its first piece of work,
    on a machine with one CUDA device (simulated) and no TensorFlow (as the GPU machine); so does
    each worker command line it starts. A refusal there would cost the lent GPU a step."""
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # not installed on the GPU machine
    monkeypatch.chdir(ROOT)
    seen = set()
    for script, name, argv in _gpu_commands(tmp_path):
        if argv[:2] == ["python3", "-c"]:
            compile(argv[2], f"{script}:{name}", "exec")
        elif argv[:3] == ["python3", "-m", "pytest"]:
            continue  # the next test
        elif argv[:1] == ["bash"]:
            assert argv[1] in SCRIPTS, f"{script}: step {name} runs {argv[1]}, which this test does not read"
        elif argv[:1] == ["python3"] and argv[1].startswith("bench/") and argv[1].endswith(".py"):
            check_bench_command(argv[1:], bench_modules, monkeypatch)
            seen.add(os.path.basename(argv[1]))
        else:
            pytest.fail(f"{script}: step {name} runs {argv}: a kind of command this test does not check")
    assert {"bench_train.py", "bench_fast.py", "bench_onnx.py", "train_drift.py"} <= seen, seen


COLLECT = textwrap.dedent("""
    import json, sys
    import torch
    torch.cuda.is_available = lambda: True  # one CUDA device, no TensorFlow: the GPU machine
    sys.modules["tensorflow"] = None
    import pytest

    class Selected:
        ids = []
        def pytest_collection_finish(self, session):
            Selected.ids = [item.nodeid for item in session.items]

    out = []
    for args in json.loads(sys.argv[1]):
        Selected.ids = []
        rc = pytest.main(args + ["--co", "-q"], plugins=[Selected()])
        out.append({"rc": int(rc), "ids": Selected.ids})
    print("RESULT " + json.dumps(out))
""")


def test_every_gpu_check_pytest_selection_collects_tests_on_cuda(tmp_path):
    """Each pytest command line of the two scripts collects without error and selects at least one
    test on a machine with CUDA and without TensorFlow (simulated): an empty selection exits 5,
    a failed step on the GPU."""
    runs = [(script, name, argv[3:]) for script, name, argv in _gpu_commands(tmp_path)
            if argv[:3] == ["python3", "-m", "pytest"]]
    assert len(runs) >= 5, runs
    env = dict(os.environ, PYTHONPATH=ROOT)
    for var in ("UGATIT_FULL_TIER", "UGATIT_REQUIRE_TF"):  # not set on the GPU machine
        env.pop(var, None)
    driver = tmp_path / "collect.py"
    driver.write_text(COLLECT)
    proc = subprocess.run([sys.executable, str(driver), json.dumps([args for _, _, args in runs])], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and result, (proc.stdout + proc.stderr)[-3000:]
    for (script, name, args), got in zip(runs, json.loads(result[0][len("RESULT "):])):
        assert got["rc"] == 0 and got["ids"], f"{script}: step {name}: pytest {' '.join(args)}: exit {got['rc']}, " \
                                              f"{len(got['ids'])} tests selected"


def test_the_merges_name_a_cut_part_and_take_the_last_pytest_summary(bench_modules, tmp_path, capsys):
    """merge_results: a part cut mid-write (no whole JSON) is named in results.json, not fatal;
    the tests' summary is the log's last pytest summary line (an earlier run's stays behind it)."""
    merge_results = bench_modules("merge_results")
    work = tmp_path / "work"
    work.mkdir()
    (work / "whole.json").write_text('{"a": 1}')
    (work / "cut.json").write_text('{"rows": [1, 2')
    parts = merge_results.merge_parts(str(work), str(tmp_path / "results.json"))
    assert parts["whole"] == {"a": 1} and "unreadable" in parts["cut"], parts
    assert json.loads((tmp_path / "results.json").read_text())["cut"] == parts["cut"]
    log = tmp_path / "tests.log"
    log.write_text("1 failed, 3 passed in 2.00s\nretrying\n4 passed in 1.50s\n")
    data = merge_results.add_steps(str(tmp_path / "infer.json"), "bench 0 12.5;", str(log))
    assert data["steps"]["tests"]["summary"] == "4 passed in 1.50s", data
    assert data["steps"]["bench"] == {"exit": 0, "seconds": 12.5} and "no JSON written" in data["errors"]["bench"]
    capsys.readouterr()
