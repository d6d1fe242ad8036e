"""A forward over static input buffers, captured as a CUDA graph and replayed (`StaticForward`).

A 256 px generator forward at batch 1 is ~400 small kernel launches; on a GPU the host's launch
time, not the arithmetic, sets its latency. A CUDA graph records the launches once and replays
them with one call. A graph reads its inputs from, and writes its outputs to, fixed addresses, so
each call copies its inputs into the static buffers, replays, and returns copies of the static
outputs (a later replay overwrites them).

One graph per input signature (the shapes, dtypes and devices of the tensor arguments, and the
non-tensor arguments): a new batch size is captured once, after `warmup` eager calls on a side
stream (cuDNN picks its algorithms, torch.compile compiles, the allocator settles), at most
`MAX_GRAPHS` of them; further signatures run eagerly (said once). The graph replays the kernels
the capture recorded: control flow in `fn` is frozen at its capture-time branch, and state that
`fn` mutates in place (a spectral-norm `u` buffer) keeps advancing on each replay, as eagerly.
The warm-up calls are not calls of the caller's: the tensors `state()` names (a module's buffers)
are put back as they were after them, so the first replay starts from the state the eager call
would have seen (a discriminator's `u` advances once per call, graphed or not).

Without capture (`capture=False`, e.g. on a CPU) the same buffers and copies run `fn` eagerly:
that path is what parity_tests/test_fast_infer.py proves equal to the plain forward bit for bit,
and the CUDA test proves the replayed graph equal to it. A capture that fails (an op that
synchronises with the host, say) is said in one line, and that signature runs eagerly: the
results are the eager forward's; out-of-memory is raised as is.
"""
from __future__ import annotations

import torch

from .out_of_memory import is_out_of_memory

__all__ = ["StaticForward", "MAX_GRAPHS", "signature"]

MAX_GRAPHS = 4  # signatures captured per StaticForward; each holds its own activations' memory


def _sig_of(v):
    if isinstance(v, torch.Tensor):
        return ("tensor", tuple(v.shape), v.dtype, str(v.device), v.stride())  # the layout too
    if isinstance(v, (list, tuple)):
        return (type(v).__name__,) + tuple(_sig_of(x) for x in v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"StaticForward: unsupported argument type {type(v).__name__}")


def signature(args, kwargs) -> tuple:
    """What a captured graph is specific to: tensor shapes / dtypes / devices / layouts and plain values."""
    return _sig_of(tuple(args)), tuple(sorted((k, _sig_of(v)) for k, v in kwargs.items()))


def _buffer(v, device):
    if isinstance(v, torch.Tensor):  # the argument's layout too (channels-last stays channels-last)
        return torch.empty_like(v, device=device if device is not None else v.device)
    if isinstance(v, (list, tuple)):
        return type(v)(_buffer(x, device) for x in v)
    return v


def _load(static, v):
    if isinstance(static, torch.Tensor):
        static.copy_(v, non_blocking=True)
    elif isinstance(static, (list, tuple)):
        for s, x in zip(static, v):
            _load(s, x)


def _copy_out(out):
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (list, tuple)):
        return type(out)(_copy_out(o) for o in out)
    if isinstance(out, dict):
        return {k: _copy_out(v) for k, v in out.items()}
    return out


class _Entry:
    def __init__(self, args, kwargs, device):
        self.args = _buffer(tuple(args), device)
        self.kwargs = {k: _buffer(v, device) for k, v in kwargs.items()}
        self.graph = None
        self.out = None

    def load(self, args, kwargs) -> None:
        _load(self.args, tuple(args))
        for k, v in kwargs.items():
            _load(self.kwargs[k], v)


def end_failed_capture(graph, device) -> None:
    """After a capture that failed: end the caching allocator's routing of new blocks into the
    graph's memory pool. torch 2.11 and older skip that when ending the capture itself fails
    (pytorch#180395), and every later capture or `torch.cuda.empty_cache()` in the process then
    stops on an internal assertion (`captures_underway.empty()`). Where torch already ended it,
    the call is refused, which is fine. The failed graph's pool stays reserved (pytorch#190348)."""
    try:
        index = torch.device(device).index
        torch._C._cuda_endAllocateToPool(torch.cuda.current_device() if index is None else index, graph.pool())
    except Exception:  # noqa: BLE001 - already ended (a fixed torch, or the capture never began)
        pass


