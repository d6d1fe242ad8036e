"""CUDA graphs for the D and G training steps (`--cuda_graphs auto|True|False` in `python -m
torch_port` and `python -m morph train`; issue 17).

A training step of the light 256-px model launches thousands of small kernels; on a fast GPU the
host's launching, not the arithmetic, sets the pace. A CUDA graph records the launches of one
step once and replays them with one call. `StaticStep` makes a step replayable: its inputs (the
two batches, the gradient-penalty draws) are copied into fixed tensors, the values a step draws
on the host inside itself (Morph config C's direction codes z: `Trainer.host_draws`) are drawn
before it in the recorded order and copied into fixed tensors, the learning rate is a device
tensor filled before the step (`TF1Adam`), and everything else a step changes lives on the device
already: the weights, Adam's slots and powers, the spectral-norm `u` (committed by a device copy
at the end of the step), fp16's loss scale and skip decision (`LossScaler`). The loss terms and
the fakes come back as the graph's fixed output tensors, read by the loop without blocking.

On CUDA: the first `WARMUP_CALLS` calls run eagerly on a side stream (cuDNN / cuBLAS set-up,
compilation under `--compile`), the next one captures the step (`torch.cuda.graph`, one memory
pool per step) and replays it, and every later call replays it. On a CPU there is no graph: the
same static-buffer step runs eagerly (what the CPU tests prove equal to today's step bit for bit).

What cannot be captured here: several torchrun processes (the gradient all-reduce inside the
step is not captured in this project: untested) - with `auto` the steps run eagerly and the log
says so, with `True` it is an error (exit 2). A capture that fails (an operation that cannot be
captured) is said in one line and that step runs eagerly from then on. Inputs whose shape
changes mid-run (not the case in the official loop) run eagerly, said once."""
from __future__ import annotations

import contextlib

import torch

from ugatit_common.options import OptionError

from .out_of_memory import is_out_of_memory
from .static_forward import end_failed_capture

WARMUP_CALLS = 3  # eager calls before the capture (PyTorch's guidance: a few on a side stream)
SETTINGS = ("auto", "True", "False", "static")  # static: the steps over fixed tensors, never captured (tests)


def parse_setting(value) -> str:
    """'auto' | 'True' | 'False' | 'static' from a setting (bool or str, any case)."""
    if isinstance(value, bool):
        return str(value)
    text = str(value).strip().lower()
    for s in SETTINGS:
        if text == s.lower() or (s == "True" and text in ("1", "yes")) or (s == "False" and text in ("0", "no")):
            return s
    raise OptionError(f"--cuda_graphs={value!r}: expected auto, True or False")


def flag_value(text: str) -> str:
    """argparse type of --cuda_graphs: auto / True / False (any case; argparse names the flag)."""
    import argparse
    try:
        value = parse_setting(text)
    except OptionError:
        value = None
    if value not in ("auto", "True", "False"):
        raise argparse.ArgumentTypeError(f"expected auto, True or False, got {text!r}")
    return value


def plan(setting, device, world_size: int) -> tuple[str, str | None]:
    """What runs: ("capture" | "static" | "off", the log line or None). `setting`: auto (graphs
    where capturable, else eager and said), True (graphs; where they cannot be, OptionError:
    exit 2), False, or static (the static-buffer steps run eagerly, on any device: what the CPU
    tests prove equal to today's steps)."""
    setting = parse_setting(setting)
    device = torch.device(device)
    if setting == "False":
        return "off", None
    if setting == "static":
        return "static", " [*] CUDA graphs: static-buffer steps run eagerly (no capture)"
    if device.type != "cuda":
        if setting == "auto":
            return "off", None
        raise OptionError(f"--cuda_graphs True: there is no CUDA graph on {device.type}; use --device cuda, or "
                          f"--cuda_graphs auto or False")
    if world_size > 1:
        why = (f"{world_size} torchrun processes: the gradient all-reduce inside a step is not captured "
               f"in this project (untested)")
        if setting == "True":
            raise OptionError(f"--cuda_graphs True: {why}; use --cuda_graphs auto or False")
        return "off", f" [!] CUDA graphs off: {why}; the steps run eagerly"
    return "capture", f" [*] CUDA graphs: the D and G steps are captured after {WARMUP_CALLS} eager calls each"


class _HostDraws:
    """A method the step calls to draw values on the host (e.g. `MorphUGATIT.make_z`), served
    from fixed tensors. The first call of the step records the sequence of calls (each drawn as
    usual, then kept in a buffer of its own); before every later call, `prepare` draws the same
    sequence in the same order (the host RNG advances exactly as before) into the buffers, and
    inside the step the method returns them in order."""

    def __init__(self, owner, name: str):
        self.owner, self.name = owner, name
        self.original = getattr(owner, name)
        self.calls = None      # [(args, kwargs)] recorded by the first step
        self.buffers = []

    def prepare(self) -> None:
        for (args, kwargs), buf in zip(self.calls, self.buffers):
            buf.copy_(self.original(*args, **kwargs))

    @contextlib.contextmanager
    def serving(self):
        position = 0
        recording = self.calls is None
        if recording:
            self.calls = []

        def serve(*args, **kwargs):
            nonlocal position
            if recording:
                value = self.original(*args, **kwargs)
                self.calls.append((args, kwargs))
                self.buffers.append(value.clone())
            elif position >= len(self.calls) or self.calls[position] != (args, kwargs):
                raise RuntimeError(f"{self.name}: the step drew {args} {kwargs} at call {position}, not the recorded "
                                   f"{self.calls[position] if position < len(self.calls) else 'end'}")
            position += 1
            return self.buffers[position - 1]
        setattr(self.owner, self.name, serve)
        try:
            yield
        finally:
            delattr(self.owner, self.name)  # the class's method again
        if not recording and position != len(self.calls):
            raise RuntimeError(f"{self.name}: the step drew {position} values, {len(self.calls)} recorded")


