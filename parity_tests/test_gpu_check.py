"""The one call of `bash bench/gpu_check.sh OUT` on a lent GPU, checked without one: what would
make it fail or waste its minutes. The benchmarks' CUDA paths run here with `torch.cuda` stubbed
(no kernel runs); their measuring code is exercised by the CPU smoke runs elsewhere
(test_fast_infer.py's --matrix run, the README's CPU runs of bench_train / train_drift)."""
from __future__ import annotations

import json
import os
import sys
import textwrap

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


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch told it has one CUDA device (an H100), the process's CUDA math flags restored after
    (pick_device sets them)."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    yield
    cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = saved


FAKE_TRAIN_WORKER = textwrap.dedent("""
    import json, sys
    modes = sys.argv[sys.argv.index("--modes") + 1].split(",")
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        what = line.strip()
        if what == "quit":
            break
        if "fp32" in modes:  # the port's group dies at its first request (as an out-of-memory would)
            sys.exit(1)
        if what.startswith("train:"):
            out = {"seconds": 0.05, "host_seconds": 0.01}
        elif what == "floor":
            out = {"flops": 1e9, "peak": 1e12, "peak_bf16": 2e12}
        else:
            out = {"seconds": 0.04}
        print(json.dumps(out), flush=True)
""")


def test_bench_train_goes_on_after_a_worker_dies(bench_modules, fake_gpu, monkeypatch, tmp_path, capsys):
    """A worker that dies on the GPU (an out-of-memory, a crash) costs its own group's rows only:
    the next groups are measured and the summary and JSON are written. (Worker.close after the
    death wrote "quit" into the pipe `_read` had closed: ValueError, which ended the whole
    benchmark - every later group, the targets, the JSON's last write.)"""
    bench_train = bench_modules("bench_train")
    from workers import Worker
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_TRAIN_WORKER)
    monkeypatch.setattr(bench_train, "_Worker", lambda name, args, env=None: Worker(str(script), name, args, env))
    out = tmp_path / "r.json"
    assert bench_train.main(["--device", "cuda", "--modes", "fp32,morph-fp32,morph-bf16+graphs", "--iters", "2",
                             "--warmup", "1", "--pipelined", "3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "group port: torch_port worker exited (code 1)" in printed, printed
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"morph-fp32", "morph-bf16+graphs"}, rows
    assert "targets (issue 17" in printed


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
