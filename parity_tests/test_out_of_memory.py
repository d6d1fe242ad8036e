"""A device out of memory is one line naming what to lower, whichever part of the stack ran out:
PyTorch's caching allocator (`torch.OutOfMemoryError`) or a CUDA library allocating for itself
(cuDNN's / cuBLAS's workspace or handle, CUDA's own error), which torch raises as a plain
`RuntimeError` carrying the library's status name. Simulated on the CPU: the error raised where a
kernel would raise it. Any other error keeps its own message (never called "out of memory")."""
from __future__ import annotations

import contextlib

import pytest
import torch

from parity_tests.test_fast_infer import _demo_model, _images, _run_batches
from parity_tests.test_lone_input import world  # noqa: F401 - the module fixture: dataset, port and Morph checkpoints
from parity_tests.test_train_graphs import PORT_TINY, _port_main
from torch_port.out_of_memory import is_out_of_memory
from ugatit_common.demo_data import make_demo_dataset
from ugatit_common.options import OptionError

# how each part of the stack words it (torch 2.11 - 2.13: the allocator's message, then the messages of
# cuDNN's and cuBLAS's status checks and of the CUDA runtime's)
OOM = {
    "allocator": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    "cudnn": lambda: RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    "cublas": lambda: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    "cuda": lambda: RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
}
OTHER = lambda: RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a "  # noqa: E731
                             "non-contiguous input.")


def test_which_errors_are_out_of_memory():
    assert all(is_out_of_memory(make()) for make in OOM.values())
    assert not is_out_of_memory(OTHER())
    assert not is_out_of_memory(ValueError("CUDA error: out of memory"))  # a status name in another error's text
    assert not is_out_of_memory(KeyboardInterrupt())


@pytest.mark.parametrize("where", sorted(OOM))
def test_training_out_of_memory_anywhere_is_one_line(where, tmp_path, monkeypatch, capsys):
    from torch_port import model as tm
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=2, n_test=1)

    def oom(*a, **k):
        raise OOM[where]()
    monkeypatch.setattr(tm.UGATIT, "g_step", oom)
    rc, said = _port_main(PORT_TINY + ["--iteration", "2", "--epoch", "1"], tmp_path, monkeypatch, capsys)
    lines = [l for l in said.err.splitlines() if l.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "ran out of memory at --img_size 32, --batch_size 1" in lines[0], said.err
    assert "lower --img_size, --batch_size or --ch" in lines[0] and "Traceback" not in said.err


def test_training_error_that_is_not_out_of_memory_keeps_its_own_message(tmp_path, monkeypatch, capsys):
    from torch_port import model as tm
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=2, n_test=1)

    def fails(*a, **k):
        raise OTHER()
    monkeypatch.setattr(tm.UGATIT, "g_step", fails)
    rc, said = _port_main(PORT_TINY + ["--iteration", "2", "--epoch", "1"], tmp_path, monkeypatch, capsys)
    lines = [l for l in said.err.splitlines() if l.startswith("error:")]
    assert rc == 1 and len(lines) == 1 and "internal error (RuntimeError: cuDNN error: CUDNN_STATUS_NOT_SUPPORTED" \
        in lines[0] and "out of memory" not in said.err, said.err


@pytest.mark.parametrize("where", ["cudnn", "cuda"])
def test_translating_out_of_memory_in_a_library_is_the_batch_line(where, tmp_path, monkeypatch):
    model, cfg = _demo_model()
    files = _images(str(tmp_path / "in"), n=3)

    def oom(self, x, direction):
        raise OOM[where]()
    monkeypatch.setattr(type(model), "translate", oom)
    for overlap in (True, False):
        with pytest.raises(OptionError, match=r"^--batch=4: out of CPU memory .* lower --batch \(e.g. --batch 2\)"):
            _run_batches(model, files, cfg, str(tmp_path / f"oom{overlap}"), 4, overlap=overlap)
    monkeypatch.setattr(type(model), "translate", lambda self, x, direction: (_ for _ in ()).throw(OTHER()))
    with pytest.raises(RuntimeError, match="CUDNN_STATUS_NOT_SUPPORTED"):
        _run_batches(model, files, cfg, str(tmp_path / "other"), 4, overlap=False)


@pytest.fixture
def stubbed_capture(monkeypatch):
    """torch.cuda's capture calls stubbed on the CPU: the captured body runs once, as in a capture;
    what a failed capture must undo is recorded."""
    from torch_port import static_forward, train_graphs
    undone = []

    class Stream:
        device = torch.device("cpu")

    @contextlib.contextmanager
    def graph(g, stream=None, capture_error_mode=None):
        yield
    for name, value in (("current_stream", lambda *a: Stream()), ("Stream", lambda *a, **k: Stream()),
                        ("CUDAGraph", lambda: object()), ("graph", graph), ("set_stream", lambda s: None),
                        ("synchronize", lambda *a: None)):
        monkeypatch.setattr(torch.cuda, name, value)
    for module in (static_forward, train_graphs):
        monkeypatch.setattr(module, "end_failed_capture", lambda g, dev: undone.append(dev))
    return undone