class StaticStep:
    """One training step (`step(real_A, real_B, lr[, gp_draws])`, the trainer's wrapped D or G
    step) over fixed input tensors, captured as a CUDA graph (`capture=True`) or run eagerly.

    `optim`: the optimizer the step updates (its learning rate is set before the step, outside
    the graph). `host_draws`: [(object, method name)] whose host draws are served from fixed
    tensors (`_HostDraws`). `log`: for the lines saying what runs."""

    def __init__(self, step, optim, name: str, capture: bool, host_draws=(), log=print):
        self.step, self.optim, self.name, self.capture, self.log = step, optim, name, bool(capture), log
        self.draws = [_HostDraws(owner, attr) for owner, attr in host_draws]
        self.buffers = None
        self.signature = None
        self.calls = 0
        self.graph = None
        self.outputs = None
        self.eager_only = False   # a capture failed: eager from then on
        self._stream = None
        self._said_shape = False

    def __call__(self, real_A, real_B, lr=None, gp_draws=None):
        inputs = {"real_A": real_A, "real_B": real_B, **(gp_draws or {})}
        signature = tuple((k, tuple(v.shape), v.dtype, v.device) for k, v in inputs.items())
        if self.buffers is None:
            self.buffers = {k: torch.empty_like(v) for k, v in inputs.items()}
            self.signature = signature
        elif signature != self.signature:  # not in the official loop (fixed batch size and image size)
            if not self._said_shape:
                self.log(f" [!] CUDA graphs: the {self.name} step's inputs changed ({signature} instead of "
                         f"{self.signature}); such calls run eagerly")
                self._said_shape = True
            return self._direct(real_A, real_B, lr, gp_draws)
        for k, v in inputs.items():
            self.buffers[k].copy_(v, non_blocking=True)
        if lr is not None:
            self.optim.set_lr(lr)  # a fill on the device, outside any graph
        lr = self.optim.lr
        first = self.calls == 0
        self.calls += 1
        if not first:
            for d in self.draws:
                d.prepare()
        if self.graph is not None:
            self.graph.replay()
            return dict(self.outputs)
        if self.capture and not self.eager_only and self.calls > WARMUP_CALLS:
            out = self._capture(lr)
            if out is not None:
                return out
        return dict(self._eager(lr))

    # -- the three ways of running the body ------------------------------------------------------
    def _body(self, lr):
        b = self.buffers
        with contextlib.ExitStack() as stack:
            for d in self.draws:
                stack.enter_context(d.serving())
            gp = {k: v for k, v in b.items() if k not in ("real_A", "real_B")}
            if gp:
                return self.step(b["real_A"], b["real_B"], lr, gp)
            return self.step(b["real_A"], b["real_B"], lr)

    def _eager(self, lr):
        if not self.capture:
            return self._body(lr)
        # CUDA warm-up on a side stream (PyTorch's recipe before capturing); ordered both ways
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            out = self._body(lr)
        torch.cuda.current_stream().wait_stream(self._stream)
        return out

    def _capture(self, lr):
        current = torch.cuda.current_stream()
        graph = torch.cuda.CUDAGraph()
        try:
            # on a stream of its own (a capture that fails part-way leaves no stream in use routed to it);
            # thread_local: another thread (a data-loader's) may use CUDA meanwhile
            with torch.cuda.graph(graph, stream=torch.cuda.Stream(), capture_error_mode="thread_local"):
                outputs = self._body(lr)
        except Exception as e:  # noqa: BLE001 - out of memory: raised (the one line); else said, then eager
            torch.cuda.set_stream(current)  # torch.cuda.graph does not leave its stream when ending a capture fails
            end_failed_capture(graph, current.device)  # later captures and empty_cache work again (torch <= 2.11)
            if is_out_of_memory(e):  # the allocator's or a CUDA library's (cuDNN / cuBLAS workspace)
                raise
            self.eager_only = True
            graph = None  # released
            torch.cuda.synchronize()
            first = " ".join(str(e).split())[:200] or type(e).__name__
            self.log(f" [!] CUDA graphs: the {self.name} step could not be captured ({type(e).__name__}: "
                     f"{first}); it runs eagerly from here (the same kernels)")
            return None
        self.graph, self.outputs = graph, outputs
        graph.replay()  # the capture only recorded the step: run it
        return dict(outputs)

    def _direct(self, real_A, real_B, lr, gp_draws):
        if gp_draws:
            return self.step(real_A, real_B, lr, gp_draws)
        return self.step(real_A, real_B, lr)


def static_steps(model, d_step, g_step, how: str, host_draws=(), log=print):
    """(d_step, g_step) as `StaticStep`s for `plan`'s "capture" (CUDA graphs) or "static" (the
    static-buffer steps eagerly), unchanged for "off"."""
    if how == "off":
        return d_step, g_step
    capture = how == "capture"
    return (StaticStep(d_step, model.D_optim, "D", capture, host_draws, log),
            StaticStep(g_step, model.G_optim, "G", capture, host_draws, log))
