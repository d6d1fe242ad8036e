"""Kink flips between the two states of a free run (`python -m parity_tests.free_run --kinks`).

The loss is piecewise smooth: relu, leaky_relu, |x| (L1), the global max pooling, hinge and the
clips (AdaLIN's smoothed rho, rho's [0, 1] constraint, wgan-lp) switch branch at a point. Two
states a few 1e-12 apart take the same branch everywhere except where an element lies that close
to a switch; there the exact gradient jumps, and agreement can end at once rather than grow.

`flips(cfg, state_a, state_b, ...)` runs one D or G run of the port (float64, on the CPU) from
each state, records the branch of every kink element in call order, with the module that made
the call, and returns the elements whose branch differs. From the reference's state and the
port's own state before a run, that is the kink flips the accumulated difference caused
(parity_tests/kinks.py does the same within one framework, float32 against float64).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_KINDS = {F.relu: "relu", torch.relu: "relu", torch.Tensor.relu: "relu", F.leaky_relu: "leaky_relu",
          torch.abs: "abs", torch.Tensor.abs: "abs", torch.amax: "amax", torch.Tensor.amax: "amax",
          torch.clamp: "clamp", torch.Tensor.clamp: "clamp", torch.clip: "clamp", torch.clamp_min: "clamp_min",
          torch.Tensor.clamp_min: "clamp_min"}


def _arg(args, kwargs, i, name, default=None):
    return kwargs.get(name, args[i] if len(args) > i else default)


class BranchRecorder(TorchFunctionMode):
    """Records (kind, module path, branch code tensor, input values) of every kink call."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.calls: list[tuple[str, str, torch.Tensor, torch.Tensor]] = []
        self._names = {id(m): n or "model" for n, m in model.named_modules()}
        self._stack: list[str] = []

    @contextlib.contextmanager
    def recording(self):
        pre = torch.nn.modules.module.register_module_forward_pre_hook(self._enter)
        post = torch.nn.modules.module.register_module_forward_hook(self._leave)
        try:
            with self:
                yield self
        finally:
            pre.remove()
            post.remove()

    def _enter(self, module, _inputs):
        self._stack.append(self._names.get(id(module), type(module).__name__))

    def _leave(self, module, _inputs, _output):
        if self._stack:
            self._stack.pop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        kind = _KINDS.get(func)
        if kind is not None and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            x = args[0].detach()
            if kind in ("relu", "leaky_relu"):
                code = (x > 0).to(torch.int8)
            elif kind == "abs":
                code = torch.sign(x).to(torch.int8)
            elif kind == "amax":
                dim = _arg(args, kwargs, 1, "dim", ())
                code = (x == x.amax(dim=dim, keepdim=True)).to(torch.int8)
            else:  # clamp: -1 below the lower bound, +1 above the upper one, 0 between
                lo = _arg(args, kwargs, 1, "min")
                hi = None if kind == "clamp_min" else _arg(args, kwargs, 2, "max")
                code = torch.zeros_like(x, dtype=torch.int8)
                if lo is not None:
                    code = code - (x < lo).to(torch.int8)
                if hi is not None:
                    code = code + (x > hi).to(torch.int8)
            self.calls.append((kind, self._stack[-1] if self._stack else "optimizer", code, x.clone()))
        return func(*args, **kwargs)


def _record(cfg: dict, state: dict, run: str, batch: dict, lr: float, draws: dict) -> list:
    from parity_tests.free_run_sides import PortTrainer64
    port = PortTrainer64(cfg, "cpu")
    port.load(state)
    rec = BranchRecorder(port.model)
    with rec.recording():
        if run == "D":
            port.d_run(batch, lr, draws)
        else:
            port.g_run(batch, lr)
    return rec.calls


def flips(cfg: dict, state_a: dict, state_b: dict, run: str, batch: dict, lr: float, draws: dict,
          limit: int = 5) -> dict:
    """{"count": elements whose branch differs between a run from state_a and from state_b,
    "elements": up to `limit` of them, nearest the switch first: {kind, module, call, index, x_a, x_b}}."""
    a, b = _record(cfg, state_a, run, batch, lr, draws), _record(cfg, state_b, run, batch, lr, draws)
    if [(k, m, c.shape) for k, m, c, _ in a] != [(k, m, c.shape) for k, m, c, _ in b]:
        raise RuntimeError(f"the two {run} runs made different kink calls ({len(a)} vs {len(b)})")
    count, found = 0, []
    for call, ((kind, module, code_a, x_a), (_, _, code_b, x_b)) in enumerate(zip(a, b)):
        differ = (code_a != code_b)
        n = int(differ.sum())
        if not n:
            continue
        count += n
        for flat in torch.nonzero(differ.flatten()).flatten()[:limit].tolist():
            index = tuple(int(i) for i in np.unravel_index(flat, tuple(differ.shape)))
            found.append({"run": run, "kind": kind, "module": module, "call": call, "index": list(index),
                          "x_a": float(x_a.flatten()[flat]), "x_b": float(x_b.flatten()[flat])})
    found.sort(key=lambda e: min(abs(e["x_a"]), abs(e["x_b"])))
    return {"count": count, "elements": found[:limit]}