@pytest.mark.parametrize("error", ["cudnn", "allocator", "other"])
def test_a_capture_out_of_memory_is_raised_any_other_failure_runs_eagerly(error, stubbed_capture):
    """A training step's capture (StaticStep) that runs out of memory is raised (the run's one line:
    eager steps would run out as well); any other capture failure is said and the step runs eagerly.
    Either way the failed capture is ended first."""
    from torch_port.train_graphs import StaticStep
    make = OTHER if error == "other" else OOM[error]

    def step(real_A, real_B, lr):
        raise make()
    said = []
    s = StaticStep(step, None, "D", True, (), said.append)
    s.buffers = {"real_A": torch.zeros(1), "real_B": torch.zeros(1)}
    if error == "other":
        assert s._capture(0.1) is None and s.eager_only and len(said) == 1 and "could not be captured" in said[0]
    else:
        with pytest.raises(type(make())):
            s._capture(0.1)
        assert not s.eager_only and not said
    assert len(stubbed_capture) == 1



@pytest.mark.parametrize("error", ["cudnn", "allocator", "other"])
def test_a_forward_capture_out_of_memory_is_raised_any_other_failure_runs_eagerly(error, stubbed_capture, monkeypatch):
    """The same for a forward's capture (StaticForward: the test phase's and the fast paths' CUDA
    graphs): out of memory is raised, any other failure said and that input shape run eagerly; the
    failed capture is ended first either way."""
    from torch_port import static_forward
    make = OTHER if error == "other" else OOM[error]
    calls = []

    def fn(x):
        calls.append(1)
        if len(calls) > 1:  # the warm-up call runs, the captured one fails
            raise make()
        return x * 2
    said = []
    s = static_forward.StaticForward(fn, capture=False, warmup=1, log=said.append)
    x = torch.ones(2)
    e, key = static_forward._Entry((x,), {}, None), static_forward.signature((x,), {})

    class OnGpu:  # the argument the capture looks for (the stubbed CUDA calls take any device)
        is_cuda, device = True, torch.device("cpu")
    monkeypatch.setattr(static_forward, "_tensors", lambda v: iter([OnGpu()]))
    if error == "other":
        s._capture(e, key)
        assert e.graph is None and len(said) == 1 and "capture of forward failed" in said[0], said
    else:
        with pytest.raises(type(make())):
            s._capture(e, key)
        assert e.graph is None and not said
    assert len(stubbed_capture) == 1


@pytest.mark.parametrize("where", ["allocator", "cudnn"])
def test_every_translating_command_says_out_of_memory_in_one_line(where, world, tmp_path, monkeypatch, capsys):
    """The test phase one image at a time, Morph interpolate and Morph translate (no line of their
    own, unlike --batch above): out of memory inside a generator is the command lines' one `out of
    memory` line, exit 2, not an internal error, and no results folder is left behind."""
    import os
    import shutil
    from parity_tests.test_lone_input import _commands
    from torch_port import networks
    root = str(tmp_path / "w")
    shutil.copytree(world, root)
    monkeypatch.chdir(root)

    def oom(self, x):
        raise OOM[where]()
    monkeypatch.setattr(networks.ResBlock, "forward", oom)
    for main, argv in _commands(os.path.join("dataset", "t", "testA")):
        if "--batch" in argv:
            continue
        capsys.readouterr()
        rc = main(argv)
        err = capsys.readouterr().err
        errors = [ln for ln in err.splitlines() if "error:" in ln]
        assert rc == 2 and len(errors) == 1 and "out of memory (" in errors[0], (argv, err)
        assert "internal error" not in err and "Traceback" not in err, (argv, err)
        assert not os.path.exists("res") and not os.path.exists("mres"), argv


def _context_of_memory_error():
    try:
        raise MemoryError()
    except MemoryError:
        return _raised(ValueError, "failed while handling it")


def _raised(kind, text):
    try:
        raise kind(text)
    except kind as e:
        return e


# what any command's error path (cli_errors.run) takes for out of memory: Python's, torch's CPU
# allocator's (a plain RuntimeError, in its words), a GPU's, and an error raised from one of them
COMMAND_OOM = {
    "python": lambda: MemoryError(),
    "cpu_allocator": lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough "
                                          "memory: you tried to allocate 68719476736 bytes."),
    "allocator": OOM["allocator"],
    "cudnn": OOM["cudnn"],
    "cause": lambda: _caused_by(MemoryError()),
    "context": _context_of_memory_error,
}


def _caused_by(cause):
    try:
        raise ValueError("a library's own error") from cause
    except ValueError as e:
        return e


@pytest.mark.parametrize("kind", sorted(COMMAND_OOM))
def test_a_command_out_of_memory_is_one_line_naming_what_to_lower(kind, capsys):
    """cli_errors.run (every command's error path): an out-of-memory error, or one raised from it,
    is exit 2 and one `error: out of memory (...)` line saying what to lower - not an internal
    error; any other RuntimeError stays an internal error (exit 1) never called out of memory."""
    from ugatit_common import cli_errors

    def fails(argv):
        raise COMMAND_OOM[kind]()
    rc = cli_errors.run(fails, [], prog="python -m torch_port")
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: out of memory ("), err
    assert "lower the sizes this command was given" in lines[0], err
    rc = cli_errors.run(lambda argv: (_ for _ in ()).throw(RuntimeError("a kernel failed")), [], prog="x")
    err = capsys.readouterr().err
    assert rc == 1 and "internal error (RuntimeError: a kernel failed" in err and "out of memory" not in err, err