class StaticForward:
    """`fn(*args, **kwargs)` through static input buffers; captured as a CUDA graph per input
    signature when `capture` (a CUDA device), run eagerly on the buffers otherwise.

    `device`: where the static buffers live (default: each argument's own device; an argument
    elsewhere is copied in, e.g. a pinned CPU batch into a CUDA buffer). `log`: called with the
    one-line notes (a capture that failed, the graph limit reached)."""

    def __init__(self, fn, capture: bool, warmup: int = 2, device=None, log=None, name: str = "forward",
                 state=None):
        if capture and not torch.cuda.is_available():
            raise ValueError("CUDA graphs need a CUDA device; this process has none")
        self.fn, self.capture, self.warmup = fn, bool(capture), int(warmup)
        self.state = state  # () -> tensors `fn` mutates in place, restored after the warm-up
        self.device = torch.device(device) if device is not None else None
        self.log, self.name = log, name
        self.entries: dict = {}
        self.notes: list[str] = []  # what was said (capture failures, the limit)
        self._said_limit = False

    def _note(self, text: str) -> None:
        self.notes.append(text)
        if self.log is not None:
            self.log(text)

    @property
    def graphs(self) -> int:
        """Signatures currently served by a captured graph."""
        return sum(e.graph is not None for e in self.entries.values())

    def _warm_up(self, e: _Entry, dev: torch.device) -> None:
        """`warmup` calls of `fn` on the static buffers (on a side stream on CUDA, as
        torch.cuda.graph's docs ask), then the tensors of `state()` put back as they were."""
        saved = [(t, t.detach().clone()) for t in (self.state() if self.state is not None else ())]
        if dev.type == "cuda":
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.fn(*e.args, **e.kwargs)
            torch.cuda.current_stream(dev).wait_stream(side)
        else:
            for _ in range(self.warmup):
                self.fn(*e.args, **e.kwargs)
        with torch.no_grad():
            for t, before in saved:
                t.copy_(before)

    def _capture(self, e: _Entry, key) -> None:
        dev = next((t.device for t in _tensors((e.args, e.kwargs)) if t.is_cuda), None)
        if dev is None:
            self._note(f"note: CUDA graphs: {self.name} has no CUDA tensor argument; it runs without a graph")
            return
        self._warm_up(e, dev)
        current = torch.cuda.current_stream(dev)
        graph = torch.cuda.CUDAGraph()
        try:
            # a stream of its own: a capture that fails part-way leaves nothing routed to a stream in use;
            # thread_local: other threads (the test phase's image reader pins memory) may call CUDA meanwhile
            with torch.cuda.graph(graph, stream=torch.cuda.Stream(dev), capture_error_mode="thread_local"):
                out = self.fn(*e.args, **e.kwargs)
        except Exception as err:  # noqa: BLE001 - out of memory: raised (the one line); else said, then eager
            torch.cuda.set_stream(current)  # torch.cuda.graph does not leave its stream when ending the capture fails
            end_failed_capture(graph, dev)
            if is_out_of_memory(err):  # the allocator's or a CUDA library's (cuDNN / cuBLAS workspace)
                raise
            graph = None  # released
            torch.cuda.synchronize(dev)
            reason = " ".join(str(err).split())[:200] or type(err).__name__
            self._note(f"warning: CUDA graph capture of {self.name} failed at input {_describe(key)} ({reason}); "
                       f"this input shape runs without CUDA graphs (eager kernels, the same results)")
            return
        e.graph, e.out = graph, out

    def __call__(self, *args, **kwargs):
        key = signature(args, kwargs)
        e = self.entries.get(key)
        if e is None:
            if len(self.entries) >= MAX_GRAPHS:
                if not self._said_limit:
                    self._said_limit = True
                    self._note(f"note: CUDA graphs: {self.name} has {MAX_GRAPHS} captured input shapes; further "
                               f"shapes run without graphs")
                return self.fn(*args, **kwargs)
            e = _Entry(args, kwargs, self.device)
            e.load(args, kwargs)
            if self.capture:
                self._capture(e, key)
            self.entries[key] = e
        else:
            e.load(args, kwargs)
        if e.graph is not None:
            e.graph.replay()
            return _copy_out(e.out)
        return _copy_out(self.fn(*e.args, **e.kwargs))


def _tensors(v):
    if isinstance(v, torch.Tensor):
        yield v
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from _tensors(x)
    elif isinstance(v, dict):
        for x in v.values():
            yield from _tensors(x)


def _describe(key) -> str:
    shapes = [str(list(t[1])) for t in _flat(key) if isinstance(t, tuple) and t and t[0] == "tensor"]
    return ", ".join(shapes) or "()"


def _flat(v):
    if isinstance(v, tuple) and v and v[0] == "tensor":
        yield v
    elif isinstance(v, tuple):
        for x in v:
            yield from _flat(x)
